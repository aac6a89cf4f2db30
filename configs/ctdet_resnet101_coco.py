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
  c = config_lib.base_config()
  c.data.source = 'tfds'
  c.data.input_size = 512
  c.data.train_on_crowd = True  # official behaviour
  c.model.arch = 'resnet'
  c.model.depth = 101
  c.model.head_conv = 64
  c.model.dtype = 'bfloat16'
  c.train.batch_size = 96
  c.optim.lr = 3.75e-4
  c.train.num_epochs = 140
  c.optim.lr_steps = (90, 120)
  c.train.checkpoint_every = 5000
  c.train.eval_every = 50000
  return c
