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


def make_train_step_from_objective(
    model: nn.Module, tx: optax.GradientTransformation,
    make_targets: Callable[[dict], dict],
    loss: Callable[[list, dict], tuple[jax.Array, dict]],
    count_objects: Callable[[dict], jax.Array],
    schedule: optax.Schedule | None = None
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The update step shared by every task.

  Args:
    model: the detector (``apply`` returns a list over stacks of head dicts).
    tx: optax transformation.
    make_targets: batch -> targets, rendered on device outside the differentiated function.
    loss: (outputs over stacks, targets) -> (total, dict of float32 scalars incl. 'loss').
    count_objects: targets -> number of supervised objects (a metric).
    schedule: the learning-rate schedule, logged as 'lr' when given.
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
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(parts)
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['num_objects'] = count_objects(tgt)
    if schedule is not None:
      metrics['lr'] = jnp.asarray(schedule(state.step), jnp.float32)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, metrics

  return train_step


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

  def make_targets(batch):
    _, height, width, _ = batch['image'].shape
    out_hw = (height // down_ratio, width // down_ratio)
    return targets.ctdet_targets(
        batch['boxes'] / down_ratio, batch['labels'], batch['mask'],
        num_classes=num_classes, output_hw=out_hw, min_overlap=min_overlap)

  def loss(outputs, tgt):
    return losses.ctdet_loss(outputs, tgt, hm_weight=hm_weight, wh_weight=wh_weight,
                             off_weight=off_weight)

  return make_train_step_from_objective(model, tx, make_targets, loss,
                                        lambda tgt: tgt['reg_mask'].sum(), schedule)


def make_cornernet_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                              num_classes: int, down_ratio: int, min_overlap: float,
                              pull_weight: float, push_weight: float, regr_weight: float,
                              images_per_chunk: float | None = None,
                              schedule: optax.Schedule | None = None
                              ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Builds the CornerNet train step (same batch contract as ``make_train_step``).

  The output map is ``ceil(input / down_ratio)`` (511 -> 128, as the Hourglass computes it) and
  corners are placed at the official output/input ratio (128/511), not 1/down_ratio.
  ``images_per_chunk`` scales pull/push as the official per-GPU chunks do (see
  ``losses.cornernet_loss``; None: sums over the whole batch).
  """

  def make_targets(batch):
    _, height, width, _ = batch['image'].shape
    out_hw = (-(-height // down_ratio), -(-width // down_ratio))
    return targets.cornernet_targets(
        batch['boxes'], batch['labels'], batch['mask'], num_classes=num_classes,
        output_hw=out_hw, input_hw=(height, width), min_overlap=min_overlap)

  def loss(outputs, tgt):
    return losses.cornernet_loss(outputs, tgt, pull_weight=pull_weight,
                                 push_weight=push_weight, regr_weight=regr_weight,
                                 images_per_chunk=images_per_chunk)

  return make_train_step_from_objective(model, tx, make_targets, loss,
                                        lambda tgt: tgt['tag_mask'].sum(), schedule)


def make_predict_fn(model: nn.Module, *, K: int = 100, flip_test: bool = False,
                    nms: Callable[[dict], dict] | None = None
                    ) -> Callable[[dict, jax.Array], dict]:
  """Builds ``predict(variables, images) -> detections`` (model + decode, all on device).

  Args (of the returned function):
    variables: {'params', 'batch_stats'}.
    images: [B, H, W, 3] float32 normalised inputs.

  Args:
    model: a ctdet model.
    K: detections per image.
    flip_test: average the heatmaps and sizes of the image and its mirror (official).
    nms: optional detections -> detections (official ``--nms``: per-class soft-NMS).

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
    dets = decode.ctdet_decode(hm, wh, reg, K=K)
    return nms(dets) if nms is not None else dets

  return predict


def make_cornernet_predict_fn(model: nn.Module, *, K: int = 100, corner_K: int = 100,
                              num_dets: int = 1000, ae_threshold: float = 0.5,
                              flip_test: bool = True,
                              nms: Callable[[dict], dict] | None = None
                              ) -> Callable[[dict, jax.Array], dict]:
  """Builds CornerNet's ``predict(variables, images) -> detections`` (all on device).

  Official test (PARITY 4.9): sigmoid, 3x3 peaks, top ``corner_K`` corners per type, all
  pairs, top ``num_dets`` pairs; with ``flip_test`` the flipped image's pairs are mirrored back
  and appended; then ``nms`` (per-class soft-NMS and the top K across classes).

  Args:
    model: a CornerNet (outputs per stack: tl_heat, br_heat, tl_tag, br_tag, tl_regr, br_regr).
    K: detections kept after ``nms``.
    corner_K, num_dets, ae_threshold: pairing parameters.
    flip_test: also run the mirrored image (official: always).
    nms: detections -> detections (``decode.nms_top_k`` bound to its parameters). None returns
      every pair (``num_dets``, doubled with flip) for a caller that merges scales first.

  Returns (of the returned function): dict boxes [B, N, 4] xyxy in output-map coordinates,
  scores [B, N] (rejected pairs have score -1), classes [B, N] int32.
  """

  def predict(variables: dict, images: jax.Array) -> dict:
    if flip_test:
      images = jnp.concatenate([images, images[:, :, ::-1, :]], axis=0)
    out = model.apply(variables, images, train=False)[-1]
    out = {k: v.astype(jnp.float32) for k, v in out.items()}
    dets = decode.corner_decode(
        jax.nn.sigmoid(out['tl_heat']), jax.nn.sigmoid(out['br_heat']), out['tl_tag'],
        out['br_tag'], out['tl_regr'], out['br_regr'], K=corner_K, ae_threshold=ae_threshold,
        num_dets=num_dets)
    if flip_test:
      out_w = out['tl_heat'].shape[2]
      dets = decode.corner_merge_flip(dets, out_w)
    return nms(dets) if nms is not None else dets

  return predict
