"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 (see multidevice_test.py).

Builds the smoke model, runs one jitted train step on a mesh of 1 device and on a mesh of 8
devices with the same global batch, and compares losses and updated parameters. Then checks that
the stop flags of ``fault.with_stop_flags`` are summed over the devices and add no all-reduce to
the step (XLA merges theirs into the gradients'), which is what makes the multi-host agreement
free.
"""

import os
import re
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from centernet_jax import fault, models, optim, sharding, state, tasks  # noqa: E402
from tests.conftest import load_config  # noqa: E402


def run(devices, batch, cfg):
  mesh = sharding.make_mesh(devices)
  rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  model = models.build_model(cfg.model)
  tx, sched = optim.make_optimizer(cfg.optim, batch_size=8, steps_per_epoch=10, total_steps=10)
  train_state = jax.jit(lambda r: state.init_state(model, tx, r, (1, 64, 64, 3)),
                        out_shardings=rep)(jax.random.PRNGKey(0))
  step = jax.jit(tasks.get(cfg.task).make_train_step(cfg, model, tx, sched),
                 in_shardings=(rep, dat), out_shardings=(rep, rep))
  batch = jax.device_put(batch, dat)
  train_state, metrics = step(train_state, batch)
  return jax.device_get((train_state.params, train_state.batch_stats, metrics))


def _all_reduces(compiled) -> int:
  return len(re.findall(r'= [^\n]*? all-reduce(?:-start)?\(', compiled.as_text()))


def check_stop_flags(batch, cfg):
  mesh = sharding.make_mesh(jax.devices())
  rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  model = models.build_model(cfg.model)
  tx, sched = optim.make_optimizer(cfg.optim, batch_size=8, steps_per_epoch=10, total_steps=10)
  train_state = jax.jit(lambda r: state.init_state(model, tx, r, (1, 64, 64, 3)),
                        out_shardings=rep)(jax.random.PRNGKey(0))
  train_step = tasks.get(cfg.task).make_train_step(cfg, model, tx, sched)
  batch = jax.device_put(batch, dat)
  flags = np.zeros((8, 3), np.float32)
  flags[5, 2] = 1  # the process owning device 5 failed to read its input
  flags = jax.device_put(flags, dat)
  plain = jax.jit(train_step, in_shardings=(rep, dat), out_shardings=(rep, rep))
  flagged = jax.jit(fault.with_stop_flags(train_step), in_shardings=(rep, dat, dat),
                    out_shardings=(rep, rep, rep))
  n_plain = _all_reduces(plain.lower(train_state, batch).compile())
  n_flagged = _all_reduces(flagged.lower(train_state, batch, flags).compile())
  print('all-reduces: step', n_plain, 'step with stop flags', n_flagged)
  assert n_plain > 0 and n_flagged == n_plain
  _, _, agreed = flagged(train_state, batch, flags)
  np.testing.assert_array_equal(jax.device_get(agreed), [0, 0, 1])
  print('FLAGS MERGED')


def check_matmul_grad():
  """layers.conv_matmul_grad (the CPU kernel gradient as per-tap matmuls) on a batch sharded over
  the 8 devices: the same value and gradients as XLA's conv on one device."""
  from centernet_jax.models import layers  # noqa: PLC0415
  rng = np.random.default_rng(1)
  x = rng.normal(size=(8, 12, 12, 4)).astype(np.float32)
  k = rng.normal(size=(3, 3, 4, 8)).astype(np.float32)
  g = rng.normal(size=(8, 6, 6, 8)).astype(np.float32)
  pad = ((1, 1), (1, 1))

  def loss(conv):
    return lambda x_, k_, g_: jax.numpy.sum(conv(x_, k_) * g_)

  def xla(x_, k_):
    return jax.lax.conv_general_dilated(x_, k_, (2, 2), pad,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  ref = jax.jit(jax.value_and_grad(loss(xla), argnums=(0, 1)))(x, k, g)
  mesh = sharding.make_mesh(jax.devices())
  dat = NamedSharding(mesh, P('data'))
  got = jax.jit(jax.value_and_grad(loss(lambda x_, k_: layers.conv_matmul_grad(
      x_, k_, (2, 2), pad)), argnums=(0, 1)))(*jax.device_put((x, k, g), (dat, None, dat)))
  assert len(got[1][0].sharding.device_set) == 8, got[1][0].sharding
  for a, c in zip(jax.tree.leaves(ref), jax.tree.leaves(got), strict=True):
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-4)
  print('MATMUL GRAD SHARDED')


def main():
  assert jax.device_count() == 8, jax.devices()
  cfg = tasks.resolve_config(load_config('smoke'), 3)  # ctdet, 3 classes
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
  check_stop_flags(batch, cfg)
  check_matmul_grad()


if __name__ == '__main__':
  main()
