"""The jitted train step: compiled once, state donated, bfloat16 compute tracks float32."""

import functools

import jax
import numpy as np
import pytest

from centernet_jax import optim, sharding, steps
from centernet_jax.models import build_model
from tests.conftest import load_config


def _batch(seed, b=4, size=64, m=6, num_classes=3):
  rng = np.random.default_rng(seed)
  xy = rng.uniform(0, size * 0.7, (b, m, 2))
  wh = rng.uniform(4, size * 0.3, (b, m, 2))
  return {'image': rng.normal(size=(b, size, size, 3)).astype(np.float32),
          'boxes': np.concatenate([xy, xy + wh], -1).astype(np.float32),
          'labels': rng.integers(0, num_classes, (b, m)).astype(np.int32),
          'mask': (rng.uniform(size=(b, m)) < 0.8).astype(np.float32)}


def _setup(dtype):
  cfg = load_config('smoke')
  cfg.model.num_classes = 3
  cfg.model.dtype = dtype
  model = build_model(cfg.model)
  tx, schedule = optim.make_optimizer(cfg.optim, batch_size=4, steps_per_epoch=10,
                                      total_steps=10)
  mesh = sharding.make_mesh(jax.devices()[:1])
  rep, dat = sharding.replicated(mesh), sharding.data_sharding(mesh)
  state = jax.jit(functools.partial(steps.init_state, model, tx, image_shape=(1, 64, 64, 3)),
                  out_shardings=rep)(jax.random.PRNGKey(0))
  traces = []
  inner = steps.make_train_step(model, tx, num_classes=3, down_ratio=4, min_overlap=0.7,
                                hm_weight=1.0, wh_weight=0.1, off_weight=1.0, schedule=schedule)

  def counted(state, batch):
    traces.append(1)
    return inner(state, batch)

  step = jax.jit(counted, donate_argnums=(0,), in_shardings=(rep, dat),
                 out_shardings=(rep, rep))
  return state, step, traces, dat


def test_step_compiles_once_and_donates_state():
  state, step, traces, dat = _setup('float32')
  for i in range(4):
    old_params = state.params
    state, metrics = step(state, jax.device_put(_batch(i), dat))
    assert jax.tree.leaves(old_params)[0].is_deleted()  # donated, not copied
  jax.block_until_ready(metrics)
  assert len(traces) == 1
  assert int(state.step) == 4


@pytest.mark.parametrize('dtype', ['bfloat16'])
def test_low_precision_compute_tracks_float32(dtype):
  losses = {}
  for name in ('float32', dtype):
    state, step, _, dat = _setup(name)
    out = []
    batch = _batch(0)
    for _ in range(5):  # the same batch: the loss must fall in both precisions
      state, metrics = step(state, jax.device_put(batch, dat))
      out.append(float(metrics['loss']))
    losses[name] = out
    leaves = jax.tree.leaves(state.params) + jax.tree.leaves(state.batch_stats)
    assert all(x.dtype == np.float32 for x in leaves)  # params and statistics stay float32
  np.testing.assert_allclose(losses[dtype], losses['float32'], rtol=0.05)
  assert losses[dtype][-1] < losses[dtype][0]
