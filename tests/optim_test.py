"""Learning-rate rules and schedules (config.optim) against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from centernet_jax import config_lib, optim


def _cfg(**kw):
  c = config_lib.base_config().optim
  for k, v in kw.items():
    c[k] = v
  return c


@pytest.mark.parametrize('lr,batch,expected', [
    (-1.0, 32, 1.25e-4),   # official rule: 1.25e-4 per 32 images
    (-1.0, 114, 1.25e-4 * 114 / 32),
    (5e-4, 114, 5e-4),     # an explicit lr wins
])
def test_learning_rate_rule(lr, batch, expected):
  assert optim.learning_rate(_cfg(lr=lr), batch) == pytest.approx(expected)


@pytest.mark.parametrize('unit,lr_steps,steps_per_epoch,probe', [
    # (step, expected factor of the peak)
    ('epochs', (90, 120), 10, [(0, 1.0), (899, 1.0), (900, 0.1), (1199, 0.1), (1200, 0.01)]),
    ('steps', (450,), 7, [(0, 1.0), (449, 1.0), (450, 0.1), (499, 0.1)]),
])
def test_step_schedule(unit, lr_steps, steps_per_epoch, probe):
  cfg = _cfg(lr=2.5e-4, lr_steps=lr_steps, lr_steps_unit=unit)
  sched = optim.make_schedule(cfg, batch_size=8, steps_per_epoch=steps_per_epoch,
                              total_steps=1500)
  for step, factor in probe:
    np.testing.assert_allclose(float(sched(step)), 2.5e-4 * factor, rtol=1e-5, err_msg=str(step))


def test_warmup_keeps_decay_positions():
  cfg = _cfg(lr=1e-3, lr_steps=(100,), lr_steps_unit='steps', warmup_steps=10)
  sched = optim.make_schedule(cfg, batch_size=8, steps_per_epoch=1, total_steps=200)
  np.testing.assert_allclose(float(sched(0)), 1e-4, rtol=1e-5)
  np.testing.assert_allclose(float(sched(50)), 1e-3, rtol=1e-5)
  np.testing.assert_allclose(float(sched(99)), 1e-3, rtol=1e-5)
  np.testing.assert_allclose(float(sched(100)), 1e-4, rtol=1e-5)  # the decay stays at step 100


def test_cosine_ends_at_zero():
  cfg = _cfg(lr=1e-3, schedule='cosine', warmup_steps=0)
  sched = optim.make_schedule(cfg, batch_size=8, steps_per_epoch=1, total_steps=100)
  np.testing.assert_allclose(float(sched(0)), 1e-3, rtol=1e-5)
  np.testing.assert_allclose(float(sched(50)), 0.5e-3, rtol=1e-4)
  assert float(sched(100)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize('field,value,message', [
    ('schedule', 'poly', 'config.optim.schedule'),
    ('lr_steps_unit', 'iterations', 'config.optim.lr_steps_unit'),
])
def test_bad_schedule_fields_are_named(field, value, message):
  with pytest.raises(ValueError, match=message):
    optim.make_schedule(_cfg(**{field: value}), batch_size=8, steps_per_epoch=1, total_steps=10)


@pytest.mark.parametrize('optim_kw', [
    {}, {'grad_clip': 0.1}, {'weight_decay': 1e-2},
    {'grad_clip': 0.1, 'weight_decay': 1e-2, 'schedule': 'cosine', 'warmup_steps': 3},
])
def test_injected_lr_is_optax_schedule_bit_for_bit_without_skips(optim_kw):
  """Setting the lr from schedule(step) before each update is the plain optax chain driven by
  its own count (the numbers of every run without skipped updates stay the same)."""
  cfg = _cfg(lr=1e-3, lr_steps=(2, 4), lr_steps_unit='steps', **optim_kw)
  tx, schedule = optim.make_optimizer(cfg, batch_size=8, steps_per_epoch=1, total_steps=6)
  parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
  parts.append(optax.adamw(schedule, weight_decay=cfg.weight_decay) if cfg.weight_decay > 0
               else optax.adam(schedule))
  reference = optax.chain(*parts)
  rng = np.random.default_rng(0)
  params = {'a': jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), 'b': jnp.zeros(4)}
  ours, theirs = dict(params), dict(params)
  s_ours, s_theirs = tx.init(ours), reference.init(theirs)
  for step in range(6):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    s_ours = optim.set_learning_rate(s_ours, schedule(step))
    u_ours, s_ours = tx.update(grads, s_ours, ours)
    u_theirs, s_theirs = reference.update(grads, s_theirs, theirs)
    ours, theirs = optax.apply_updates(ours, u_ours), optax.apply_updates(theirs, u_theirs)
    for key in params:
      np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(theirs[key]))


def test_set_learning_rate_needs_an_injected_rate():
  tx, _ = optim.make_optimizer(_cfg(lr=1e-3), batch_size=8, steps_per_epoch=1, total_steps=1)
  opt_state = tx.init({'w': jnp.zeros(2)})
  assert optim.has_learning_rate(opt_state)
  new = optim.set_learning_rate(opt_state, 5e-4)
  assert float(new.hyperparams['learning_rate']) == pytest.approx(5e-4)
  assert float(opt_state.hyperparams['learning_rate']) == pytest.approx(1e-3)  # not modified
  plain = optax.adam(1e-3).init({'w': jnp.zeros(2)})
  assert not optim.has_learning_rate(plain)
  with pytest.raises(ValueError, match='make_optimizer'):
    optim.set_learning_rate(plain, 1e-3)
