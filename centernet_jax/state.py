"""The training state and the update step every task shares (pure; no I/O, no config objects).

A task supplies its objective (targets rendered on device from the padded boxes, the loss over
the model's stacks, the count of supervised objects) and
:func:`make_train_step_from_objective` turns it into ``train_step(state, batch) -> (state,
metrics)``. The caller jits it with shardings (``train.py``); under a sharded batch, BatchNorm
and the loss normalisers see the global batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from centernet_jax import optim


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training.

  Attributes:
    step: int32 scalar, number of train steps taken (skipped non-finite updates included: the
      learning rate follows it, see :func:`make_train_step_from_objective`).
    params: float32 parameters.
    batch_stats: BatchNorm running statistics.
    opt_state: optax state.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def init_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
               image_shape: tuple[int, int, int, int]) -> TrainState:
  """Initialises a TrainState (jit-able; pass ``image_shape`` as a static tuple).

  Args:
    model: the detector.
    tx: the optimiser (:func:`optim.make_optimizer`, or any optax transformation).
    rng: PRNG key for the parameters.
    image_shape: (B, H, W, 3) of the dummy input that sizes the variables.

  Returns:
    The state at step 0.
  """
  variables = model.init(rng, jnp.zeros(image_shape, jnp.float32), train=False)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params))


def make_train_step_from_objective(
    model: nn.Module, tx: optax.GradientTransformation,
    make_targets: Callable[[dict], dict],
    loss: Callable[[list, dict], tuple[jax.Array, dict]],
    count_objects: Callable[[dict], jax.Array],
    schedule: optax.Schedule | None = None
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The update step shared by every task.

  The learning rate applied is ``schedule(state.step)``, written into the optimiser state
  before the update (:func:`optim.set_learning_rate`), and logged as ``lr``: the optimiser's
  own update count lags ``state.step`` after skipped non-finite updates, so a schedule
  evaluated on it would apply another rate than the one logged and shift the decays.

  Args:
    model: the detector (``apply`` returns a list over stacks of head dicts).
    tx: optax transformation; from :func:`optim.make_optimizer` when ``schedule`` is given.
    make_targets: batch -> targets, rendered on device outside the differentiated function.
    loss: (outputs over stacks, targets) -> (total, dict of float32 scalars incl. 'loss').
    count_objects: targets -> number of supervised objects (a metric).
    schedule: the learning-rate schedule of ``tx`` (None: ``tx`` carries a fixed rate).

  Returns:
    ``train_step(state, batch) -> (state, metrics)`` (not jitted); metrics are float32
    scalars: the loss terms, ``grad_norm``, ``num_objects`` and (with a schedule) ``lr``.
  """

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    tgt = make_targets(batch)

    def loss_fn(params):
      outputs, new_vars = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=True,
          mutable=['batch_stats'])
      total, parts = loss(outputs, tgt)
      return total, (parts, new_vars['batch_stats'])

    (_, (parts, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    opt_state = state.opt_state
    if schedule is not None:
      lr = jnp.asarray(schedule(state.step), jnp.float32)
      opt_state = optim.set_learning_rate(opt_state, lr)
    elif optim.has_learning_rate(opt_state):
      raise ValueError('the optimiser from optim.make_optimizer takes its learning rate from '
                       'the train step: pass its schedule to make_train_step')
    updates, opt_state = tx.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(parts)
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['num_objects'] = count_objects(tgt)
    if schedule is not None:
      metrics['lr'] = lr
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, metrics

  return train_step
