"""Shared config sections and helpers.

Every experiment file in ``configs/`` builds its ConfigDict from :func:`base_config` with its
task named explicitly and overrides what differs, so every config of a task carries every key of
that task (any config trains on any data source) and no key of another task. Configs are locked:
an unknown key, a typo or another task's key (``--config.loss.pull_weight=...`` on a ctdet
config) fails loudly.

Entry points find a config by path, by the name of a shipped config (:func:`resolve_config_spec`)
or in the run's ``config.json`` (:func:`saved_config`), and check it with :func:`validate`
before any work.
"""

from __future__ import annotations

import json
import logging
import math
import os

import ml_collections

from centernet_jax import tasks
from centernet_jax.data import config as data_cfg_lib
from centernet_jax.data.config import MAX_OBJS_POLICIES, SOURCES, data_config

# The class count of COCO 2017 detection (the official models' heatmap channels).
COCO_NUM_CLASSES = 80


def parse_arg(arg: str | None, **defaults):
  """Parses ``"a=1,b=x"`` (the part after ``:`` in ``--config file.py:arg``) into a ConfigDict.

  Values take the type of the default of the same name; unknown names are an error.
  """
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(','):
    if not item:
      continue
    if '=' not in item:
      raise ValueError(f'config argument {item!r} is not of the form name=value')
    name, value = item.split('=', 1)
    if name not in defaults:
      raise ValueError(f'unknown config argument {name!r}; known: {sorted(defaults)}')
    default = defaults[name]
    if isinstance(default, bool):
      out[name] = value.lower() in ('1', 'true', 'yes')
    elif default is None:
      out[name] = value
    else:
      out[name] = type(default)(value)
  return out


