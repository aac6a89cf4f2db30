r"""CenterNet ResNet-101 (no DCN) on COCO 2017, official ``ctdet_coco_resdcn101`` schedule.

Official recipe (experiments/ctdet_coco_resdcn101.sh): batch 96, lr 3.75e-4, 140 epochs with
decays at 90 and 120, 512x512 input. The zoo reports 34.6 AP for ResNet-101 *with* DCN (no test
augmentation); the DCN variant comes with issue "DLA-34 and ResNet-DCN backbones".

  python -m centernet_jax.train --config configs/ctdet_resnet101_coco.py --workdir runs/r101 \
      --config.data.source=tfds

Expected result: not yet measured with this code base (needs a multi-GPU machine).
"""

from centernet_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.coco_ctdet_config(arch='resnet', depth=101, batch_size=96, lr=3.75e-4)
  c.model.head_conv = 64
  return c
