r"""Human pose (multi_pose) on the built-in synthetic keypoint set, on a CPU.

  python -m centernet_jax.train --config configs/shapes_pose.py --workdir runs/pose

The data set (``data.source='shapes_pose'``, generated on first use, COCO person-keypoints
format) holds stick figures with the 17 COCO joints whose left and right limbs differ in colour,
so the flip augmentation (mirror + left/right joint swap) is meaningful. Recipe: the shapes demo's
(ResNet-18 with lateral neck skips, Adam, warm-up and cosine decay, official augmentation) with the
official multi_pose heads, losses and decoding. experiments/pose.md has the measured curve.
"""

from centernet_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.shapes_cpu_config(task='multi_pose', num_steps=1000, warmup_steps=50,
                                   eval_every=250)
  c.data.source = 'shapes_pose'
  c.model.arch = 'resnet'
  c.model.depth = 18
  c.model.head_conv = 64
  c.model.neck_skips = True  # as the shapes demo (configs/shapes_resnet18.py)
  return c
