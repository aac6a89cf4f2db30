"""CenterNet object-as-point detection (`ctdet`): heads, config, targets, loss, decoding.

One module per task (registry: `tasks/__init__.py`). Official CenterNet `datasets/sample/ctdet.py`
(targets, docs/parity.md 4.3), `models/losses.py` and `trains/ctdet.py` (loss, 4.4),
`models/decode.py` and `detectors/ctdet.py` (decoding and testing, 4.5).

Each object is its box centre: a Gaussian peak in its class channel of the heatmap `hm`, the box
size `wh` and the sub-pixel offset `reg` regressed at the peak pixel. The maths below is pure jnp;
`add_config`, `make_train_step`, `make_predict_fn` and `make_merge` bind it to a config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from centernet_jax import decode, gaussian, losses, models, nms, state

NAME = 'ctdet'
# Detection arrays whose last axis holds (x, y) pairs in output-map coordinates.
POINT_KEYS = ('boxes',)


def add_config(c: ml_collections.ConfigDict) -> None:
  """Adds the ctdet keys to the shared config sections (``config_lib.base_config``)."""
  c.loss.hm_weight = 1.0  # official weights: hm 1, wh 0.1, off 1
  c.loss.wh_weight = 0.1
  c.loss.off_weight = 1.0
  c.loss.min_overlap = 0.7  # official CenterNet gaussian_radius overlap
  # Single-scale soft-NMS (official CenterNet --nms; multi-scale testing always merges with it).
  c.eval.nms = False


def heads(num_classes: int, config: ml_collections.ConfigDict | None = None
          ) -> tuple[tuple[str, int], ...]:
  """The official ctdet heads: class heatmap, box size (w, h), centre offset (x, y).

  ``config`` is unused (the heads depend on the class count only).
  """
  del config
  return (('hm', num_classes), ('wh', 2), ('reg', 2))


def ctdet_targets(
    boxes: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    *,
    num_classes: int,
    output_hw: Sequence[int],
    min_overlap: float = 0.7,
    objects_per_chunk: int | None = None,
) -> dict[str, jax.Array]:
  """CenterNet object-as-point targets (official `ctdet.py`).

  Per object: clip corners to [0, out - 1]; drop it unless h > 0 and w > 0
  after clipping; radius = max(0, int(r)) with r the official radius of
  (ceil h, ceil w) (looked up in `gaussian.centernet_radius_table`);
  ct = box centre (float), ct_int = trunc(ct); Gaussian drawn at ct_int in its
  class channel; ind = ct_int_y * w_out + ct_int_x; wh = (w, h) in output
  pixels; reg = ct - ct_int. Dropped and padded objects get ind 0, wh 0, reg 0,
  reg_mask 0.

  Args:
    boxes: [B, M, 4] float32 xyxy in output-map pixels (input / down_ratio), unclipped.
    labels: [B, M] int32 class ids in [0, num_classes).
    mask: [B, M] bool or float; nonzero marks a real object.
    num_classes: C.
    output_hw: (h_out, w_out) of the output map.
    min_overlap: overlap of the radius (official 0.7).
    objects_per_chunk: see `gaussian.draw_gaussians` (memory bound; same result).

  Returns:
    dict with hm [B, h, w, C] float32, ind [B, M] int32, wh [B, M, 2] float32,
    reg [B, M, 2] float32, reg_mask [B, M] float32.
  """
  out_h, out_w = int(output_hw[0]), int(output_hw[1])
  c = object_centres(boxes, mask, output_hw=output_hw, min_overlap=min_overlap)
  valid, ct, ct_int = c['valid'], c['ct'], c['ct_int']
  hm = gaussian.draw_gaussians(ct_int, c['radius'], labels, valid, num_classes=num_classes,
                               output_hw=(out_h, out_w), objects_per_chunk=objects_per_chunk)
  # jnp.where (not a product) so garbage in padded rows, even NaN, cannot leak.
  ind = jnp.where(valid, ct_int[..., 1] * out_w + ct_int[..., 0], 0).astype(jnp.int32)
  wh = jnp.where(valid[..., None], c['wh'], 0.0)
  reg = jnp.where(valid[..., None], ct - ct_int.astype(jnp.float32), 0.0)
  return {'hm': hm, 'ind': ind, 'wh': wh, 'reg': reg, 'reg_mask': valid.astype(jnp.float32)}


def object_centres(boxes: jax.Array, mask: jax.Array, *, output_hw: Sequence[int],
                   min_overlap: float = 0.7) -> dict[str, jax.Array]:
  """The per-object part of the official ctdet targets, shared with the pose task.

  Corners clipped to [0, out - 1]; valid = mask and h > 0 and w > 0 after clipping; radius =
  max(0, int(r)) of (ceil h, ceil w); ct the float box centre, ct_int = trunc(ct).

  Args:
    boxes: [B, M, 4] float32 xyxy in output-map pixels, unclipped.
    mask: [B, M] nonzero marks a real object.
    output_hw: (h_out, w_out).
    min_overlap: overlap of the radius.

  Returns:
    dict valid [B, M] bool, radius [B, M] int32, ct [B, M, 2] float32, ct_int [B, M, 2] int32,
    wh [B, M, 2] float32 (clipped width, height).
  """
  out_h, out_w = int(output_hw[0]), int(output_hw[1])
  boxes = jnp.asarray(boxes, jnp.float32)
  x1 = jnp.clip(boxes[..., 0], 0, out_w - 1)
  y1 = jnp.clip(boxes[..., 1], 0, out_h - 1)
  x2 = jnp.clip(boxes[..., 2], 0, out_w - 1)
  y2 = jnp.clip(boxes[..., 3], 0, out_h - 1)
  bw = x2 - x1
  bh = y2 - y1
  valid = (jnp.asarray(mask) != 0) & (bh > 0) & (bw > 0)

  # max(0, int(r)) of the ceil'd sides (<= out - 1 after clipping) from a float64 table: the
  # official truncation even where the exact radius is an integer, which float32 can land one
  # ulp below (gaussian.gaussian_radius).
  table = gaussian.centernet_radius_table(out_h - 1, out_w - 1, min_overlap)
  radius = gaussian.lookup_radius(table, bh, bw)
  ct = jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2], axis=-1)  # [B, M, 2]
  ct_int = ct.astype(jnp.int32)  # trunc; ct >= 0 after clipping
  return {'valid': valid, 'radius': radius, 'ct': ct, 'ct_int': ct_int,
          'wh': jnp.stack([bw, bh], axis=-1)}


def ctdet_loss(
    outputs: Sequence[Mapping[str, jax.Array]],
    targets: Mapping[str, jax.Array],
    *,
    hm_weight: float = 1.0,
    wh_weight: float = 0.1,
    off_weight: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CenterNet detection loss, each term averaged over stacks.

  As the official `CtdetLoss`, which adds every stack's hm, wh and off loss
  divided by num_stacks (Hourglass-104 has two stacks).

  Defaults are the official weights (hm 1, wh 0.1, off 1). A stack without a
  'reg' head (official `--not_reg_offset`) contributes 0 offset loss.

  Args:
    outputs: list over stacks of {'hm': [B, h, w, C] logits, 'wh': [B, h, w, 2],
      'reg': [B, h, w, 2] (optional)}.
    targets: {'hm': [B, h, w, C], 'ind': [B, M] int32, 'wh': [B, M, 2],
      'reg': [B, M, 2], 'reg_mask': [B, M]} from `ctdet_targets`.
    hm_weight: heatmap loss weight.
    wh_weight: size loss weight.
    off_weight: offset loss weight.

  Returns:
    (total, {'hm_loss', 'wh_loss', 'off_loss', 'loss'}) float32 scalars.
  """
  num_stacks = len(outputs)
  hm_loss = wh_loss = off_loss = jnp.zeros((), jnp.float32)
  for out in outputs:
    hm_loss += losses.focal_loss(out['hm'], targets['hm']) / num_stacks
    wh_loss += losses.reg_l1_loss(out['wh'], targets['ind'], targets['reg_mask'],
                                  targets['wh']) / num_stacks
    if 'reg' in out and out['reg'] is not None:
      off_loss += losses.reg_l1_loss(out['reg'], targets['ind'], targets['reg_mask'],
                                     targets['reg']) / num_stacks
  total = hm_weight * hm_loss + wh_weight * wh_loss + off_weight * off_loss
  parts = {'hm_loss': hm_loss, 'wh_loss': wh_loss, 'off_loss': off_loss, 'loss': total}
  return total, parts


