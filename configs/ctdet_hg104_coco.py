r"""CenterNet on Hourglass-104 on COCO 2017, the official ``ctdet_coco_hg``.

Official recipe (experiments/ctdet_coco_hg.sh): batch 24, lr 2.5e-4, 512x512 input, 50 epochs
with a decay at 40; keep-resolution evaluation pads to a multiple of 128 (``--pad 127``). Zoo:
40.3 AP without test augmentation, 42.2 with flip, 45.1 with flip and multi-scale
(``:test=flip`` / ``:test=multiscale`` below). The official run starts from the ExtremeNet
Hourglass weights (``config.init`` from converted weights).

  python -m centernet_jax.train --config configs/ctdet_hg104_coco.py --workdir runs/hg104 \
      --config.data.source=tfds
  python -m centernet_jax.evaluate --config configs/ctdet_hg104_coco.py:test=multiscale \
      --workdir runs/hg104

Expected result: not yet measured with this code base.
"""

from centernet_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, test='single')
  c = config_lib.coco_ctdet_config(arch='hourglass', depth=104, batch_size=24, lr=2.5e-4)
  c.model.head_conv = 256  # official: the hourglass heads are as wide as the stack
  c.train.num_epochs = 50
  c.optim.lr_steps = (40,)
  c.data.eval_pad = 127  # official --pad 127 for hourglass: inputs are multiples of 128
  if arg.test == 'flip':
    c.eval.flip_test = True
  elif arg.test == 'multiscale':
    c.eval.flip_test = True
    c.eval.test_scales = (0.5, 0.75, 1.0, 1.25, 1.5)
  elif arg.test != 'single':
    raise ValueError(f"test must be 'single', 'flip' or 'multiscale', got {arg.test!r}")
  return c
