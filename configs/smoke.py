r"""A tiny CenterNet for tests and quick checks: seconds per step on a CPU.

  python -m centernet_jax.train --config configs/smoke.py --workdir /tmp/smoke

Trains a narrow ResNet on a few 64 px shapes images; the result is meaningless (AP near 0), the
point is that every stage runs: data, targets, model, losses, checkpoints, evaluation.
"""

from centernet_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.base_config(task='ctdet')
  c.seed = 0
  c.data.source = 'shapes'
  c.data.shapes_num_train = 16
  c.data.shapes_num_val = 4
  c.data.shapes_image_size = 64
  c.data.input_size = 64
  c.data.max_objs = 8
  c.data.shuffle_buffer = 16
  c.model.arch = 'resnet_tiny'  # a narrow ResNet for tests (centernet_jax/models/resnet.py)
  c.model.head_conv = 8
  c.train.batch_size = 8
  c.train.num_steps = 4
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.train.keep_checkpoints = 5
  c.optim.lr = 1e-3
  c.eval.batch_size = 2
  c.eval.K = 10
  return c
