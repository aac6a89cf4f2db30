"""Pure builders of the jitted train step and predict function (no I/O, no config objects).

``make_train_step`` returns ``train_step(state, batch) -> (state, metrics)``: targets are rendered
on device from the padded boxes, so the input pipeline only decodes and augments. The caller jits
it with shardings (``train.py``); under a sharded batch, BatchNorm and the loss normalisers see the
global batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from centernet_jax import decode, losses, targets


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training.

  Attributes:
    step: int32 scalar, number of optimiser updates applied.
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
  """Initialises a TrainState (jit-able; pass ``image_shape`` as a static tuple)."""
  variables = model.init(rng, jnp.zeros(image_shape, jnp.float32), train=False)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params))


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *, num_classes: int,
                    down_ratio: int, min_overlap: float, hm_weight: float, wh_weight: float,
                    off_weight: float, schedule: optax.Schedule | None = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Builds the CenterNet (ctdet) train step.

  The returned function takes a batch dict with
    image: [B, S, S, 3] float32 normalised input,
    boxes: [B, M, 4] float32 xyxy in input pixels (after augmentation, not clipped),
    labels: [B, M] int32 contiguous labels,
    mask: [B, M] float32, 1 for real objects,
  and returns the new state and a dict of float32 scalars (losses, grad norm, lr).
  """

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    _, height, width, _ = batch['image'].shape
    out_hw = (height // down_ratio, width // down_ratio)
    tgt = targets.ctdet_targets(
        batch['boxes'] / down_ratio, batch['labels'], batch['mask'],
        num_classes=num_classes, output_hw=out_hw, min_overlap=min_overlap)

    def loss_fn(params):
      outputs, new_vars = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=True,
          mutable=['batch_stats'])
      total, parts = losses.ctdet_loss(outputs, tgt, hm_weight=hm_weight, wh_weight=wh_weight,
                                       off_weight=off_weight)
      return total, (parts, new_vars['batch_stats'])

    (_, (parts, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(parts)
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['num_objects'] = tgt['reg_mask'].sum()
    if schedule is not None:
      metrics['lr'] = jnp.asarray(schedule(state.step), jnp.float32)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_predict_fn(model: nn.Module, *, K: int = 100, flip_test: bool = False
                    ) -> Callable[[dict, jax.Array], dict]:
  """Builds ``predict(variables, images) -> detections`` (model + decode, all on device).

  Args (of the returned function):
    variables: {'params', 'batch_stats'}.
    images: [B, H, W, 3] float32 normalised inputs.

  Returns (of the returned function): dict with boxes [B, K, 4] xyxy in output-map coordinates
  (the caller maps them back to original pixels with each image's affine), scores [B, K],
  classes [B, K] int32 contiguous labels.
  """

  def predict(variables: dict, images: jax.Array) -> dict:
    if flip_test:
      images = jnp.concatenate([images, images[:, :, ::-1, :]], axis=0)
    out = model.apply(variables, images, train=False)[-1]  # inference uses the last stack
    hm = jax.nn.sigmoid(out['hm'].astype(jnp.float32))
    wh = out['wh'].astype(jnp.float32)
    reg = out['reg'].astype(jnp.float32) if 'reg' in out else None
    if flip_test:
      hm, wh, reg = decode.merge_flip(hm, wh, reg)
    return decode.ctdet_decode(hm, wh, reg, K=K)

  return predict
