"""Optimiser and learning-rate schedule from ``config.optim``.

Official CenterNet: Adam without weight decay, lr = 1.25e-4 per 32 images scaled linearly with
the batch, multiplied by 0.1 at each epoch of ``lr_steps``; no warm-up, no clipping.
"""

from __future__ import annotations

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
  """Returns (optax chain, schedule)."""
  schedule = make_schedule(optim_cfg, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                           total_steps=total_steps)
  parts = []
  if optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  if optim_cfg.weight_decay > 0:
    parts.append(optax.adamw(schedule, weight_decay=optim_cfg.weight_decay))
  else:
    parts.append(optax.adam(schedule))
  return optax.chain(*parts), schedule
