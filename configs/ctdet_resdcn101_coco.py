r"""CenterNet ResNet-101 with DCNv2 up-convolutions on COCO 2017, official ``ctdet_coco_resdcn101``.

Official recipe (experiments/ctdet_coco_resdcn101.sh): batch 96, lr 3.75e-4, 140 epochs with
decays at 90 and 120, 512x512 input (zoo: 34.6 AP without test augmentation, 36.2 with flip).

  python -m centernet_jax.train --config configs/ctdet_resdcn101_coco.py --workdir runs/rdcn101 \
      --config.data.source=tfds

Expected result: not yet measured with this code base.
"""

from centernet_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.coco_ctdet_config(arch='resdcn', depth=101, batch_size=96, lr=3.75e-4)
  c.model.head_conv = 64
  c.model.head_init = 'fill_fc'
  c.model.deconv_init = 'bilinear'
  return c