def base_config(task: str = 'ctdet') -> ml_collections.ConfigDict:
  """A complete, locked config of ``task`` with the official ResNet-18 COCO defaults.

  The shared sections come first; then the task module (``tasks.get(task).add_config``) adds
  its own keys to ``loss`` and ``eval``.

  Args:
    task: a key of ``tasks.TASKS`` ('ctdet' or 'cornernet').

  Returns:
    The ConfigDict; ``model.num_classes`` is -1 and ``model.heads`` empty until
    ``tasks.resolve_config`` learns the class count (from the data set or a checkpoint).
  """
  task_module = tasks.get(task)
  c = ml_collections.ConfigDict()
  c.seed = 317  # official CenterNet seed
  c.task = task
  c.data = data_config()

  c.model = ml_collections.ConfigDict()
  c.model.arch = 'resnet'
  c.model.depth = 18
  c.model.head_conv = 64  # official: 64 for res*, 256 for dla
  c.model.down_ratio = 4
  c.model.num_classes = -1  # -1: taken from the data set's categories at run time
  # ((name, channels), ...) of the task's heads; () until the class count is known.
  c.model.heads = ()
  c.model.dtype = 'float32'  # compute dtype; params stay float32
  # 'subpixel': ConvTranspose 4x4/2 as one 3x3 conv + depth-to-space (same maths, fast weight
  # gradient on every backend); 'conv_transpose': lax.conv_transpose.
  c.model.upsample = 'subpixel'
  # Official msra_resnet initialises up-convs N(0, 0.001) and only the last conv of each head
  # (hm bias -2.19); 'bilinear' up-convs and head_init 'fill_fc' (resnet_dcn) or 'dla'
  # (pose_dla_dcn) are the other official conventions (models/heads.py).
  c.model.deconv_init = 'normal'
  c.model.head_init = 'msra'
  # Not official: lateral 1x1 conv-BN connections from backbone strides 16/8/4 into the neck
  # (FPN-style, as TF ODAPI's ResNet-FPN CenterNet). Helps small inputs, where the stride-32 map
  # is only a few pixels wide.
  c.model.neck_skips = False
  # hourglass_tiny / cornernet_tiny only: every channel count of the tiny stack times this.
  c.model.width = 1

  c.loss = ml_collections.ConfigDict()  # the task's weights and target options

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = -1.0  # -1: base_lr * batch_size / base_batch (official linear rule)
  c.optim.base_lr = 1.25e-4
  c.optim.base_batch = 32
  c.optim.schedule = 'step'  # 'step' (official) or 'cosine'
  c.optim.lr_steps = (90, 120)  # epochs (or steps) at which lr is multiplied by 0.1
  c.optim.lr_steps_unit = 'epochs'  # 'steps' for iteration-based recipes (CornerNet: 450k)
  c.optim.warmup_steps = 0
  c.optim.grad_clip = 0.0  # 0: off (official)
  c.optim.weight_decay = 0.0  # official Adam has none

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 114  # global
  c.train.num_epochs = 140
  c.train.num_steps = -1  # >0 overrides num_epochs
  c.train.log_every = 50
  c.train.checkpoint_every = 2000
  c.train.keep_checkpoints = 3
  c.train.eval_every = -1  # -1: only at the end
  # Non-finite loss or gradients: 'stop' (error naming the step and the batch's image ids) or
  # 'skip' (the update is not applied, counted in train/skipped_updates; stop after
  # max_consecutive_skips skipped steps in a row).
  c.train.nonfinite_policy = 'stop'
  c.train.max_consecutive_skips = 10

  c.eval = ml_collections.ConfigDict()
  c.eval.K = 100
  c.eval.flip_test = False
  c.eval.batch_size = 1
  c.eval.round_results = True  # official rounds bbox and score to 2 decimals
  c.eval.num_images = -1  # -1: every image of the split
  # Multi-scale testing (official --test_scales, e.g. (0.5, 0.75, 1, 1.25, 1.5)): detections of
  # every scale (and flip) are merged with per-class soft-NMS, then the top K are kept.
  c.eval.test_scales = (1.0,)
  # Soft-NMS (nms.py) of the task's test and of the multi-scale merge.
  c.eval.nms_method = 'gaussian'  # 'gaussian' (official), 'linear' or 'hard'
  c.eval.nms_iou = 0.5  # Nt
  c.eval.nms_sigma = 0.5
  c.eval.nms_threshold = 0.001  # scores below are dropped

  c.init = ''  # checkpoint to initialise from (backbone or all)
  c.resume = ''  # checkpoint to resume from when the workdir has none
  task_module.add_config(c)
  c.lock()
  return c


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags parser of the entry points (:func:`centernet_jax.cli.parse_flags`)."""
  from centernet_jax import cli

  return cli.parse_flags(argv)


def coco_config(*, task: str, arch: str, depth: int, batch_size: int, lr: float
                ) -> ml_collections.ConfigDict:
  """The official COCO recipe: 512 px, 140 epochs, lr x0.1 at 90 and 120, crowd kept, 80 classes.

  The heads are the task's for the 80 COCO classes, so ``models.build_model(config.model)``
  works on the config as it is.
  """
  c = base_config(task)
  c.data.source = 'tfds'
  c.data.input_size = 512
  c.data.train_on_crowd = True  # official behaviour
  c.model.arch = arch
  c.model.depth = depth
  c.model.dtype = 'bfloat16'
  c.model.num_classes = COCO_NUM_CLASSES
  c.model.heads = tasks.get(task).heads(COCO_NUM_CLASSES, c)
  c.train.batch_size = batch_size
  c.optim.lr = lr
  c.train.num_epochs = 140
  c.optim.lr_steps = (90, 120)
  c.train.checkpoint_every = 5000
  c.train.eval_every = 50000
  return c


def coco_ctdet_config(*, arch: str, depth: int, batch_size: int, lr: float
                      ) -> ml_collections.ConfigDict:
  """:func:`coco_config` of the ctdet task (the official CenterNet COCO recipes)."""
  return coco_config(task='ctdet', arch=arch, depth=depth, batch_size=batch_size, lr=lr)


def shapes_cpu_config(*, task: str, num_steps: int, warmup_steps: int, eval_every: int
                      ) -> ml_collections.ConfigDict:
  """The CPU recipe on the built-in shapes data (experiments/shapes_demo.md).

  96 px training input (the 128 px images are scaled by the random affine), batch 16, Adam with
  linear warm-up and cosine decay from 2e-3, gradient clipping at 10; the model is the caller's.
  """
  c = base_config(task)
  c.seed = 0
  c.data.source = 'shapes'
  c.data.shapes_num_train = 600
  c.data.shapes_num_val = 100
  c.data.shapes_image_size = 128
  c.data.input_size = 96  # 1.8x the steps of 128 px in the same time
  c.data.max_objs = 16
  c.train.batch_size = 16
  c.train.num_steps = num_steps
  c.train.log_every = 50
  c.train.checkpoint_every = eval_every
  c.train.eval_every = eval_every
  c.optim.lr = 2e-3
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = warmup_steps
  c.optim.grad_clip = 10.0
  c.eval.batch_size = 10
  return c


# --- Finding configs: a path, a shipped config's name, or a run's saved config ---------------

SAVED_CONFIG = 'config.json'  # written into the workdir by train.py


class ConfigError(ValueError):
  """A config that cannot be found or loaded, or values of the wrong type or out of range."""


def shipped_configs_dir() -> str:
  """The folder of the shipped experiment configs.

  ``configs/`` at the top of the repository (a checkout, an editable install), or the
  ``centernet_jax/configs`` package data an installed wheel carries (pyproject.toml maps the
  one onto the other).
  """
  package = os.path.dirname(os.path.abspath(__file__))
  installed = os.path.join(package, 'configs')
  return installed if os.path.isdir(installed) else os.path.join(os.path.dirname(package),
                                                                   'configs')


def shipped_configs() -> list[str]:
  """Names of the shipped configs (``--config <name>``), sorted."""
  directory = shipped_configs_dir()
  if not os.path.isdir(directory):
    return []
  return sorted(n[:-3] for n in os.listdir(directory)
                if n.endswith('.py') and not n.startswith('_'))


def resolve_config_spec(spec: str) -> str:
  """``--config`` as given -> ``path[:arg]`` of the config file to load.

  A file that exists is taken as it is. Otherwise a bare name (``ctdet_resnet18_coco``, with or
  without ``.py``, or written ``configs/<name>.py`` from another working directory) names a
  shipped config. The part after the first ``:`` is the config's argument and is kept.

  Raises:
    ConfigError: naming the shipped configs when ``spec`` is neither.
  """
  path, sep, arg = spec.partition(':')
  if os.path.isfile(path):
    return spec
  head, name = os.path.split(path)
  name = name[:-3] if name.endswith('.py') else name
  candidate = os.path.join(shipped_configs_dir(), name + '.py')
  if name and head in ('', 'configs') and os.path.isfile(candidate):
    return candidate + sep + arg
  what = 'no config file' if head or path.endswith('.py') else 'no config file or shipped config'
  raise ConfigError(f'{what} named {path}; shipped configs (give a name or a path): '
                    f'{", ".join(shipped_configs()) or "none found"}')


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """The config ``--config spec`` names (:func:`resolve_config_spec`), locked, no overrides."""
  import importlib.util

  path, _, arg = resolve_config_spec(spec).partition(':')
  module_spec = importlib.util.spec_from_file_location('centernet_jax_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  config.lock()
  return config


def run_dir(path: str) -> str:
  """The workdir of a workdir, its ``checkpoints`` folder or one ``checkpoints/<step>`` folder."""
  path = os.path.abspath(path.rstrip('/') or '/')
  parent = os.path.dirname(path)
  if os.path.basename(path).isdigit() and os.path.basename(parent) == 'checkpoints':
    return os.path.dirname(parent)
  if os.path.basename(path) == 'checkpoints':
    return parent
  return path


def saved_config_path(path: str) -> str | None:
  """``<workdir>/config.json`` of the run ``path`` belongs to (:func:`run_dir`), if written."""
  candidate = os.path.join(run_dir(path), SAVED_CONFIG)
  return candidate if os.path.isfile(candidate) else None


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes ``<workdir>/config.json`` (what :func:`saved_config` reads back); returns its path."""
  path = os.path.join(workdir, SAVED_CONFIG)
  with open(path, 'w') as f:
    json.dump(config.to_dict(), f, indent=2, default=str)
  return path


