"""The first hour with the command line (issue 16): configs validated up front, found by name or
in the run's workdir; evaluations with other settings in their own folder; a finished run left
alone; quiet logs and one-line errors; predict on folders, with distinct output names, one box
format per key, agreeing default thresholds and 16-bit PNGs drawn right."""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import numpy as np
import pytest
from PIL import Image

from centernet_jax import cli, config_lib, evaluate, inference, models, predict, tasks, train
from tests.conftest import ROOT, load_config

SMOKE = os.path.join(ROOT, 'configs', 'smoke.py')
STEPS = 2


def _cli(args: list[str], cwd: str = ROOT) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)  # the entry points' own default is under test
  return subprocess.run([sys.executable, '-m', *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


def _smoke(shapes_dir: str):
  c = load_config('smoke')
  c.data.shapes_dir = shapes_dir
  c.train.num_steps = STEPS
  c.train.checkpoint_every = STEPS
  return c


@pytest.fixture(scope='module')
def run(tmp_path_factory, shapes_dir):
  """A finished smoke run: config.json, checkpoints/2 and eval/step_2/."""
  workdir = str(tmp_path_factory.mktemp('run'))
  train.train_and_evaluate(_smoke(shapes_dir), workdir)
  return workdir


@pytest.fixture(scope='module')
def detector(run, shapes_dir):
  return predict.Detector.from_checkpoint(_smoke(shapes_dir), run)


# --- Usage errors: one line, exit status 2, before any work ---------------------------------


@pytest.mark.parametrize('args,expect', [
    (['centernet_jax.train', '--config', SMOKE, '--workdir', '{tmp}/w', '--config.data.mean=abc'],
     "error: config.data.mean must be three numbers, one per channel, e.g. (0.408, 0.447, "
     "0.470), got ('abc',)"),
    (['centernet_jax.train', '--config', 'no_such_config', '--workdir', '{tmp}/w'],
     'error: no config file or shipped config named no_such_config; shipped configs (give a '
     'name or a path): cornernet_hg104_coco, ctdet_dla34_coco'),
    (['centernet_jax.train', '--config', '{tmp}/missing.py', '--workdir', '{tmp}/w'],
     'error: no config file named {tmp}/missing.py; shipped configs'),
    (['centernet_jax.train', '--config', SMOKE, '--workdir', '{tmp}/file'],
     'error: --workdir {tmp}/file: is a file, not a directory'),
    (['centernet_jax.train', '--config', SMOKE, '--workdir', '{tmp}/file/w'],
     'error: --workdir {tmp}/file/w: {tmp}/file is a file: no directory can be made in it'),
    (['centernet_jax.evaluate', '--workdir', '{tmp}/w'], 'error: no config: give --config'),
    (['centernet_jax.predict', '--config', 'smoke', '--images', '{tmp}/file'],
     'error: give --workdir (a training run) or --checkpoint'),
])
def test_usage_errors_are_one_clean_line(args, expect, tmp_path):
  (tmp_path / 'file').write_text('not a directory')
  proc = _cli([a.format(tmp=tmp_path) for a in args])
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert expect.format(tmp=tmp_path) in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert '\\n' not in proc.stderr and "\\'" not in proc.stderr  # printed, not repr'd


# --- Validation -------------------------------------------------------------------------------


@pytest.mark.parametrize('path,value,expect', [
    ('data.std', (0.2, 0.0, 0.3), 'config.data.std must be three positive numbers'),
    ('data.mean', (0.4, 0.4), 'config.data.mean must be three numbers'),
    ('data.channel_order', 'BRG', "config.data.channel_order must be one of BGR, RGB, got 'BRG'"),
    ('data.eval_mode', 'keep', 'config.data.eval_mode must be one of keep_res, fixed_res'),
    ('data.source', 'nope', 'config.data.source must be one of coco_json, shapes'),
    ('data.input_size', 0, 'config.data.input_size must be a positive integer, got 0'),
    ('data.eval_pad', -1, 'config.data.eval_pad must be an integer >= 0, got -1'),
    ('data.flip', 1.5, 'config.data.flip must be a number from 0 to 1, got 1.5'),
    ('eval.test_scales', (), 'config.eval.test_scales must be one or more positive numbers'),
    ('eval.K', 0, 'config.eval.K must be a positive integer, got 0'),
    ('optim.lr', 0.0, 'config.optim.lr must be a positive number, or -1'),
    ('model.dtype', 'float16', 'config.model.dtype must be one of float32, bfloat16'),
    ('train.nonfinite_policy', 'ignore', 'config.train.nonfinite_policy must be one of stop'),
])
def test_validate_names_the_key_and_the_rule(path, value, expect):
  c = load_config('smoke')
  config_lib.validate(c)
  section, key = path.split('.')
  c[section][key] = value
  with pytest.raises(config_lib.ConfigError, match=re.escape(expect)):
    config_lib.validate(c)


def test_validate_reports_every_problem_at_once():
  c = load_config('smoke')
  c.data.mean = ('abc',)
  c.eval.K = -1
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c)
  assert 'config.data.mean' in str(e.value) and 'config.eval.K' in str(e.value)


def test_every_shipped_config_validates():
  names = config_lib.shipped_configs()
  assert 'ctdet_resnet18_coco' in names and 'smoke' in names
  for name in names:
    config_lib.validate(load_config(name))


# --- Configs by name, anywhere, also installed ------------------------------------------------


def test_config_names_resolve_from_any_directory(tmp_path, monkeypatch):
  shipped = os.path.join(ROOT, 'configs', 'ctdet_resnet18_coco.py')
  monkeypatch.chdir(tmp_path)
  for spec in ('ctdet_resnet18_coco', 'ctdet_resnet18_coco.py', 'configs/ctdet_resnet18_coco.py'):
    assert config_lib.resolve_config_spec(spec) == shipped
  assert (config_lib.resolve_config_spec('ctdet_dla34_coco:schedule=2x')
          == os.path.join(ROOT, 'configs', 'ctdet_dla34_coco.py') + ':schedule=2x')
  own = tmp_path / 'smoke.py'  # a file that exists wins over the shipped config of its name
  own.write_text('')
  assert config_lib.resolve_config_spec('smoke.py') == 'smoke.py'
  assert config_lib.resolve_config_spec(f'{own}:x=1') == f'{own}:x=1'
  with pytest.raises(config_lib.ConfigError, match='shipped configs .*smoke'):
    config_lib.resolve_config_spec('no_such_config')
  with pytest.raises(config_lib.ConfigError, match='no config file named elsewhere/smoke.py'):
    config_lib.resolve_config_spec('elsewhere/smoke.py')
  assert config_lib.load_config_file('ctdet_dla34_coco:schedule=2x').data.input_size == 512


def test_pyproject_ships_every_package_and_the_configs():
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    setuptools_cfg = tomllib.load(f)['tool']['setuptools']
  found = {os.path.relpath(d, ROOT).replace(os.sep, '.')
           for d, _, files in os.walk(os.path.join(ROOT, 'centernet_jax'))
           if '__init__.py' in files}
  assert set(setuptools_cfg['packages']) == found | {'centernet_jax.configs'}
  assert setuptools_cfg['package-dir'] == {'centernet_jax.configs': 'configs'}


def test_installed_wheel_finds_configs_by_name(tmp_path):
  """A wheel built from the repository carries configs/ as centernet_jax/configs, and the
  installed package (here: the wheel unpacked on PYTHONPATH) finds configs by name."""
  src = tmp_path / 'src'
  src.mkdir()
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(ROOT, name), src / name)
  ignore = shutil.ignore_patterns('__pycache__', '*.pyc')
  for name in ('centernet_jax', 'configs'):
    shutil.copytree(os.path.join(ROOT, name), src / name, ignore=ignore)
  proc = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-index',
                         '--no-build-isolation', '-q', '-w', str(tmp_path / 'dist'), str(src)],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (wheel,) = (tmp_path / 'dist').glob('*.whl')
  with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    z.extractall(tmp_path / 'site')
  assert 'centernet_jax/configs/ctdet_resnet18_coco.py' in names
  env = dict(os.environ, PYTHONPATH=str(tmp_path / 'site'))
  proc = subprocess.run(
      [sys.executable, '-c', 'from centernet_jax import config_lib; '
       'print(config_lib.resolve_config_spec("ctdet_resnet18_coco"))'],
      cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip() == str(tmp_path / 'site' / 'centernet_jax' / 'configs' /
                                    'ctdet_resnet18_coco.py')


# --- The run's saved config -------------------------------------------------------------------


def test_saved_config_round_trip(tmp_path):
  c = tasks.resolve_config(load_config('multi_pose_dla34_coco'), 1)
  config_lib.save_config(c, str(tmp_path))
  back = config_lib.saved_config(str(tmp_path / 'checkpoints' / '7'))  # found from a checkpoint
  assert back.to_dict() == c.to_dict()  # tuples (heads, flip_pairs, mean) are tuples again
  assert back.is_locked
  assert config_lib.saved_config(str(tmp_path / 'elsewhere')) is None


def test_evaluate_cli_uses_the_saved_config_and_keeps_other_settings_apart(run):
  """No --config: W/config.json (its shapes folder, its model). A flip evaluation writes
  eval/step_2_flip/ and leaves the training-time eval/step_2/ as it was."""
  own = os.path.join(run, 'eval', f'step_{STEPS}', 'metrics.json')
  with open(own) as f:
    before = f.read()
  proc = _cli(['centernet_jax.evaluate', '--workdir', run, '--config.eval.flip_test=true'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = os.path.join(run, 'eval', f'step_{STEPS}_flip')
  with open(os.path.join(out, 'setting.json')) as f:
    assert json.load(f) == {'eval.flip_test': True}
  with open(os.path.join(out, 'metrics.json')) as f:
    assert set(json.load(f)) >= {'AP', 'AP50', 'AR100'}
  with open(own) as f:
    assert f.read() == before
  assert 'Given directory is read only' not in proc.stderr
  assert 'checkpoint_manager.py' not in proc.stderr  # Orbax's INFO lines: only with --verbose


@pytest.mark.parametrize('change,name', [
    ({}, ''),
    ({'eval.flip_test': True}, 'flip'),
    ({'eval.batch_size': 7}, ''),  # same results
    ({'eval.K': 20, 'data.eval_mode': 'fixed_res'}, 'K20_fixed_res'),
    ({'eval.test_scales': (0.5, 1.0, 1.5)}, 'scales0.5-1-1.5'),
    ({'data.eval_size': 256}, ''),  # unused by keep_res
    ({'data.eval_pad': 63}, 'pad63'),
    ({'eval.nms_iou': 0.3, 'eval.round_results': False}, 'nms_iou0.3_unrounded'),
    ({'data.val_images': '/other/images', 'eval.K': 20}, 'data-{hash}_K20'),
    ({'data.source': 'coco_json'}, 'data-{hash}'),
])
def test_eval_setting_names(change, name):
  reference = load_config('smoke')
  c = load_config('smoke')
  for path, value in change.items():
    section, key = path.split('.')
    c[section][key] = value
  setting = evaluate.eval_setting(c, reference)
  got = evaluate.eval_setting_name(setting)
  if '{hash}' in name:  # another split: a short digest of the keys naming it
    digest = re.fullmatch(name.replace('{hash}', '([0-9a-f]{8})'), got)
    assert digest, got
    name = name.replace('{hash}', digest.group(1))
    other = dict(setting, **{'data.val_annotations': 'x.json'})
    assert evaluate.eval_setting_name(other) != got
  assert got == name
  assert evaluate.eval_dir('W', 5, setting) == os.path.join(
      'W', 'eval', 'step_5' + (f'_{name}' if name else ''))


def test_missing_step_lists_the_steps(run, shapes_dir):
  with pytest.raises(FileNotFoundError, match=rf'no checkpoint of step 3 in {run}/checkpoints; '
                     rf'the steps there are {STEPS}$'):
    inference.restore(_smoke(shapes_dir), run, step=3)


def test_restore_warns_nothing_about_read_only(run, shapes_dir, caplog):
  """Orbax warned "Given directory is read only=..." and "CheckpointManagerOptions.read_only=True,
  setting max_to_keep=None" on every restore: it reads like a permissions problem."""
  with caplog.at_level(logging.WARNING):
    inference.restore(_smoke(shapes_dir), run)
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# --- A finished run ---------------------------------------------------------------------------


def test_rerunning_a_finished_run_builds_nothing(run, shapes_dir, monkeypatch, capsys, tmp_path):
  with open(os.path.join(run, 'eval', f'step_{STEPS}', 'metrics.json')) as f:
    want = json.load(f)

  def no_model(*args, **kwargs):
    raise AssertionError('the model was built')

  monkeypatch.setattr(models, 'build_model', no_model)
  assert train.train_and_evaluate(_smoke(shapes_dir), run) == want
  err = capsys.readouterr().err
  assert f'nothing to do: {run} holds the checkpoint of the last step ({STEPS})' in err
  # One step more is not finished: training goes on (a copy: the run stays as it is).
  longer = _smoke(shapes_dir)
  longer.train.num_steps = STEPS + 1
  copy = str(tmp_path / 'copy')
  shutil.copytree(run, copy)
  with pytest.raises(AssertionError, match='the model was built'):
    train.train_and_evaluate(longer, copy)


def test_cli_rerun_by_name_from_another_directory(run, shapes_dir, tmp_path):
  """`--config smoke` (a shipped name) from another working directory; the finished run says
  so quietly: no Orbax INFO lines, no read-only notice, no TensorFlow C++ INFO."""
  proc = _cli(['centernet_jax.train', '--config', 'smoke', '--workdir', run,
               f'--config.data.shapes_dir={shapes_dir}', f'--config.train.num_steps={STEPS}',
               f'--config.train.checkpoint_every={STEPS}'], cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'nothing to do' in proc.stderr
  assert 'read only' not in proc.stderr and 'checkpoint_manager.py' not in proc.stderr
  assert 'oneDNN' not in proc.stderr and 'cpu_feature_guard' not in proc.stderr


# --- predict ----------------------------------------------------------------------------------


def _images(shapes_dir, n):
  val = os.path.join(shapes_dir, 'val')
  return [os.path.join(val, f) for f in sorted(os.listdir(val)) if f.endswith('.jpg')][:n]


def test_predict_cli_on_a_folder_with_the_saved_config(run, shapes_dir, detector, tmp_path):
  """A folder stands for its images (sorted); a second x.jpg gets x_1; the CLI's default
  threshold is the Python default (the same detections)."""
  first, second = _images(shapes_dir, 2)
  folder, other = tmp_path / 'folder', tmp_path / 'other'
  folder.mkdir()
  other.mkdir()
  shutil.copy(first, folder / 'x.jpg')
  shutil.copy(second, folder / 'y.jpg')
  (folder / 'notes.txt').write_text('not an image')
  shutil.copy(second, other / 'x.jpg')
  out = tmp_path / 'out'
  proc = _cli(['centernet_jax.predict', '--workdir', run, '--images', str(folder),
               str(other / 'x.jpg'), '--output', str(out)])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(os.listdir(out)) == ['x.json', 'x.png', 'x_1.json', 'x_1.png', 'y.json', 'y.png']
  for name, image in (('x', folder / 'x.jpg'), ('y', folder / 'y.jpg'),
                      ('x_1', other / 'x.jpg')):
    with open(out / f'{name}.json') as f:
      record = json.load(f)
    assert record['image'] == str(image)
    assert record['detections'] == detector([str(image)])[0]  # both at the default threshold


def test_one_box_format_per_key_and_one_default_threshold(detector, shapes_dir, tmp_path):
  defaults = {inspect.signature(f).parameters['score_threshold'].default
              for f in (predict.Detector.__call__, predict.Detector.draw, predict.predict_files)}
  assert defaults == {predict.DEFAULT_SCORE_THRESHOLD}
  (image,) = _images(shapes_dir, 1)
  dets = detector([image], score_threshold=0.0)[0]
  assert dets and all('bbox' not in d and len(d['bbox_xyxy']) == 4 for d in dets)
  x1, y1, x2, y2 = np.array([d['bbox_xyxy'] for d in dets]).T
  assert np.all(x1 <= x2) and np.all(y1 <= y2)
  predict.predict_files(detector, [image], str(tmp_path), 0.0)
  with open(tmp_path / (os.path.splitext(os.path.basename(image))[0] + '.json')) as f:
    assert json.load(f)['detections'] == dets


def test_output_names_and_folders(tmp_path):
  assert predict.output_names(['a/x.jpg', 'b/x.jpg', 'x.png', 'x_1.jpg', 'grid.jpg']) == [
      'x', 'x_1', 'x_2', 'x_1_1', 'grid_1']
  (tmp_path / 'b.PNG').write_bytes(b'')
  (tmp_path / 'a.jpg').write_bytes(b'')
  (tmp_path / 'c.txt').write_bytes(b'')
  assert predict.expand_images([str(tmp_path)]) == [str(tmp_path / 'a.jpg'),
                                                     str(tmp_path / 'b.PNG')]
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='no image files .* in the folder .*empty'):
    predict.expand_images([str(tmp_path / 'empty')])
  with pytest.raises(FileNotFoundError, match='image file.s. not found: /no/a.jpg, /no/b.jpg'):
    predict.expand_images(['/no/a.jpg', str(tmp_path), '/no/b.jpg'])


def test_16bit_png_is_drawn_like_its_8bit_version(detector, tmp_path):
  gray8 = np.random.default_rng(0).integers(0, 256, (64, 80), dtype=np.uint8)
  Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / 'deep.png')  # 16-bit gray
  Image.fromarray(gray8).save(tmp_path / 'flat.png')
  with Image.open(tmp_path / 'deep.png') as im:
    assert im.mode.startswith('I')
  np.testing.assert_array_equal(predict.read_rgb(str(tmp_path / 'deep.png')),
                                np.repeat(gray8[..., None], 3, -1))
  predict.predict_files(detector, [str(tmp_path / 'deep.png'), str(tmp_path / 'flat.png')],
                        str(tmp_path / 'out'), 0.0)
  with Image.open(tmp_path / 'out' / 'deep.png') as a, Image.open(tmp_path / 'out' /
                                                                  'flat.png') as b:
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- Small pieces -----------------------------------------------------------------------------


def test_error_text_and_path_problem(tmp_path):
  assert cli.error_text(KeyError("unknown key 'x'")) == "unknown key 'x'"
  assert cli.error_text(ValueError('a\nb')) == 'a\nb'
  (tmp_path / 'f').write_text('')
  assert cli.path_problem(str(tmp_path / 'new' / 'deeper')) is None
  assert cli.path_problem(str(tmp_path / 'f')) == 'is a file, not a directory'
  assert cli.path_problem(str(tmp_path / 'f' / 'x' / 'y')) == (
      f'{tmp_path / "f"} is a file: no directory can be made in it')
