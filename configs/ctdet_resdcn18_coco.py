r"""CenterNet ResNet-18 with DCNv2 up-convolutions on COCO 2017, official ``ctdet_coco_resdcn18``.

Official recipe (experiments/ctdet_coco_resdcn18.sh): batch 114, lr 5e-4, 140 epochs with decays
at 90 and 120, 512x512 input (zoo: 28.1 AP without test augmentation, 30.0 with flip).

  python -m centernet_jax.train --config configs/ctdet_resdcn18_coco.py --workdir runs/rdcn18 \
      --config.data.source=tfds

Expected result: not yet measured with this code base.
"""

from centernet_jax import config_lib


def get_config(arg=None):
  del arg
  # Official 114 images at 5e-4; 112 splits over 8 and 16 devices, lr scaled to match.
  c = config_lib.coco_ctdet_config(arch='resdcn', depth=18, batch_size=112, lr=5e-4 * 112 / 114)
  c.model.head_conv = 64
  c.model.head_init = 'fill_fc'
  c.model.deconv_init = 'bilinear'
  return c