def ctdet_decode(
    hm_prob: jax.Array,
    wh: jax.Array,
    reg: jax.Array | None = None,
    K: int = 100,
) -> dict[str, jax.Array]:
  """Decodes CenterNet outputs into the top-K boxes (official `ctdet_decode`).

  Centre = peak pixel + reg (+0.5 without a reg head); box = centre -+ wh / 2.

  Args:
    hm_prob: [B, h, w, C] heatmap probabilities (sigmoid already applied).
    wh: [B, h, w, 2] sizes (w, h) in output pixels.
    reg: [B, h, w, 2] sub-pixel offsets (x, y), or None.
    K: detections per image (official 100).

  Returns:
    dict with boxes [B, K, 4] float32 xyxy in output coordinates,
    scores [B, K] float32, classes [B, K] int32.
  """
  scores, inds, classes, ys, xs = decode.topk(decode.peaks(hm_prob), K)
  if reg is not None:
    off = losses.gather_feat(reg, inds).astype(jnp.float32)
    xs = xs + off[..., 0]
    ys = ys + off[..., 1]
  else:
    xs = xs + 0.5
    ys = ys + 0.5
  size = losses.gather_feat(wh, inds).astype(jnp.float32)
  half_w = size[..., 0] / 2
  half_h = size[..., 1] / 2
  boxes = jnp.stack([xs - half_w, ys - half_h, xs + half_w, ys + half_h], axis=-1)
  return {'boxes': boxes, 'scores': scores.astype(jnp.float32), 'classes': classes}