def config_from_dict(saved: dict, where: str = 'the saved config') -> ml_collections.ConfigDict:
  """A locked config of ``saved['task']`` with the values of ``saved`` (a run's config.json).

  JSON lists become tuples where the config has tuples; keys this version does not know are
  left out with a warning (a config.json from another version of the code).

  Raises:
    ConfigError: ``saved`` is not a config (no known task, or a value of the wrong type).
  """
  task = saved.get('task', 'ctdet') if isinstance(saved, dict) else None
  if task not in tasks.TASKS:
    raise ConfigError(f'{where} is not a config of a known task (task={task!r}; known: '
                      f'{sorted(tasks.TASKS)})')
  config = base_config(task)
  unknown: list[str] = []
  try:
    _update(config, saved, '', unknown)
  except (TypeError, ValueError) as e:
    raise ConfigError(f'{where}: {e}') from None
  if unknown:
    logging.warning('%s: keys not known to this version left out: %s', where,
                    ', '.join(unknown))
  return config


def _update(node: ml_collections.ConfigDict, values: dict, prefix: str,
            unknown: list[str]) -> None:
  for key, value in values.items():
    name = prefix + key
    if key not in node:
      unknown.append(name)
    elif isinstance(node[key], ml_collections.ConfigDict):
      if not isinstance(value, dict):
        raise TypeError(f'{name} must be a section, got {value!r}')
      _update(node[key], value, name + '.', unknown)
    else:
      node[key] = _tuples(value) if isinstance(node[key], tuple) else value


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def saved_config(path: str) -> ml_collections.ConfigDict | None:
  """The config a training run saved (``<workdir>/config.json``), or None when there is none.

  Args:
    path: the run's workdir, its ``checkpoints`` folder or one checkpoint folder.

  Raises:
    ConfigError: the file is not valid JSON or not a config.
  """
  file = saved_config_path(path)
  if file is None:
    return None
  try:
    with open(file) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f'cannot read {file}: {e}') from None
  return config_from_dict(saved, file)


