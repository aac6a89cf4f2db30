"""Two processes on localhost (jax.distributed, CPU collectives) train like one process."""

import os
import socket
import subprocess
import sys

import numpy as np

from centernet_jax.metric_writer import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _cmd(workdir, shapes_dir, extra=()):
  return [sys.executable, '-m', 'centernet_jax.train', '--config',
          os.path.join(ROOT, 'configs', 'smoke.py'), '--workdir', workdir,
          f'--config.data.shapes_dir={shapes_dir}', '--config.train.num_steps=3',
          '--config.eval.num_images=2', *extra]


def _losses(workdir):
  return [r['train/loss'] for r in read_metrics(workdir) if 'train/loss' in r]


def test_two_processes_match_one(tmp_path, shapes_dir):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  single = str(tmp_path / 'single')
  proc = subprocess.run(_cmd(single, shapes_dir), cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]

  multi = str(tmp_path / 'multi')
  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(multi, shapes_dir, [f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                               f'--process_id={i}']),
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs, strict=True):
    assert p.returncode == 0, out[-4000:]
  a, b = _losses(single), _losses(multi)
  assert len(a) == 3 and len(b) == 3
  np.testing.assert_allclose(a, b, rtol=1e-4)
  assert os.path.exists(os.path.join(multi, 'eval', 'step_3', 'metrics.json'))
