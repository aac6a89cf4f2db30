r"""CenterNet DLA-34 (DCNv2 neck) from scratch on the built-in shapes data set, on a CPU.

  python -m centernet_jax.train --config configs/shapes_dla34.py --workdir runs/shapes_dla34

The same data, augmentation and optimiser as configs/shapes_resnet18.py (96 px training input,
batch 16, Adam with warm-up and cosine decay from 2e-3, clipping 10) with the official DLA-34
model; the number of steps is set so that training takes about the time of the ResNet-18 demo
on the 2-core CPU machine (DLA-34 with deformable convolutions runs at about 7.4 images/s there
against 30 for ResNet-18). Expected result: see experiments/shapes_dla34.md.
"""

from centernet_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.shapes_cpu_config(task='ctdet', num_steps=550, warmup_steps=50, eval_every=275)
  c.model.arch = 'dla'
  c.model.depth = 34
  c.model.head_conv = 256  # official default for DLA
  c.model.head_init = 'fill_fc'  # as measured (resnet_dcn style); official DLA: 'dla'
  c.model.deconv_init = 'bilinear'
  c.train.log_every = 25
  return c