def merge_flip(
    hm_prob: jax.Array,
    wh: jax.Array,
    reg: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """Merges the outputs of a flip-test batch [x; decode.flip_lr(x)] of size 2B.

  Official `--flip_test`: hm = (hm0 + flip(hm1)) / 2 on probabilities (sigmoid
  before averaging), wh = (wh0 + flip(wh1)) / 2, reg from the unflipped pass.

  Args:
    hm_prob: [2B, h, w, C] probabilities; rows B: are the mirrored images.
    wh: [2B, h, w, 2].
    reg: [2B, h, w, 2] or None.

  Returns:
    (hm_prob [B, h, w, C], wh [B, h, w, 2], reg [B, h, w, 2] or None).
  """
  n = hm_prob.shape[0]
  if n % 2:
    raise ValueError(f'flip batch must have an even size, got {n}.')
  b = n // 2
  hm = (hm_prob[:b] + decode.flip_lr(hm_prob[b:])) / 2
  wh = (wh[:b] + decode.flip_lr(wh[b:])) / 2
  return hm, wh, None if reg is None else reg[:b]


def make_train_step(config: ml_collections.ConfigDict, model: nn.Module,
                    tx: optax.GradientTransformation, schedule: optax.Schedule | None = None
                    ) -> Callable[[state.TrainState, dict], tuple[state.TrainState, dict]]:
  """Builds the ctdet ``train_step(state, batch) -> (state, metrics)`` (not jitted).

  The batch holds
    image: [B, S, S, 3] float32 normalised input,
    boxes: [B, M, 4] float32 xyxy in input pixels (after augmentation, not clipped),
    labels: [B, M] int32 contiguous labels,
    mask: [B, M] float32, 1 for real objects;
  the metrics are float32 scalars (losses, grad norm, lr). Boxes are divided by
  ``config.model.down_ratio`` onto the model's output map (``models.output_hw``), which must be
  the input divided by it exactly (official affine to input / down_ratio).

  Args:
    config: the experiment config (``model.num_classes``, ``model.down_ratio``, ``loss.*``).
    model: the detector.
    tx: the optimiser (``optim.make_optimizer``).
    schedule: its learning-rate schedule.
  """
  num_classes = config.model.num_classes
  down = config.model.down_ratio
  loss_cfg = config.loss

  def make_targets(batch):
    _, height, width, _ = batch['image'].shape
    out_hw = models.train_output_hw(model, height, width, down)
    return ctdet_targets(batch['boxes'] / down, batch['labels'], batch['mask'],
                         num_classes=num_classes, output_hw=out_hw,
                         min_overlap=loss_cfg.min_overlap)

  def loss(outputs, tgt):
    return ctdet_loss(outputs, tgt, hm_weight=loss_cfg.hm_weight, wh_weight=loss_cfg.wh_weight,
                      off_weight=loss_cfg.off_weight)

  return state.make_train_step_from_objective(model, tx, make_targets, loss,
                                              lambda tgt: tgt['reg_mask'].sum(), schedule)


def make_predict_fn(config: ml_collections.ConfigDict, model: nn.Module, *,
                    merge_later: bool = False) -> Callable[[dict, jax.Array], dict]:
  """Builds ``predict(variables, images) -> detections`` (model + decode, all on device).

  Official test: sigmoid, 3x3 peaks, top ``eval.K``; with ``eval.flip_test`` the heatmaps and
  sizes of the image and its mirror are averaged; with ``eval.nms`` (official ``--nms``)
  per-class soft-NMS in input pixels, then the top K.

  Args:
    config: the experiment config (``eval.*``, ``model.down_ratio``).
    model: a ctdet model.
    merge_later: return the detections before NMS, for a caller that maps several test scales
      back to the image and merges them with :func:`make_merge`.

  Returns:
    ``predict(variables, images)``: variables {'params', 'batch_stats'}, images [B, H, W, 3]
    float32 normalised; returns dict boxes [B, K, 4] xyxy in output-map coordinates, scores
    [B, K], classes [B, K] int32 contiguous labels (and valid [B, K] after NMS).
  """
  e = config.eval
  K, flip_test = e.K, e.flip_test
  # The official IoU counts pixels (+1 in widths): NMS sees input pixels, not output-map units.
  nms_fn = (nms.make_nms(e, box_scale=config.model.down_ratio) if e.nms and not merge_later
            else None)

  def predict(variables: dict, images: jax.Array) -> dict:
    if flip_test:
      images = jnp.concatenate([images, images[:, :, ::-1, :]], axis=0)
    out = model.apply(variables, images, train=False)[-1]  # inference uses the last stack
    hm = jax.nn.sigmoid(out['hm'].astype(jnp.float32))
    wh = out['wh'].astype(jnp.float32)
    reg = out['reg'].astype(jnp.float32) if 'reg' in out else None
    if flip_test:
      hm, wh, reg = merge_flip(hm, wh, reg)
    dets = ctdet_decode(hm, wh, reg, K=K)
    return nms_fn(dets) if nms_fn is not None else dets

  return predict


def make_merge(config: ml_collections.ConfigDict) -> Callable[[dict], dict]:
  """Multi-scale merge: per-class soft-NMS over every scale's detections, then the top K.

  Args:
    config: the experiment config (``eval.nms_*``, ``eval.K``).

  Returns:
    ``merge(dets) -> dets``: boxes [B, N, 4] in original pixels, scores [B, N], classes [B, N]
    (the scales concatenated along N) -> K of each plus valid [B, K].
  """
  return nms.make_nms(config.eval)


def coco_results(dets: Mapping[str, np.ndarray], image_id: int, category_ids: Sequence[int],
                 config: ml_collections.ConfigDict) -> list[dict]:
  """COCO box results of one image (official ``convert_eval_format``).

  Entries scoring <= 0 (CornerNet's rejected pairs, entries soft-NMS suppressed, padding) are
  left out; bbox and score are rounded to 2 decimals with ``eval.round_results``.

  Args:
    dets: one image's detections in original pixels: boxes [K, 4], scores [K], classes [K].
    image_id: its COCO image id.
    category_ids: contiguous label -> original category id.
    config: the experiment config.
  """
  from centernet_jax.evaluation import coco as coco_eval

  keep = np.asarray(dets['scores']) > 0
  return coco_eval.detections_to_coco(
      np.asarray(dets['boxes'])[keep], np.asarray(dets['scores'])[keep],
      np.asarray(dets['classes'])[keep], image_id, category_ids,
      round_results=config.eval.round_results)


def evaluate(gt, results: Sequence[Mapping], image_ids: Sequence[int],
             config: ml_collections.ConfigDict, log: Callable[[str], object] | None = print
             ) -> dict[str, float]:
  """COCO box AP/AR of ``results`` over ``image_ids`` (every image of the split)."""
  del config
  from centernet_jax.evaluation import coco as coco_eval

  return coco_eval.evaluate_detections(gt, results, image_ids=image_ids, log=log)
