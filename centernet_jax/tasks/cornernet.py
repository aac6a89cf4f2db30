"""CornerNet (`cornernet`): corner heads, config, targets, loss, pairing, flip merge.

One module per task (registry: `tasks/__init__.py`). Official CornerNet `sample/coco.py:
kp_detection` (targets, docs/parity.md 4.7), `models/py_utils/kp_utils.py` and `kp.py: AELoss`
(loss, 4.8), `kp_utils.py: _decode` and `test/coco.py` (decoding and testing, 4.9).

Each object is its two corners: a Gaussian peak in the top-left and in the bottom-right class
heatmap (`tl_heat`, `br_heat`), a sub-pixel offset per corner (`tl_regr`, `br_regr`) and a
1-D embedding per corner (`tl_tag`, `br_tag`) that pulls an object's corners together and pushes
other objects' apart. The maths below is pure jnp; `add_config`, `make_train_step`,
`make_predict_fn` and `make_merge` bind it to a config.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from centernet_jax import decode, losses, models, nms, state
from centernet_jax.gaussian import corner_radius_table, draw_gaussians, lookup_radius

# Box results and COCO box evaluation are the same as ctdet's.
from centernet_jax.tasks.ctdet import coco_results, evaluate  # noqa: F401

NAME = 'cornernet'
# Detection arrays whose last axis holds (x, y) pairs in output-map coordinates.
POINT_KEYS = ('boxes',)


def add_config(c: ml_collections.ConfigDict) -> None:
  """Adds the CornerNet keys to the shared config sections (``config_lib.base_config``)."""
  c.loss.min_overlap = 0.3  # official CornerNet.json gaussian_iou (the code default is 0.7)
  # Associative-embedding pull/push and smooth-L1 offset weights (docs/parity.md 4.8).
  c.loss.pull_weight = 0.1
  c.loss.push_weight = 0.1
  c.loss.regr_weight = 1.0
  # The official CornerNet sums pull/push over the images of each GPU chunk and averages the
  # chunks (batch 49 on 10 GPUs: 4.9 images per chunk); 0 sums over the whole global batch.
  c.loss.ae_images_per_chunk = 0.0
  # Decoding (docs/parity.md 4.9): top-K corners per type, kept pairs, embedding threshold.
  c.eval.corner_K = 100
  c.eval.num_dets = 1000
  c.eval.ae_threshold = 0.5


def heads(num_classes: int, config: ml_collections.ConfigDict | None = None
          ) -> tuple[tuple[str, int], ...]:
  """The official CornerNet outputs: heatmaps (C), embeddings (1), offsets (2) per corner.

  ``config`` is unused (the heads depend on the class count only).
  """
  del config
  return (('tl_heat', num_classes), ('br_heat', num_classes), ('tl_tag', 1), ('br_tag', 1),
          ('tl_regr', 2), ('br_regr', 2))


def cornernet_targets(
    boxes: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    *,
    num_classes: int,
    output_hw: Sequence[int],
    input_hw: Sequence[int],
    min_overlap: float = 0.3,
    gaussian: bool = True,
    objects_per_chunk: int | None = None,
) -> dict[str, jax.Array]:
  """CornerNet corner targets (official `sample/coco.py: kp_detection`).

  Per object, as the official sampler: clip the box to the input image
  ([0, in_w - 1] x [0, in_h - 1]) and drop it unless its width and height stay
  > 0 (`_clip_detections`); scale corners by the per-axis ratio out / in (128 /
  511 for the official input, not 1 / 4); integer corner = trunc(corner * ratio);
  offset = corner * ratio - integer corner; radius = max(0, int(r)) with r the
  corrected radius of (ceil(h * ratio_h), ceil(w * ratio_w)) (both sides ceil'd,
  looked up in `corner_radius_table`), the same radius for both corners; the umich Gaussian (sigma =
  (2r + 1) / 6) max-merged into the class channel of the top-left and of the
  bottom-right heatmap (a single 1.0 at the corner with `gaussian=False`);
  tag = y * w_out + x.

  Unlike the official sampler (which packs the kept objects into the first n
  rows), rows stay aligned with the input objects and `tag_mask` marks the kept
  ones; the losses are sums over objects and pairs, so the order is irrelevant.
  Dropped and padded rows get tag 0, offset 0, tag_mask 0.

  Args:
    boxes: [B, M, 4] float xyxy in input pixels (after augmentation, unclipped).
    labels: [B, M] int32 class ids in [0, num_classes).
    mask: [B, M] bool or float; nonzero marks a real object.
    num_classes: C.
    output_hw: (h_out, w_out) of the output maps (128, 128 officially).
    input_hw: (h_in, w_in) of the network input (511, 511 officially).
    min_overlap: `gaussian_iou` of the radius (official config 0.3).
    gaussian: draw Gaussian bumps (official `gaussian_bump` True) or single pixels.
    objects_per_chunk: see `gaussian.draw_gaussians` (memory bound; same result). Each
      heatmap's temporary is 4 * B * chunk * h * w bytes (411 MB for 49 images of
      128 objects at 128 x 128 with chunk = M).

  Returns:
    dict with tl_heat, br_heat [B, h, w, C] float32; tl_regr, br_regr [B, M, 2]
    float32 (x, y) offsets; tl_tag, br_tag [B, M] int32 flat indices y * w + x;
    tag_mask [B, M] float32.
  """
  out_h, out_w = int(output_hw[0]), int(output_hw[1])
  in_h, in_w = int(input_hw[0]), int(input_hw[1])
  ratio_h = out_h / in_h
  ratio_w = out_w / in_w
  boxes = jnp.asarray(boxes, jnp.float32)
  x1 = jnp.clip(boxes[..., 0], 0, in_w - 1)
  y1 = jnp.clip(boxes[..., 1], 0, in_h - 1)
  x2 = jnp.clip(boxes[..., 2], 0, in_w - 1)
  y2 = jnp.clip(boxes[..., 3], 0, in_h - 1)
  valid = (jnp.asarray(mask) != 0) & (x2 - x1 > 0) & (y2 - y1 > 0)

  f_tl = jnp.stack([x1 * ratio_w, y1 * ratio_h], axis=-1)  # [B, M, 2] (x, y)
  f_br = jnp.stack([x2 * ratio_w, y2 * ratio_h], axis=-1)
  i_tl = f_tl.astype(jnp.int32)  # trunc; >= 0 after clipping
  i_br = f_br.astype(jnp.int32)

  if gaussian:
    # ceil(h * ratio) <= out_h after clipping, so the radius is a table lookup.
    radius = lookup_radius(corner_radius_table(out_h, out_w, min_overlap),
                           (y2 - y1) * ratio_h, (x2 - x1) * ratio_w)
  else:
    radius = jnp.zeros(valid.shape, jnp.int32)  # a radius-0 bump is the single 1.0 pixel
  draw = functools.partial(draw_gaussians, num_classes=num_classes, output_hw=(out_h, out_w),
                           objects_per_chunk=objects_per_chunk)
  tl_heat = draw(i_tl, radius, labels, valid)
  br_heat = draw(i_br, radius, labels, valid)

  def tag(i):
    return jnp.where(valid, i[..., 1] * out_w + i[..., 0], 0).astype(jnp.int32)

  def regr(f, i):  # jnp.where, not a product: NaN in padded rows cannot leak
    return jnp.where(valid[..., None], f - i.astype(jnp.float32), 0.0)

  return {'tl_heat': tl_heat, 'br_heat': br_heat,
          'tl_regr': regr(f_tl, i_tl), 'br_regr': regr(f_br, i_br),
          'tl_tag': tag(i_tl), 'br_tag': tag(i_br), 'tag_mask': valid.astype(jnp.float32)}


def cornernet_loss(
    outputs: Sequence[Mapping[str, jax.Array]],
    targets: Mapping[str, jax.Array],
    *,
    pull_weight: float = 0.1,
    push_weight: float = 0.1,
    regr_weight: float = 1.0,
    images_per_chunk: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CornerNet loss (official `AELoss`): every term summed over stacks, the total / num_stacks.

  total = (sum_s [focal(tl_s) + focal(br_s)] + pull_weight * sum_s pull_s
           + push_weight * sum_s push_s + regr_weight * sum_s [regr(tl_s) + regr(br_s)])
          / num_stacks,
  official weights pull 0.1, push 0.1, regr 1. The focal loss is `focal_loss`
  (clamped sigmoid, normalised by the positives of the batch passed in,
  separately for each corner type and stack); offsets use `losses.masked_smooth_l1_loss`.

  Pull and push are sums over images. The official code computes the loss per
  GPU chunk and averages the chunks, so its pull/push is a sum over one chunk's
  images (4 or 5 of the batch of 49 in `CornerNet.json`) while the focal and
  offset terms are batch-size free. `images_per_chunk` reproduces that scale
  with a global batch: pull and push are multiplied by images_per_chunk / B
  (4.9 for the official 49 images over 10 chunks); None sums over the whole
  batch (the official rule for a single chunk).

  Args:
    outputs: list over stacks of {'tl_heat', 'br_heat': [B, h, w, C] logits,
      'tl_tag', 'br_tag': [B, h, w, 1], 'tl_regr', 'br_regr': [B, h, w, 2]} (raw NHWC).
    targets: from `cornernet_targets`: tl_heat, br_heat [B, h, w, C],
      tl_tag, br_tag [B, M] int32, tl_regr, br_regr [B, M, 2], tag_mask [B, M].
    pull_weight: pull loss weight.
    push_weight: push loss weight.
    regr_weight: offset loss weight.
    images_per_chunk: see above.

  Returns:
    (total, {'focal_loss', 'pull_loss', 'push_loss', 'regr_loss', 'loss'}): float32
    scalars; the parts are unweighted and divided by num_stacks, so total =
    focal_loss + pull_weight * pull_loss + push_weight * push_loss + regr_weight * regr_loss.
  """
  num_stacks = len(outputs)
  mask = targets['tag_mask']
  batch = mask.shape[0]
  tag_scale = 1.0 if images_per_chunk is None else float(images_per_chunk) / batch
  zero = jnp.zeros((), jnp.float32)
  focal = pull = push = regr = zero
  for out in outputs:
    focal += losses.focal_loss(out['tl_heat'], targets['tl_heat'])
    focal += losses.focal_loss(out['br_heat'], targets['br_heat'])
    tl_tag = losses.gather_feat(out['tl_tag'], targets['tl_tag'])[..., 0]
    br_tag = losses.gather_feat(out['br_tag'], targets['br_tag'])[..., 0]
    p, q = losses.ae_loss(tl_tag, br_tag, mask)
    pull += p * tag_scale
    push += q * tag_scale
    regr += losses.masked_smooth_l1_loss(
        losses.gather_feat(out['tl_regr'], targets['tl_tag']), targets['tl_regr'], mask)
    regr += losses.masked_smooth_l1_loss(
        losses.gather_feat(out['br_regr'], targets['br_tag']), targets['br_regr'], mask)
  focal, pull, push, regr = (x / num_stacks for x in (focal, pull, push, regr))
  total = focal + pull_weight * pull + push_weight * push + regr_weight * regr
  parts = {'focal_loss': focal, 'pull_loss': pull, 'push_loss': push, 'regr_loss': regr,
           'loss': total}
  return total, parts