# --- Validation: every entry point checks the shared keys before doing any work --------------

_CHOICES = {
    'data.source': SOURCES,
    'data.channel_order': ('BGR', 'RGB'),
    'data.eval_mode': data_cfg_lib.EVAL_MODES,
    'data.max_objs_policy': MAX_OBJS_POLICIES,
    'data.exif_orientation': ('apply', 'ignore'),  # data/coco.py EXIF_ORIENTATION_MODES
    'model.dtype': ('float32', 'bfloat16'),  # models/layers.py DTYPES
    'model.upsample': ('subpixel', 'conv_transpose'),  # models/layers.py UPSAMPLE_IMPLS
    'optim.schedule': ('step', 'cosine'),
    'optim.lr_steps_unit': ('epochs', 'steps'),
    'train.nonfinite_policy': ('stop', 'skip'),
    'eval.nms_method': ('gaussian', 'linear', 'hard'),  # nms.py METHODS
    'loss.ddd_norm': ('slots', 'objects'),  # tasks/ddd (ddd configs only)
    'eval.kitti_overlaps': ('devkit', 'centernet'),  # tasks/ddd (ddd configs only)
}
_POSITIVE_INTS = ('data.input_size', 'data.max_objs', 'data.eval_size', 'model.down_ratio',
                  'train.batch_size', 'train.log_every', 'train.checkpoint_every', 'eval.K',
                  'eval.batch_size')
_NON_NEGATIVE_INTS = ('data.eval_pad', 'model.head_conv', 'optim.warmup_steps')
_FRACTIONS = ('data.flip', 'data.max_skip_fraction', 'data.ddd_aug')


def _get(config: ml_collections.ConfigDict, path: str):
  node = config
  for part in path.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return _MISSING
    node = node[part]
  return node


_MISSING = object()


