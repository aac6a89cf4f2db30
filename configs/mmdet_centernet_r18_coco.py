r"""mmdetection CenterNet ResNet-18 (CTResNetNeck + CenterNetHead) on COCO 2017, for weights
converted from mmdetection (``python -m centernet_jax.convert --format mmdet``).

``:dcn=true`` (default) is ``centernet_resnet18_dcnv2_140e_coco`` (mmdet: 29.5 box AP, 30.9 with
flip); ``:dcn=false`` is ``centernet_resnet18_140e_coco`` (25.9 AP, metafile 26.0; 27.3 with flip).
Input follows mmdetection: RGB, ImageNet mean/std; evaluation pads each image to a multiple of
32 (mmdet pads ``(h + 1) | 31``, at most one pixel more).

  python -m centernet_jax.convert --format mmdet --arch resnet18_dcnv2 \
      --input centernet_resnet18_dcnv2_140e_coco_20210702_155131-c8cd631f.pth \
      --output runs/mmdet_r18_dcn
  python -m centernet_jax.evaluate --config configs/mmdet_centernet_r18_coco.py:dcn=true \
      --workdir runs/mmdet_r18_dcn --config.data.source=tfds

Fine-tuning from the converted weights (``config.init``; a head with another class count is
re-initialised) uses this project's Adam recipe (official CenterNet's), not mmdet's SGD one
(mmdet's README notes Adam with lr 5e-4 gives 29.1 AP for the DCN model)::

  python -m centernet_jax.train --config configs/mmdet_centernet_r18_coco.py --workdir runs/ft \
      --config.init=runs/mmdet_r18_dcn --config.data.source=coco_json ...

Expected result: not measured with this code base (no COCO on the development machine).
"""

from centernet_jax import config_lib

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, dcn=True)
  c = config_lib.coco_ctdet_config(arch='mmdet_resdcn' if arg.dcn else 'mmdet_resnet', depth=18,
                                   batch_size=128, lr=5e-4)
  c.model.head_conv = 64
  c.model.head_init = 'fill_fc'
  c.model.deconv_init = 'bilinear'
  c.data.channel_order = 'RGB'
  c.data.mean = IMAGENET_MEAN_RGB
  c.data.std = IMAGENET_STD_RGB
  return c