def corner_decode(
    tl_heat: jax.Array,
    br_heat: jax.Array,
    tl_tag: jax.Array,
    br_tag: jax.Array,
    tl_regr: jax.Array | None,
    br_regr: jax.Array | None,
    *,
    K: int = 100,
    kernel: int = 3,
    ae_threshold: float = 0.5,
    num_dets: int = 1000,
) -> dict[str, jax.Array]:
  """Pairs corners into boxes (official CornerNet `_decode`).

  Peaks (`kernel` max-pool), then the top K top-left and the top K
  bottom-right corners over classes and positions. Every one of the K x K
  pairs is a candidate box (tl_x + tl_off_x, tl_y + tl_off_y, br_x + br_off_x,
  br_y + br_off_y) scored (s_tl + s_br) / 2; the score is set to -1 (as the
  official) if the classes differ, |e_tl - e_br| > ae_threshold, br_x < tl_x or
  br_y < tl_y (after the offsets). The top `num_dets` pairs by score are kept,
  with the top-left class. Rejected pairs can be among them (score -1): drop
  them (`nms_top_k` ignores negative scores).

  Args:
    tl_heat: [B, h, w, C] top-left probabilities (sigmoid applied).
    br_heat: [B, h, w, C] bottom-right probabilities.
    tl_tag: [B, h, w, 1] top-left embeddings.
    br_tag: [B, h, w, 1] bottom-right embeddings.
    tl_regr: [B, h, w, 2] top-left (x, y) offsets, or None.
    br_regr: [B, h, w, 2] bottom-right offsets, or None (both or neither).
    K: corners of each type (official 100).
    kernel: peak max-pool window (official `nms_kernel` 3).
    ae_threshold: largest embedding distance of a pair (official 0.5).
    num_dets: pairs kept (official 1000), at most K * K.

  Returns:
    dict with boxes [B, num_dets, 4] float32 xyxy in output-map coordinates,
    scores [B, num_dets] float32 (descending; -1 for rejected pairs),
    classes [B, num_dets] int32, tl_scores and br_scores [B, num_dets] float32
    (the corner scores, as the official detections carry them).
  """
  if num_dets > K * K:
    raise ValueError(f'num_dets={num_dets} exceeds the K*K={K * K} corner pairs.')
  if (tl_regr is None) != (br_regr is None):
    raise ValueError('corner_decode needs both tl_regr and br_regr, or neither.')
  b = tl_heat.shape[0]
  tl_s, tl_inds, tl_cls, tl_ys, tl_xs = decode.topk(decode.peaks(tl_heat, kernel), K)
  br_s, br_inds, br_cls, br_ys, br_xs = decode.topk(decode.peaks(br_heat, kernel), K)
  if tl_regr is not None:
    tl_off = losses.gather_feat(tl_regr, tl_inds).astype(jnp.float32)
    br_off = losses.gather_feat(br_regr, br_inds).astype(jnp.float32)
    tl_xs, tl_ys = tl_xs + tl_off[..., 0], tl_ys + tl_off[..., 1]
    br_xs, br_ys = br_xs + br_off[..., 0], br_ys + br_off[..., 1]
  tl_e = losses.gather_feat(tl_tag, tl_inds)[..., 0].astype(jnp.float32)
  br_e = losses.gather_feat(br_tag, br_inds)[..., 0].astype(jnp.float32)

  # Pairs [B, K (tl), K (br)], flattened tl-major as the official view(batch, -1).
  tl_s, br_s = tl_s.astype(jnp.float32), br_s.astype(jnp.float32)
  pair_tl_s = jnp.broadcast_to(tl_s[:, :, None], (b, K, K))
  pair_br_s = jnp.broadcast_to(br_s[:, None, :], (b, K, K))
  scores = (pair_tl_s + pair_br_s) / 2
  reject = ((tl_cls[:, :, None] != br_cls[:, None, :])
            | (jnp.abs(tl_e[:, :, None] - br_e[:, None, :]) > ae_threshold)
            | (br_xs[:, None, :] < tl_xs[:, :, None])
            | (br_ys[:, None, :] < tl_ys[:, :, None]))
  scores = jnp.where(reject, -1.0, scores)
  boxes = jnp.stack(jnp.broadcast_arrays(tl_xs[:, :, None], tl_ys[:, :, None],
                                         br_xs[:, None, :], br_ys[:, None, :]), axis=-1)
  classes = jnp.broadcast_to(tl_cls[:, :, None], (b, K, K))

  top_scores, inds = jax.lax.top_k(scores.reshape(b, K * K), num_dets)
  take = lambda x: jnp.take_along_axis(x.reshape(b, K * K), inds, axis=1)
  boxes = jnp.take_along_axis(boxes.reshape(b, K * K, 4), inds[..., None], axis=1)
  return {'boxes': boxes, 'scores': top_scores, 'classes': take(classes).astype(jnp.int32),
          'tl_scores': take(pair_tl_s), 'br_scores': take(pair_br_s)}


