"""Shared config sections and helpers.

Every experiment file in ``configs/`` builds its ConfigDict from :func:`base_config` and overrides
what differs, so every config carries every key (any config trains on any data source, and an
unknown ``--config.x=y`` override fails loudly because configs are locked).
"""

from __future__ import annotations

import ml_collections

# COCO statistics in BGR order, applied after /255 (official CenterNet datasets/dataset/coco.py).
COCO_MEAN_BGR = (0.40789654, 0.44719302, 0.47026115)
COCO_STD_BGR = (0.28863828, 0.27408164, 0.27809835)


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


def data_config() -> ml_collections.ConfigDict:
  """The ``config.data`` section: source, paths, sizes, augmentation, normalisation."""
  d = ml_collections.ConfigDict()
  # 'coco_json' (instances json + image folder), 'tfds' (tfds_name) or 'shapes' (built-in).
  d.source = 'shapes'
  d.train_annotations = ''
  d.train_images = ''
  d.val_annotations = ''
  d.val_images = ''
  d.tfds_name = 'coco/2017'
  d.tfds_data_dir = ''
  d.tfds_train_split = 'train'
  d.tfds_val_split = 'validation'
  # Built-in shapes data set: generated once into shapes_dir (default: ~/.cache/centernet_jax).
  d.shapes_dir = ''
  d.shapes_num_train = 600
  d.shapes_num_val = 100
  d.shapes_image_size = 128
  d.shapes_seed = 0
  # Network input (square, training) and output stride.
  d.input_size = 512
  d.max_objs = 128  # official COCO value
  # Official CenterNet trains on crowd boxes too (getAnnIds has no iscrowd filter).
  d.train_on_crowd = False
  # Augmentation (official ctdet defaults).
  d.rand_crop = True  # scale from {0.6, ..., 1.3} + random centre; False = gaussian shift/scale
  d.scale_min = 0.6
  d.scale_max = 1.4
  d.scale_step = 0.1
  # Crop side: 0 = max(H, W) * scale (official CenterNet); N > 0 = N * scale (official
  # CornerNet cuts a 511 * scale square whatever the image size).
  d.crop_base = 0
  d.shift = 0.1  # used when rand_crop is False
  d.scale = 0.4  # used when rand_crop is False
  d.flip = 0.5
  d.color_aug = True  # brightness/contrast/saturation 0.4 + PCA lighting 0.1
  # Normalisation: official weights expect BGR and the COCO statistics.
  d.channel_order = 'BGR'
  d.mean = COCO_MEAN_BGR
  d.std = COCO_STD_BGR
  # Evaluation input: 'keep_res' pads each image to a multiple of (eval_pad + 1), centred
  # (official, used for every reported number); 'fixed_res' warps to eval_size x eval_size.
  d.eval_mode = 'keep_res'
  d.eval_pad = 31
  d.eval_size = 512
  d.shuffle_buffer = 1024
  # Training skips unreadable images and annotations failing validation (logged, counted); the
  # run stops once skipped image reads pass this fraction of max(reads, training images), or
  # skipped annotations this fraction of the annotations (docs: experiments/fault_tolerance.md).
  d.max_skip_fraction = 0.01
  d.num_parallel_calls = -1  # tf.data.AUTOTUNE
  d.prefetch = 2
  return d


def base_config() -> ml_collections.ConfigDict:
  """A complete ctdet config with the official ResNet-18 COCO defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 317  # official CenterNet seed
  c.data = data_config()

  c.model = ml_collections.ConfigDict()
  c.model.arch = 'resnet'
  c.model.depth = 18
  c.model.head_conv = 64  # official: 64 for res*, 256 for dla
  c.model.down_ratio = 4
  c.model.num_classes = -1  # -1: taken from the data set's categories at run time
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

  c.loss = ml_collections.ConfigDict()
  c.loss.hm_weight = 1.0
  c.loss.wh_weight = 0.1
  c.loss.off_weight = 1.0
  c.loss.min_overlap = 0.7  # official CenterNet gaussian_radius overlap
  # CornerNet (PARITY 4.8): associative-embedding pull/push and smooth-L1 offset weights.
  c.loss.pull_weight = 0.1
  c.loss.push_weight = 0.1
  c.loss.regr_weight = 1.0
  # The official CornerNet sums pull/push over the images of each GPU chunk and averages the
  # chunks (batch 49 on 10 GPUs: 4.9 images per chunk); 0 sums over the whole global batch.
  c.loss.ae_images_per_chunk = 0.0

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
  # Single-scale soft-NMS (official CenterNet --nms; always on for CornerNet).
  c.eval.nms = False
  c.eval.nms_method = 'gaussian'  # 'gaussian' (official), 'linear' or 'hard'
  c.eval.nms_iou = 0.5  # Nt
  c.eval.nms_sigma = 0.5
  c.eval.nms_threshold = 0.001  # scores below are dropped
  # CornerNet decoding (PARITY 4.9): top-K corners per type, kept pairs, embedding threshold.
  c.eval.corner_K = 100
  c.eval.num_dets = 1000
  c.eval.ae_threshold = 0.5

  c.init = ''  # checkpoint to initialise from (backbone or all)
  c.resume = ''  # checkpoint to resume from when the workdir has none
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
      message = (f'unknown config key {message}: every key is listed in '
                 'centernet_jax/config_lib.py')
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def coco_ctdet_config(*, arch: str, depth: int, batch_size: int, lr: float
                      ) -> ml_collections.ConfigDict:
  """The official ctdet COCO recipe: 512 px, 140 epochs, lr x0.1 at 90 and 120, crowd kept."""
  c = base_config()
  c.data.source = 'tfds'
  c.data.input_size = 512
  c.data.train_on_crowd = True  # official behaviour
  c.model.arch = arch
  c.model.depth = depth
  c.model.dtype = 'bfloat16'
  c.train.batch_size = batch_size
  c.optim.lr = lr
  c.train.num_epochs = 140
  c.optim.lr_steps = (90, 120)
  c.train.checkpoint_every = 5000
  c.train.eval_every = 50000
  return c


def shapes_cpu_config(*, num_steps: int, warmup_steps: int, eval_every: int
                      ) -> ml_collections.ConfigDict:
  """The CPU recipe on the built-in shapes data (experiments/shapes_demo.md).

  96 px training input (the 128 px images are scaled by the random affine), batch 16, Adam with
  linear warm-up and cosine decay from 2e-3, gradient clipping at 10; the model is the caller's.
  """
  c = base_config()
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
