"""Shared config sections and helpers.

Every experiment file in ``configs/`` builds its ConfigDict from :func:`base_config` with its
task named explicitly and overrides what differs, so every config of a task carries every key of
that task (any config trains on any data source) and no key of another task. Configs are locked:
an unknown key, a typo or another task's key (``--config.loss.pull_weight=...`` on a ctdet
config) fails loudly.
"""

from __future__ import annotations

import ml_collections

from centernet_jax import tasks
from centernet_jax.data.config import data_config

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
  """absl flags parser for the entry points: a bad flag or config override exits with one line.

  ``--config.x.y=v`` with an unknown key raises AttributeError/KeyError inside ml_collections;
  this turns it (and absl's own flag errors) into ``error: ...`` on stderr and exit status 2.
  """
  import sys

  from absl import flags

  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = str(e).strip('"\'')
    if isinstance(e, (AttributeError, KeyError)):
      message = (f'unknown config key {message}: the shared keys are listed in '
                 'centernet_jax/config_lib.py (data: centernet_jax/data/config.py), each '
                 "task's own in centernet_jax/tasks/<config.task>.py: add_config")
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


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