def corner_merge_flip(dets: dict[str, jax.Array], output_w: int) -> dict[str, jax.Array]:
  """Merges CornerNet detections of a flip-test batch [x; flip_lr(x)] of size 2B.

  Official `test/coco.py`: the image and its mirror are decoded separately and
  their detections concatenated (2 * num_dets per image); the mirrored ones get
  x1, x2 <- out_w - x2, out_w - x1 (out_w, not out_w - 1, as the official).

  Args:
    dets: `corner_decode` outputs for the 2B images; rows B: are the mirrored images.
    output_w: width of the output map.

  Returns:
    dict with the same keys, each [B, 2 * num_dets, ...]: the image's detections
    first, then the un-mirrored detections of its flipped copy.
  """
  n = dets['boxes'].shape[0]
  if n % 2:
    raise ValueError(f'flip batch must have an even size, got {n}.')
  b = n // 2
  bx = dets['boxes'][b:]
  mirrored = dict(dets)
  mirrored['boxes'] = jnp.concatenate([dets['boxes'][:b], jnp.stack(
      [output_w - bx[..., 2], bx[..., 1], output_w - bx[..., 0], bx[..., 3]], axis=-1)])
  return {k: jnp.concatenate([v[:b], v[b:]], axis=1) for k, v in mirrored.items()}


