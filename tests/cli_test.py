"""Command-line entry points fail with one clear line on bad configs, never a bare traceback."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, 'configs', 'smoke.py')


def _run(args, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)


@pytest.mark.parametrize('override,expect', [
    ('--config.model.no_such_key=1', 'no_such_key'),
    ('--config.data.source=coco_json', 'config.data.train_annotations'),
    ('--config.data.source=nope', "config.data.source"),
])
def test_train_rejects_bad_config(tmp_path, override, expect):
  proc = _run(['centernet_jax.train', '--config', SMOKE, '--workdir', str(tmp_path / 'w'),
               override], tmp_path)
  assert proc.returncode != 0
  assert expect in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_evaluate_without_checkpoint(tmp_path, shapes_dir):
  proc = _run(['centernet_jax.evaluate', '--config', SMOKE, '--workdir', str(tmp_path / 'w'),
               f'--config.data.shapes_dir={shapes_dir}'], tmp_path)
  assert proc.returncode == 1
  assert 'no checkpoint' in proc.stderr
  assert 'Traceback' not in proc.stderr
