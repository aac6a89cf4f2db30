r"""CornerNet (the tiny two-stack hourglass, corner pooling) on the built-in shapes data, on a CPU.

  python -m centernet_jax.train --config configs/shapes_cornernet.py --workdir runs/cornernet

The same data, augmentation and optimiser as configs/shapes_resnet18.py (96 px training input,
batch 16, Adam with warm-up and cosine decay from 2e-3, clipping 10), 2000 steps, the tiny
two-stack hourglass at twice its channels (``model.width`` 2), with CornerNet's losses
(gaussian overlap 0.3, pull/push 0.1) and its official test: the flipped image is always added,
top 100 corners, 1000 pairs, per-class Gaussian soft-NMS, top 100. The tiny hourglass needs
inputs that are multiples of 32, so evaluation pads to 32 (``eval_pad`` 31) rather than 128.
Expected result: see experiments/shapes_cornernet.md.
"""

from centernet_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.shapes_cpu_config(task='cornernet', num_steps=2000, warmup_steps=100,
                                   eval_every=500)
  c.model.arch = 'cornernet_tiny'
  # Twice the tiny stack's channels (16-32 -> 32-64, pool branches 16): at width 1 the model
  # could not tell five shapes apart on a second data set (experiments/shapes_cornernet.md).
  c.model.width = 2
  c.model.head_conv = 32  # as wide as the stack (official CornerNet: 256, the stack width)
  c.loss.min_overlap = 0.3  # official gaussian_iou (the cornernet default)
  c.data.eval_pad = 31
  c.eval.flip_test = True
  c.train.log_every = 25
  return c