def make_train_step(config: ml_collections.ConfigDict, model: nn.Module,
                    tx: optax.GradientTransformation, schedule: optax.Schedule | None = None
                    ) -> Callable[[state.TrainState, dict], tuple[state.TrainState, dict]]:
  """Builds the CornerNet ``train_step(state, batch) -> (state, metrics)`` (not jitted).

  Same batch contract as ``ctdet.make_train_step``. Corners are placed on the model's output
  map (``models.output_hw``: 128 x 128 for the official 511 x 511 input) at the official
  output / input ratio (128 / 511), not 1 / down_ratio. ``loss.ae_images_per_chunk`` scales
  pull/push as the official per-GPU chunks do (see :func:`cornernet_loss`; 0: sums over the
  whole batch).

  Args:
    config: the experiment config (``model.num_classes``, ``loss.*``).
    model: the CornerNet.
    tx: the optimiser (``optim.make_optimizer``).
    schedule: its learning-rate schedule.
  """
  num_classes = config.model.num_classes
  loss_cfg = config.loss
  images_per_chunk = loss_cfg.ae_images_per_chunk or None

  def make_targets(batch):
    _, height, width, _ = batch['image'].shape
    return cornernet_targets(
        batch['boxes'], batch['labels'], batch['mask'], num_classes=num_classes,
        output_hw=models.output_hw(model, height, width), input_hw=(height, width),
        min_overlap=loss_cfg.min_overlap)

  def loss(outputs, tgt):
    return cornernet_loss(outputs, tgt, pull_weight=loss_cfg.pull_weight,
                          push_weight=loss_cfg.push_weight, regr_weight=loss_cfg.regr_weight,
                          images_per_chunk=images_per_chunk)

  return state.make_train_step_from_objective(model, tx, make_targets, loss,
                                              lambda tgt: tgt['tag_mask'].sum(), schedule)


