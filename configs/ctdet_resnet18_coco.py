r"""CenterNet ResNet-18 (official ``res_18``: msra_resnet, no DCN) on COCO 2017.

The official repository has no script or zoo entry for res_18 without DCN; this uses the
resdcn18 schedule (experiments/ctdet_coco_resdcn18.sh): batch 114, lr 5e-4, 140 epochs with
decays at 90 and 120, 512x512 input, Adam, no weight decay, BGR input with COCO statistics.
The DCN variant (zoo: 28.1 AP) is ``configs/ctdet_resdcn18_coco.py``.

  python -m centernet_jax.train --config configs/ctdet_resnet18_coco.py --workdir runs/r18 \
      --config.data.source=tfds

or on COCO-format folders:

  python -m centernet_jax.train --config configs/ctdet_resnet18_coco.py --workdir runs/r18 \
      --config.data.source=coco_json \
      --config.data.train_annotations=coco/annotations/instances_train2017.json \
      --config.data.train_images=coco/train2017 \
      --config.data.val_annotations=coco/annotations/instances_val2017.json \
      --config.data.val_images=coco/val2017

Expected result: not yet measured with this code base (needs a multi-GPU machine).
"""

from centernet_jax import config_lib


def get_config(arg=None):
  del arg
  # Official 114 images at 5e-4; 112 splits over 8 and 16 devices, lr scaled to match.
  c = config_lib.coco_ctdet_config(arch='resnet', depth=18, batch_size=112, lr=5e-4 * 112 / 114)
  c.model.head_conv = 64
  return c
