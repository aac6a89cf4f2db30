r"""The demo: CenterNet ResNet-18 from scratch on the built-in shapes data set, on a CPU.

  make demo            # or:
  python -m centernet_jax.train --config configs/shapes_resnet18.py --workdir runs/demo

Recipe (experiments/shapes_demo.md has the curve, the machine and what did not work): train at
96 px (the 128 px images are scaled by the official random affine), batch 16, Adam with 100
warm-up steps and cosine decay from 2e-3, gradient clipping 10, official augmentation and
losses, and lateral skip connections in the up-sampling neck (``model.neck_skips``, not
official: the official neck learns small-object positions slowly from scratch at this size).
Expected result (measured on the 2-core CPU machine): COCO AP 0.69 on the shapes validation
split after 10 minutes, 0.76 at the end (2200 steps, about 20 minutes).
"""

from centernet_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.shapes_cpu_config(task='ctdet', num_steps=2200, warmup_steps=100, eval_every=550)
  c.model.arch = 'resnet'
  c.model.depth = 18
  c.model.head_conv = 64
  # Not official: lateral connections into the up-sampling neck. At 96 px the stride-32 map is
  # 3x3, and the official neck (no skips) learns small-object positions slowly from scratch.
  c.model.neck_skips = True
  return c