def make_predict_fn(config: ml_collections.ConfigDict, model: nn.Module, *,
                    merge_later: bool = False) -> Callable[[dict, jax.Array], dict]:
  """Builds CornerNet's ``predict(variables, images) -> detections`` (all on device).

  Official test (docs/parity.md 4.9): sigmoid, 3x3 peaks, top ``eval.corner_K`` corners per
  type, all pairs, top ``eval.num_dets`` pairs; with ``eval.flip_test`` (official: always) the
  flipped image's pairs are mirrored back and appended; then per-class soft-NMS (in input
  pixels) and the top ``eval.K`` across classes.

  Args:
    config: the experiment config (``eval.*``, ``model.down_ratio``).
    model: a CornerNet (outputs per stack: tl_heat, br_heat, tl_tag, br_tag, tl_regr, br_regr).
    merge_later: return every pair before NMS (``num_dets``, doubled with flip, with
      ``tl_scores`` and ``br_scores``) for a caller that merges scales with :func:`make_merge`.

  Returns:
    ``predict(variables, images)``: dict boxes [B, N, 4] xyxy in output-map coordinates,
    scores [B, N] (rejected pairs have score -1 before NMS), classes [B, N] int32, and valid
    [B, N] after NMS.
  """
  e = config.eval
  corner_K, num_dets, ae_threshold, flip_test = (e.corner_K, e.num_dets, e.ae_threshold,
                                                 e.flip_test)
  nms_fn = None if merge_later else nms.make_nms(e, box_scale=config.model.down_ratio)

  def predict(variables: dict, images: jax.Array) -> dict:
    if flip_test:
      images = jnp.concatenate([images, images[:, :, ::-1, :]], axis=0)
    out = model.apply(variables, images, train=False)[-1]
    out = {k: v.astype(jnp.float32) for k, v in out.items()}
    dets = corner_decode(
        jax.nn.sigmoid(out['tl_heat']), jax.nn.sigmoid(out['br_heat']), out['tl_tag'],
        out['br_tag'], out['tl_regr'], out['br_regr'], K=corner_K, ae_threshold=ae_threshold,
        num_dets=num_dets)
    if flip_test:
      out_w = out['tl_heat'].shape[2]
      dets = corner_merge_flip(dets, out_w)
    return nms_fn(dets) if nms_fn is not None else dets

  return predict


def make_merge(config: ml_collections.ConfigDict) -> Callable[[dict], dict]:
  """Multi-scale merge (official ``merge_bbox``): per-class ``soft_nms_merge``, then the top K.

  Args:
    config: the experiment config (``eval.nms_*``, ``eval.K``).

  Returns:
    ``merge(dets) -> dets``: boxes [B, N, 4] in original pixels, scores, classes, tl_scores,
    br_scores [B, N] (the scales concatenated along N) -> boxes, scores, classes, valid [B, K].
  """
  return nms.make_nms(config.eval, merge_boxes=True)
