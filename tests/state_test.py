"""The shared train step (state.py): compiled once, state donated, bfloat16 compute tracks
float32, and the learning rate applied is the one logged, schedule(state.step), even after
skipped non-finite updates (bug 2)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centernet_jax import config_lib, fault, optim, sharding, state, tasks
from centernet_jax.models import build_model
from centernet_jax.tasks import ctdet
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
  cfg = tasks.resolve_config(load_config('smoke'), 3)
  cfg.model.dtype = dtype
  model = build_model(cfg.model)
  tx, schedule = optim.make_optimizer(cfg.optim, batch_size=4, steps_per_epoch=10,
                                      total_steps=10)
  mesh = sharding.make_mesh(jax.devices()[:1])
  rep, dat = sharding.replicated(mesh), sharding.data_sharding(mesh)
  st = jax.jit(functools.partial(state.init_state, model, tx, image_shape=(1, 64, 64, 3)),
               out_shardings=rep)(jax.random.PRNGKey(0))
  traces = []
  inner = ctdet.make_train_step(cfg, model, tx, schedule)

  def counted(st, batch):
    traces.append(1)
    return inner(st, batch)

  step = jax.jit(counted, donate_argnums=(0,), in_shardings=(rep, dat),
                 out_shardings=(rep, rep))
  return st, step, traces, dat


def test_step_compiles_once_and_donates_state():
  st, step, traces, dat = _setup('float32')
  for i in range(4):
    old_params = st.params
    st, metrics = step(st, jax.device_put(_batch(i), dat))
    assert jax.tree.leaves(old_params)[0].is_deleted()  # donated, not copied
  jax.block_until_ready(metrics)
  assert len(traces) == 1
  assert int(st.step) == 4


@pytest.mark.parametrize('dtype', ['bfloat16'])
def test_low_precision_compute_tracks_float32(dtype):
  losses = {}
  for name in ('float32', dtype):
    st, step, _, dat = _setup(name)
    out = []
    batch = _batch(0)
    for _ in range(5):  # the same batch: the loss must fall in both precisions
      st, metrics = step(st, jax.device_put(batch, dat))
      out.append(float(metrics['loss']))
    losses[name] = out
    leaves = jax.tree.leaves(st.params) + jax.tree.leaves(st.batch_stats)
    assert all(x.dtype == np.float32 for x in leaves)  # params and statistics stay float32
  np.testing.assert_allclose(losses[dtype], losses['float32'], rtol=0.05)
  assert losses[dtype][-1] < losses[dtype][0]


class _Linear(nn.Module):
  """out = w * mean(image): with images of ones, d sum(out) / dw = 1 for every weight."""

  @nn.compact
  def __call__(self, images, train):
    w = self.param('w', nn.initializers.zeros, (4,))
    seen = self.variable('batch_stats', 'seen', jnp.zeros, ())
    if train:
      seen.value += 1
    return [{'out': w * jnp.mean(images)}]


def _linear_step(optim_kw):
  cfg = config_lib.base_config().optim
  cfg.lr = 1e-2
  cfg.lr_steps = (2,)  # 1e-2 at steps 0 and 1, 1e-3 from step 2
  cfg.lr_steps_unit = 'steps'
  for key, value in optim_kw.items():
    cfg[key] = value
  tx, schedule = optim.make_optimizer(cfg, batch_size=1, steps_per_epoch=1, total_steps=10)
  model = _Linear()
  st = state.init_state(model, tx, jax.random.PRNGKey(0), (1, 2, 2, 3))

  def loss(outputs, tgt):
    total = jnp.sum(outputs[-1]['out'])
    return total, {'loss': total}

  step = state.make_train_step_from_objective(model, tx, lambda batch: {}, loss,
                                              lambda tgt: jnp.zeros(()), schedule)
  return st, jax.jit(fault.guard_nonfinite(step)), schedule


@pytest.mark.parametrize('optim_kw', [{}, {'grad_clip': 0.5}, {'weight_decay': 0.05},
                                      {'grad_clip': 0.5, 'weight_decay': 0.05}])
def test_applied_lr_is_the_logged_lr_after_a_skipped_update(optim_kw):
  st, step, schedule = _linear_step(optim_kw)
  ones = {'image': np.ones((1, 2, 2, 3), np.float32)}
  nan = {'image': np.full((1, 2, 2, 3), np.nan, np.float32)}
  wd = optim_kw.get('weight_decay', 0.0)
  w0 = np.zeros(4, np.float32)
  st, m0 = step(st, ones)
  w1 = np.asarray(st.params['w'])
  st, m1 = step(st, nan)  # skipped: parameters and optimiser state are kept
  np.testing.assert_array_equal(np.asarray(st.params['w']), w1)
  st, m2 = step(st, ones)
  w2 = np.asarray(st.params['w'])
  assert [float(m['skipped_update']) for m in (m0, m1, m2)] == [0.0, 1.0, 0.0]
  assert int(st.step) == 3
  # Logged: the schedule at the state's step (step 2: after the decay).
  np.testing.assert_allclose([float(m['lr']) for m in (m0, m1, m2)],
                             [float(schedule(s)) for s in range(3)], rtol=1e-6)
  np.testing.assert_allclose(float(m2['lr']), 1e-3, rtol=1e-6)
  # Applied: with a constant gradient Adam's bias-corrected step is lr * g / |g| (clipping
  # rescales g, Adam normalises it away), plus lr * weight_decay * w for AdamW.
  for w_old, w_new, lr in ((w0, w1, float(m0['lr'])), (w1, w2, float(m2['lr']))):
    np.testing.assert_allclose(w_new - w_old, -lr * (1.0 + wd * w_old), rtol=1e-4)
  np.testing.assert_allclose(float(st.opt_state.hyperparams['learning_rate']), 1e-3, rtol=1e-6)


def test_schedule_is_required_with_an_injected_learning_rate():
  st, _, _ = _linear_step({})
  tx, _ = optim.make_optimizer(config_lib.base_config().optim, batch_size=1, steps_per_epoch=1,
                               total_steps=1)
  step = state.make_train_step_from_objective(
      _Linear(), tx, lambda batch: {}, lambda o, t: (jnp.sum(o[-1]['out']), {}),
      lambda tgt: jnp.zeros(()), schedule=None)
  with pytest.raises(ValueError, match='pass its schedule'):
    step(st, {'image': np.ones((1, 2, 2, 3), np.float32)})