def _is_number(v) -> bool:
  return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def config_problems(config: ml_collections.ConfigDict) -> list[str]:
  """What :func:`validate` objects to, one entry per key (empty when the config is fine)."""
  problems = []

  def bad(path: str, want: str) -> None:
    problems.append(f'config.{path} must be {want}, got {_get(config, path)!r}')

  if config.get('task') not in tasks.TASKS:
    bad('task', f'one of {", ".join(sorted(tasks.TASKS))}')
  for path, choices in _CHOICES.items():
    value = _get(config, path)
    if value is not _MISSING and value not in choices:
      bad(path, f'one of {", ".join(choices)}')
  for path in ('data.mean', 'data.std'):
    value = _get(config, path)
    if value is _MISSING:
      continue
    if (not isinstance(value, tuple | list) or len(value) != 3
        or not all(_is_number(v) for v in value)):
      bad(path, 'three numbers, one per channel, e.g. (0.408, 0.447, 0.470)')
    elif path == 'data.std' and not all(v > 0 for v in value):
      bad(path, 'three positive numbers')
  for path in _POSITIVE_INTS:
    value = _get(config, path)
    if value is not _MISSING and not (_is_int(value) and value > 0):
      bad(path, 'a positive integer')
  for path in _NON_NEGATIVE_INTS:
    value = _get(config, path)
    if value is not _MISSING and not (_is_int(value) and value >= 0):
      bad(path, 'an integer >= 0')
  for path in _FRACTIONS:
    value = _get(config, path)
    if value is not _MISSING and not (_is_number(value) and 0 <= value <= 1):
      bad(path, 'a number from 0 to 1')
  _check_ddd_data(config, bad)
  lr = _get(config, 'optim.lr')
  if lr is not _MISSING and not (_is_number(lr) and (lr > 0 or lr == -1)):
    bad('optim.lr', 'a positive number, or -1 (the linear rule from optim.base_lr)')
  scales = _get(config, 'eval.test_scales')
  if scales is not _MISSING and (not isinstance(scales, tuple | list) or not scales or not all(
      _is_number(s) and s > 0 for s in scales)):
    bad('eval.test_scales', 'one or more positive numbers, e.g. (1.0,) or (0.5, 1.0, 1.5)')
  steps, epochs = _get(config, 'train.num_steps'), _get(config, 'train.num_epochs')
  if _is_int(steps) and steps <= 0 and not (_is_int(epochs) and epochs > 0):
    bad('train.num_epochs', 'a positive integer when train.num_steps <= 0')
  return problems


def _is_pair(value, ok) -> bool:
  return (isinstance(value, tuple | list) and len(value) == 2
          and all(_is_int(v) and ok(v) for v in value))


def _check_ddd_data(config: ml_collections.ConfigDict, bad) -> None:
  """The rules of the KITTI / ddd data keys (``bad`` records a problem).

  The 'kitti' paths are checked when the data is opened (data/sources.py), not here: predict,
  export and the shipped configs need none.
  """
  source = _get(config, 'data.source')
  kitti_sources = data_cfg_lib.KITTI_SOURCES
  hw = _get(config, 'data.input_hw')
  if hw is not _MISSING and hw not in ((), []):
    if not _is_pair(hw, lambda v: v > 0 and v % 32 == 0):
      bad('data.input_hw', '() (data.input_size square) or a pair (h, w) of positive multiples '
          'of 32, e.g. (384, 1280)')
    elif source not in kitti_sources and _get(config, 'data.eval_mode') != 'fit_width':
      bad('data.input_hw', f"() unless data.source is one of {', '.join(kitti_sources)} or "
          "data.eval_mode is 'fit_width' (the other sources train on data.input_size square)")
  shapes_hw = _get(config, 'data.shapes_ddd_hw')
  if shapes_hw is not _MISSING and not _is_pair(shapes_hw, lambda v: v > 0):
    bad('data.shapes_ddd_hw', 'a pair (h, w) of positive integers, e.g. (128, 384)')
  crop = _get(config, 'data.ddd_crop_width')
  if crop is not _MISSING and crop != 0:
    canvas_w = hw[1] if _is_pair(hw, lambda v: v > 0) else _get(config, 'data.input_size')
    if not (_is_int(crop) and 0 < crop <= canvas_w and crop % 32 == 0):
      bad('data.ddd_crop_width', f'0 (the whole canvas) or a positive multiple of 32 no wider '
          f'than the canvas ({canvas_w})')


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the types and ranges of the shared keys, so a bad value fails before any work.

  Raises:
    ConfigError: naming every bad key, its value and what it must be.
  """
  problems = config_problems(config)
  if problems:
    raise ConfigError('; '.join(problems))
