"""The ``config.data`` section (sources, sizes, augmentation, normalisation).

Kept apart from the pipeline so that configs import it without TensorFlow: ``config_lib``
builds every experiment's ``config.data`` from :func:`data_config`.
"""

from __future__ import annotations

import ml_collections

# COCO statistics in BGR order, applied after /255 (official CenterNet datasets/dataset/coco.py).
COCO_MEAN_BGR = (0.40789654, 0.44719302, 0.47026115)
COCO_STD_BGR = (0.28863828, 0.27408164, 0.27809835)

SOURCES = ('coco_json', 'shapes', 'shapes_pose', 'tfds', 'kitti', 'shapes_ddd')
KITTI_SOURCES = ('kitti', 'shapes_ddd')  # KITTI object layout: ddd batches (depth, dims, alpha)
MAX_OBJS_POLICIES = ('visible_first', 'first')
EVAL_MODES = ('keep_res', 'fixed_res', 'fit_width')


def data_config() -> ml_collections.ConfigDict:
  """The ``config.data`` section: source, paths, sizes, augmentation, normalisation."""
  d = ml_collections.ConfigDict()
  # 'coco_json' (instances json + image folder), 'tfds' (tfds_name), 'shapes' (built-in) or
  # 'shapes_pose' (built-in stick figures with 17 COCO joints, for multi_pose), 'kitti' (the
  # KITTI object layout: kitti_root/training/{image_2,label_2,calib} and two split files of
  # image ids; monocular 3D, the ddd task) or 'shapes_ddd' (built-in synthetic KITTI-format set).
  d.source = 'shapes'
  d.train_annotations = ''
  d.train_images = ''
  d.val_annotations = ''
  d.val_images = ''
  # TFDS: training reads the split by random access (resuming is O(1)), so the data set must be
  # prepared in a random-access format: tfds build coco/2017 --file_format=array_record.
  d.tfds_name = 'coco/2017'
  d.tfds_data_dir = ''
  d.tfds_train_split = 'train'
  d.tfds_val_split = 'validation'
  # KITTI (source 'kitti'): the folder holding training/ and the train / val split files.
  d.kitti_root = ''
  d.train_split = ''
  d.val_split = ''
  # Built-in shapes (and shapes_pose) data set: generated once into shapes_dir (default: a
  # folder named after the parameters in ~/.cache/centernet_jax).
  d.shapes_dir = ''
  d.shapes_num_train = 600
  d.shapes_num_val = 100
  d.shapes_image_size = 128
  d.shapes_seed = 0
  d.shapes_ddd_hw = (128, 384)  # image (h, w) of the built-in shapes_ddd set
  # Network input (square, training) and output stride.
  d.input_size = 512
  # () : the training canvas is input_size x input_size; (h, w): an h x w canvas (multiples of
  # 32; ddd: the official (384, 1280)), also the 'fit_width' evaluation canvas.
  d.input_hw = ()
  d.max_objs = 128  # official COCO value
  # Which objects survive max_objs (docs/parity.md 4.3): 'visible_first' (ours: objects still
  # visible after the crop first, in annotation order, then the hidden ones) or 'first' (official:
  # the first max_objs annotations of the image, visible or not).
  d.max_objs_policy = 'visible_first'
  # Official CenterNet trains on crowd boxes too (getAnnIds has no iscrowd filter).
  d.train_on_crowd = False
  # Leave the training images without any object out of the training set (official multi_pose:
  # the 64,115 train2017 images with a person); evaluation always keeps every image.
  d.skip_empty_train_images = False
  # Phone photos: apply each JPEG's EXIF orientation to its pixels, as COCO-style tools show them
  # (the json's width/height follow the rotated image); 'ignore': pixels as stored.
  d.exif_orientation = 'apply'
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
  # ddd (KITTI sources): probability of the random scale / shift (official --aug_ddd), drawn
  # with data.scale and data.shift; no flip and no colour augmentation (docs/parity.md 4.13).
  d.ddd_aug = 0.5
  # ddd: 0 (official) trains on the whole input_hw canvas; N > 0 on a random window N columns
  # wide of it, at the canvas's scale (depth stays supervised; experiments/ddd.md, run G).
  d.ddd_crop_width = 0
  # Normalisation: official weights expect BGR and the COCO statistics.
  d.channel_order = 'BGR'
  d.mean = COCO_MEAN_BGR
  d.std = COCO_STD_BGR
  # Evaluation input: 'keep_res' pads each image to a multiple of (eval_pad + 1), centred
  # (official, used for every reported number); 'fixed_res' warps to eval_size x eval_size;
  # 'fit_width' (official ddd test) scales the image to the width of the input_hw canvas
  # (input_size square when input_hw is ()), centred: a zero border or a crop above and below.
  d.eval_mode = 'keep_res'
  d.eval_pad = 31
  d.eval_size = 512
  # Unused since TFDS training reads by random access (index shuffle, no buffer); kept so that
  # configs and command lines that set it still load.
  d.shuffle_buffer = 1024
  # Training skips unreadable images and annotations failing validation (logged, counted); the
  # run stops once skipped image reads pass this fraction of max(reads, training images), or
  # skipped annotations this fraction of the annotations (docs: experiments/fault_tolerance.md).
  d.max_skip_fraction = 0.01
  d.num_parallel_calls = -1  # tf.data.AUTOTUNE
  d.prefetch = 2
  return d


def input_hw(data_cfg) -> tuple[int, int]:
  """The training canvas (h, w): ``data.input_hw``, or ``data.input_size`` square when ()."""
  hw = tuple(data_cfg.get('input_hw', ()) or ())
  if hw:
    return int(hw[0]), int(hw[1])
  return int(data_cfg.input_size), int(data_cfg.input_size)


def eval_canvas_size(data_cfg) -> int | tuple[int, int]:
  """The ``size`` argument of the letterbox functions (``boxes.canvas_hw``): the 'fit_width'
  canvas :func:`input_hw`, else ``data.eval_size`` (the 'fixed_res' side)."""
  if data_cfg.eval_mode == 'fit_width':
    return input_hw(data_cfg)
  return int(data_cfg.eval_size)
