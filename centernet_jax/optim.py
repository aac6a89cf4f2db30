"""Optimiser and learning-rate schedule from ``config.optim``.

Official CenterNet: Adam without weight decay, lr = 1.25e-4 per 32 images scaled linearly with
the batch, multiplied by 0.1 at each epoch of ``lr_steps``; no warm-up, no clipping.

The learning rate is a hyperparameter of the optimiser state (``optax.inject_hyperparams``) that
the train step sets to ``schedule(state.step)`` before each update (:func:`set_learning_rate`),
so the rate applied is the rate logged even after skipped non-finite updates, which advance
``state.step`` but not the optimiser's own count.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate(optim_cfg: ml_collections.ConfigDict, batch_size: int) -> float:
  """The peak learning rate: ``optim.lr`` if set, else the official linear rule."""
  if optim_cfg.lr > 0:
    return float(optim_cfg.lr)
  return float(optim_cfg.base_lr) * batch_size / float(optim_cfg.base_batch)


def make_schedule(optim_cfg: ml_collections.ConfigDict, *, batch_size: int,
                  steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """Step decays at epoch boundaries (official) or cosine, with optional linear warm-up."""
  peak = learning_rate(optim_cfg, batch_size)
  warmup = int(optim_cfg.warmup_steps)
  if optim_cfg.schedule == 'step':
    unit = optim_cfg.get('lr_steps_unit', 'epochs')
    if unit not in ('epochs', 'steps'):
      raise ValueError(f"config.optim.lr_steps_unit={unit!r}: use 'epochs' or 'steps'")
    per = steps_per_epoch if unit == 'epochs' else 1
    boundaries = {int(e * per): 0.1 for e in optim_cfg.lr_steps}
    main = optax.piecewise_constant_schedule(peak, boundaries)
    if warmup <= 0:
      return main
    ramp = optax.linear_schedule(peak / max(warmup, 1), peak, warmup)
    # join_schedules restarts the count; step decays keep their absolute positions.
    return optax.join_schedules([ramp, lambda s: main(s + warmup)], [warmup])
  if optim_cfg.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=peak / max(warmup, 1) if warmup else peak, peak_value=peak,
        warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1), end_value=0.0)
  raise ValueError(f"config.optim.schedule={optim_cfg.schedule!r}: use 'step' or 'cosine'")


def make_optimizer(optim_cfg: ml_collections.ConfigDict, *, batch_size: int,
                   steps_per_epoch: int, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optax chain, schedule): optional clipping, then Adam or AdamW.

  The chain's learning rate is injected (``opt_state.hyperparams['learning_rate']``, initially
  ``schedule(0)``); the train step sets it from the schedule at ``state.step`` before every
  update, so pass the schedule to the task's ``make_train_step``.
  """
  schedule = make_schedule(optim_cfg, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                           total_steps=total_steps)
  grad_clip = float(optim_cfg.grad_clip)
  weight_decay = float(optim_cfg.weight_decay)

  def chain(learning_rate):
    parts = []
    if grad_clip > 0:
      parts.append(optax.clip_by_global_norm(grad_clip))
    if weight_decay > 0:
      parts.append(optax.adamw(learning_rate, weight_decay=weight_decay))
    else:
      parts.append(optax.adam(learning_rate))
    return optax.chain(*parts)

  tx = optax.inject_hyperparams(chain)(learning_rate=float(schedule(0)))
  return tx, schedule


def has_learning_rate(opt_state: Any) -> bool:
  """Whether ``opt_state`` carries an injected learning rate (:func:`make_optimizer`'s)."""
  return 'learning_rate' in getattr(opt_state, 'hyperparams', {})


def set_learning_rate(opt_state: Any, lr: jax.Array) -> Any:
  """``opt_state`` with the injected learning rate the next update applies set to ``lr``.

  Args:
    opt_state: the state of :func:`make_optimizer`'s transformation.
    lr: float scalar.

  Returns:
    A new state (the input is not modified).
  """
  if not has_learning_rate(opt_state):
    raise ValueError('the optimiser state has no injected learning rate: build the optimiser '
                     'with optim.make_optimizer to train with a schedule')
  old = opt_state.hyperparams['learning_rate']
  hyperparams = dict(opt_state.hyperparams, learning_rate=jnp.asarray(lr, old.dtype))
  return opt_state._replace(hyperparams=hyperparams)
