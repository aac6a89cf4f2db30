r"""CenterNet monocular 3D detection (ddd) with DLA-34 on KITTI, the official ``ddd_3dop``.

Official recipe (experiments/ddd_3dop.sh, docs/parity.md 4.13): DLA-34 with deformable
up-sampling, heads hm 3, dep 1, rot 8, dim 3, wh 2, reg 2 (head_conv 256), 1280 x 384 input,
batch 16, lr 1.25e-4 (Adam), 70 epochs with decays at 45 and 60 on the 3DOP split (3712 training
images), the random scale/shift of half the images (no flip, no colour), ImageNet statistics
applied to the BGR image as the official loader does; tested at one scale without flip, the
image scaled to the canvas width (``data.eval_mode='fit_width'``), detections above
``eval.peak_thresh`` = 0.2. Official zoo (KITTI val, 3DOP split, docs/parity.md 2.1): 2D AP
96.9 / 87.8 / 79.2 (easy / moderate / hard), AOS 93.9 / 84.3 / 75.7, BEV AP 34.0 / 30.5 / 26.8.

KITTI object data in the official layout (``training/image_2``, ``training/label_2``,
``training/calib``) and the split files (image ids, one per line):

  python -m centernet_jax.train --config ddd_dla34_kitti --workdir runs/ddd \
      --config.data.kitti_root=kitti --config.data.train_split=kitti/ImageSets/train.txt \
      --config.data.val_split=kitti/ImageSets/val.txt

Evaluating the converted zoo weights (``ddd_3dop.pth``; the heads are read from the file):

  python -m centernet_jax.convert --format centernet --arch dla_34 --input ddd_3dop.pth \
      --output runs/zoo_ddd_3dop
  python -m centernet_jax.evaluate --config ddd_dla34_kitti --workdir runs/zoo_ddd_3dop \
      --config.model.dtype=float32 --config.data.kitti_root=kitti \
      --config.data.train_split=kitti/ImageSets/train.txt \
      --config.data.val_split=kitti/ImageSets/val.txt

``metrics.json`` holds ``{2d,aos,bev,3d}_AP_{Car,Pedestrian,Cyclist}_{easy,moderate,hard}``
(40-point; ``_r11`` the 11-point values) and ``eval/step_<N>/kitti/`` the result files. The
minimum overlaps are the KITTI devkit's (``eval.kitti_overlaps='devkit'``); the official BEV
numbers above come from CenterNet's offline tool, whose table is ``'centernet'``.

Expected result: not yet measured with this code base (no KITTI and no GPU here).
"""

from centernet_jax import config_lib, tasks

KITTI_CLASSES = 3  # Pedestrian, Car, Cyclist (official order)


def get_config(arg=None):
  del arg
  c = config_lib.base_config('ddd')
  c.data.source = 'kitti'
  c.data.input_hw = (384, 1280)  # official input_h, input_w for KITTI
  c.data.input_size = 1280
  c.data.eval_mode = 'fit_width'  # official DddDetector.pre_process
  c.data.eval_size = 1280
  c.data.ddd_aug = 0.5  # official --aug_ddd
  c.data.scale = 0.4  # official --scale
  c.data.shift = 0.1  # official --shift
  c.data.flip = 0.0  # the official ddd loader does not flip
  c.data.color_aug = False
  c.data.channel_order = 'BGR'  # cv2.imread; the KITTI statistics are applied as listed
  c.data.mean = (0.485, 0.456, 0.406)  # official KITTI dataset class (ImageNet, RGB order)
  c.data.std = (0.229, 0.224, 0.225)
  c.model.arch = 'dla'
  c.model.depth = 34
  c.model.num_classes = KITTI_CLASSES
  c.model.heads = tasks.get('ddd').heads(KITTI_CLASSES, c)
  c.model.head_conv = 256  # official default for DLA
  c.model.head_init = 'dla'  # official head init: hm bias -2.19, the others N(0, 0.001)
  c.model.deconv_init = 'bilinear'
  c.train.batch_size = 16
  c.optim.lr = 1.25e-4
  c.train.num_epochs = 70
  c.optim.lr_steps = (45, 60)
  c.train.checkpoint_every = 2000
  c.train.eval_every = 5000
  c.eval.flip_test = False  # no test-time augmentation for ddd (official)
  return c
