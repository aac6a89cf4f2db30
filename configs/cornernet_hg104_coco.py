r"""CornerNet (Hourglass-104, corner pooling) on COCO 2017, the official ``CornerNet.json``.

Official recipe (docs/parity.md 4.7-4.9): 511x511 input, 128x128 output, random crops of 511 * scale
pixels (scale 0.6 ... 1.3), gaussian overlap 0.3, Adam 2.5e-4 without weight decay, batch 49
(48 here, to split over 8 devices),
500k iterations with lr x0.1 at 450k; pull/push weights 0.1, offsets 1. Test: keep resolution
padded to a multiple of 128, always with the flipped image, top 100 corners, 1000 pairs,
per-class Gaussian soft-NMS (Nt 0.5, sigma 0.5, threshold 0.001), top 100. Paper: 40.5 AP
(test-dev, single scale + flip), 42.2 multi-scale (``:test=multiscale``).

  python -m centernet_jax.train --config configs/cornernet_hg104_coco.py --workdir runs/cornernet \
      --config.data.source=tfds

Expected result: not yet measured with this code base.
"""

from centernet_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, test='flip')
  # Official batch 49 (10 GPUs in chunks [4, 5 x 9]) does not split over 8 devices: 48 with the
  # official lr (mmdetection's CornerNet also uses 48).
  c = config_lib.coco_config(task='cornernet', arch='cornernet', depth=104, batch_size=48,
                             lr=2.5e-4)
  c.data.input_size = 511
  c.data.crop_base = 511  # official random_crop cuts a 511 * scale square
  c.data.eval_pad = 127
  c.model.head_conv = 256
  c.loss.min_overlap = 0.3  # official gaussian_iou (the cornernet default)
  c.loss.ae_images_per_chunk = 4.9  # official: batch 49 in chunks over 10 GPUs
  c.train.num_steps = 500_000
  c.optim.lr_steps = (450_000,)
  c.optim.lr_steps_unit = 'steps'
  c.train.checkpoint_every = 5000
  c.train.eval_every = 50_000
  c.eval.flip_test = True  # official test always adds the flipped image
  if arg.test == 'multiscale':
    c.eval.test_scales = (0.5, 0.75, 1.0, 1.25, 1.5)
  elif arg.test != 'flip':
    raise ValueError(f"test must be 'flip' or 'multiscale', got {arg.test!r}")
  return c
