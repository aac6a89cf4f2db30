r"""CenterNet DLA-34 (DCNv2 neck) on COCO 2017, the official ``ctdet_coco_dla_1x`` / ``_2x``.

Official recipes (experiments/ctdet_coco_dla_{1x,2x}.sh): batch 128, lr 5e-4, 512x512 input,
1x: 140 epochs with decays at 90 and 120 (zoo: 36.3 AP without test augmentation),
2x: 230 epochs with decays at 180 and 210 (zoo: 37.4 AP; 39.2 with flip).

  python -m centernet_jax.train --config configs/ctdet_dla34_coco.py:schedule=2x \
      --workdir runs/dla34_2x --config.data.source=tfds

The official run starts from ImageNet DLA-34 weights (``config.init``; weight conversion is the
"Import official PyTorch weights" issue). Expected result: not yet measured with this code base.
"""

from centernet_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, schedule='1x')
  c = config_lib.coco_ctdet_config(arch='dla', depth=34, batch_size=128, lr=5e-4)
  c.model.head_conv = 256  # official default for DLA
  c.model.head_init = 'dla'  # official pose_dla_dcn head init
  c.model.deconv_init = 'bilinear'
  if arg.schedule == '1x':
    c.train.num_epochs, c.optim.lr_steps = 140, (90, 120)
  elif arg.schedule == '2x':
    c.train.num_epochs, c.optim.lr_steps = 230, (180, 210)
  else:
    raise ValueError(f"schedule must be '1x' or '2x', got {arg.schedule!r}")
  return c
