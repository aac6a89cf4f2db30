"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 (see multidevice_test.py).

Builds the smoke model, runs one jitted train step on a mesh of 1 device and on a mesh of 8
devices with the same global batch, and compares losses and updated parameters.
"""

import os
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from centernet_jax import optim, sharding, steps  # noqa: E402
from centernet_jax.models import build_model  # noqa: E402
from tests.conftest import load_config  # noqa: E402


def run(devices, batch, cfg):
  mesh = sharding.make_mesh(devices)
  rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  model = build_model(cfg.model)
  tx, sched = optim.make_optimizer(cfg.optim, batch_size=8, steps_per_epoch=10, total_steps=10)
  state = jax.jit(lambda r: steps.init_state(model, tx, r, (1, 64, 64, 3)),
                  out_shardings=rep)(jax.random.PRNGKey(0))
  step = jax.jit(steps.make_train_step(model, tx, num_classes=cfg.model.num_classes, down_ratio=4,
                                       min_overlap=0.7, hm_weight=1, wh_weight=0.1, off_weight=1,
                                       schedule=sched),
                 in_shardings=(rep, dat), out_shardings=(rep, rep))
  batch = jax.device_put(batch, dat)
  state, metrics = step(state, batch)
  return jax.device_get((state.params, state.batch_stats, metrics))


def main():
  assert jax.device_count() == 8, jax.devices()
  cfg = load_config('smoke')
  cfg.model.num_classes = 3
  rng = np.random.default_rng(0)
  b, m = 8, 5
  xy = rng.uniform(0, 40, (b, m, 2))
  wh = rng.uniform(4, 24, (b, m, 2))
  batch = {
      'image': rng.normal(size=(b, 64, 64, 3)).astype(np.float32),
      'boxes': np.concatenate([xy, xy + wh], -1).astype(np.float32),
      'labels': rng.integers(0, 3, (b, m)).astype(np.int32),
      'mask': (rng.uniform(size=(b, m)) < 0.8).astype(np.float32),
  }
  p1, s1, m1 = run(jax.devices()[:1], batch, cfg)
  p8, s8, m8 = run(jax.devices(), batch, cfg)
  print('loss 1 device', m1['loss'], '8 devices', m8['loss'])
  np.testing.assert_allclose(m1['loss'], m8['loss'], rtol=1e-5)
  for a, c in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p8, s8)), strict=True):
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6)
  print('SAME')


if __name__ == '__main__':
  main()
