"""Decoding: CenterNet and CornerNet, soft-NMS.

CenterNet: official `models/decode.py`, `detectors/ctdet.py` (PARITY 4.5).
CornerNet: official `kp_utils.py: _decode` and `test/coco.py` (PARITY 4.9).
Soft-NMS: the official Cython `external/nms.pyx: soft_nms` (shared by both).

The caller applies the sigmoid (plain, unclamped at test time); these functions
take probabilities. Boxes come out in output-map coordinates; map them back to
the image with `boxes.transform_preds` on the host.
"""

import jax
import jax.numpy as jnp

from centernet_jax.losses import gather_feat


def peaks(heat: jax.Array, kernel: int = 3) -> jax.Array:
  """Keeps local maxima of a heatmap (official `_nms`).

  hmax = max_pool(heat, kernel, stride 1, 'same' padding with -inf); every pixel
  equal to its hmax is kept, so ties (plateaus) all survive.

  Args:
    heat: [B, h, w, C] probabilities.
    kernel: odd pooling window (official 3).

  Returns:
    [B, h, w, C] heat with non-maxima set to 0.
  """
  pad = (kernel - 1) // 2
  hmax = jax.lax.reduce_window(
      heat, jnp.array(-jnp.inf, heat.dtype), jax.lax.max,
      window_dimensions=(1, kernel, kernel, 1), window_strides=(1, 1, 1, 1),
      padding=((0, 0), (pad, pad), (pad, pad), (0, 0)))
  return jnp.where(hmax == heat, heat, jnp.zeros_like(heat))


def topk(scores: jax.Array, K: int) -> tuple[jax.Array, ...]:
  """Top-K over all classes and positions.

  The official per-class top-K followed by a top-K over C * K gives the same set
  as one global top-K over h * w * C (up to the order of tied scores).

  Args:
    scores: [B, h, w, C].
    K: number of detections, at most h * w * C.

  Returns:
    scores [B, K] (descending), inds [B, K] int32 (y * w + x),
    classes [B, K] int32, ys [B, K] float32, xs [B, K] float32 (integer pixels).
  """
  b, h, w, c = scores.shape
  if K > h * w * c:
    raise ValueError(f'K={K} exceeds the number of heatmap entries h*w*C={h * w * c}.')
  top_scores, flat = jax.lax.top_k(scores.reshape(b, h * w * c), K)
  flat = flat.astype(jnp.int32)
  inds = flat // c
  classes = flat % c
  ys = (inds // w).astype(jnp.float32)
  xs = (inds % w).astype(jnp.float32)
  return top_scores, inds, classes, ys, xs


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
  scores, inds, classes, ys, xs = topk(peaks(hm_prob), K)
  if reg is not None:
    off = gather_feat(reg, inds).astype(jnp.float32)
    xs = xs + off[..., 0]
    ys = ys + off[..., 1]
  else:
    xs = xs + 0.5
    ys = ys + 0.5
  size = gather_feat(wh, inds).astype(jnp.float32)
  half_w = size[..., 0] / 2
  half_h = size[..., 1] / 2
  boxes = jnp.stack([xs - half_w, ys - half_h, xs + half_w, ys + half_h], axis=-1)
  return {'boxes': boxes, 'scores': scores.astype(jnp.float32), 'classes': classes}


def flip_lr(x: jax.Array) -> jax.Array:
  """Mirrors NHWC maps left-right (official `flip_tensor`)."""
  return jnp.flip(x, axis=2)


def merge_flip(
    hm_prob: jax.Array,
    wh: jax.Array,
    reg: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """Merges the outputs of a flip-test batch [x; flip_lr(x)] of size 2B.

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
  hm = (hm_prob[:b] + flip_lr(hm_prob[b:])) / 2
  wh = (wh[:b] + flip_lr(wh[b:])) / 2
  return hm, wh, None if reg is None else reg[:b]


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
  tl_s, tl_inds, tl_cls, tl_ys, tl_xs = topk(peaks(tl_heat, kernel), K)
  br_s, br_inds, br_cls, br_ys, br_xs = topk(peaks(br_heat, kernel), K)
  if tl_regr is not None:
    tl_off = gather_feat(tl_regr, tl_inds).astype(jnp.float32)
    br_off = gather_feat(br_regr, br_inds).astype(jnp.float32)
    tl_xs, tl_ys = tl_xs + tl_off[..., 0], tl_ys + tl_off[..., 1]
    br_xs, br_ys = br_xs + br_off[..., 0], br_ys + br_off[..., 1]
  tl_e = gather_feat(tl_tag, tl_inds)[..., 0].astype(jnp.float32)
  br_e = gather_feat(br_tag, br_inds)[..., 0].astype(jnp.float32)

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


_NMS_METHODS = ('linear', 'gaussian', 'hard')


def _soft_nms(boxes, scores, classes, iou_threshold, sigma, score_threshold, method,
              corner_scores=None, weight_exp=10.0):
  """One image: returns (rescored scores [N], kept [N] bool, boxes [N, 4]). See `soft_nms`.

  With corner_scores = (tl_scores, br_scores) [N] each, the returned box of
  every selected box is the official `soft_nms_merge` average (see
  `soft_nms_merge`); otherwise the boxes come back unchanged.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
  areas = (x2 - x1 + 1) * (y2 - y1 + 1)
  scores = jnp.asarray(scores, jnp.float32)
  classes = None if classes is None else jnp.asarray(classes)
  alive = scores >= 0  # not selected yet and not discarded
  kept = jnp.zeros_like(alive)

  def body(state):
    scores, alive, kept, out_boxes = state
    i = jnp.argmax(jnp.where(alive, scores, -jnp.inf))  # first index among ties
    alive = alive.at[i].set(False)
    kept = kept.at[i].set(True)
    # Official float32 arithmetic, +1 pixel convention, in the same order.
    iw = jnp.minimum(x2[i], x2) - jnp.maximum(x1[i], x1) + 1
    ih = jnp.minimum(y2[i], y2) - jnp.maximum(y1[i], y1) + 1
    ua = areas[i] + areas - iw * ih
    ov = iw * ih / jnp.where(ua != 0, ua, 1.0)
    hit = alive & (iw > 0) & (ih > 0)
    if classes is not None:
      hit = hit & (classes == classes[i])
    if method == 'gaussian':
      weight = jnp.exp(-(ov * ov) / sigma)
    elif method == 'linear':
      weight = jnp.where(ov > iou_threshold, 1 - ov, 1.0)
    else:
      weight = jnp.where(ov > iou_threshold, 0.0, 1.0)
    if corner_scores is not None:
      tl_s, br_s = corner_scores
      mw = jnp.where(hit, (1 - weight) ** weight_exp, 0.0)
      wt = tl_s * mw
      wb = br_s * mw
      mts = tl_s[i] + jnp.sum(wt)
      mbs = br_s[i] + jnp.sum(wb)
      merged = jnp.stack([(x1[i] * tl_s[i] + jnp.sum(x1 * wt)) / mts,
                          (y1[i] * tl_s[i] + jnp.sum(y1 * wt)) / mts,
                          (x2[i] * br_s[i] + jnp.sum(x2 * wb)) / mbs,
                          (y2[i] * br_s[i] + jnp.sum(y2 * wb)) / mbs])
      out_boxes = out_boxes.at[i].set(merged)
    scores = jnp.where(hit, weight * scores, scores)
    alive = alive & ~(hit & (scores < score_threshold))
    return scores, alive, kept, out_boxes

  if corner_scores is not None:
    corner_scores = tuple(jnp.asarray(c, jnp.float32) for c in corner_scores)
  scores, _, kept, out_boxes = jax.lax.while_loop(lambda s: jnp.any(s[1]), body,
                                                  (scores, alive, kept, boxes))
  return scores, kept, out_boxes


def soft_nms(
    boxes: jax.Array,
    scores: jax.Array,
    classes: jax.Array | None = None,
    *,
    iou_threshold: float = 0.5,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = 'gaussian',
) -> jax.Array:
  """Soft-NMS (official Cython `soft_nms`, Bodla et al. 2017) on one image.

  Repeatedly selects the highest-scoring remaining box (the first index among
  ties) and rescales every remaining box that overlaps it (the official
  `iw > 0 and ih > 0`, with the +1 pixel convention iw = min(x2) - max(x1) + 1
  and areas (x2 - x1 + 1)(y2 - y1 + 1)) by exp(-IoU^2 / sigma) ('gaussian',
  official method 2), 1 - IoU if IoU > iou_threshold ('linear', method 1) or 0
  if IoU > iou_threshold ('hard', method 0); an overlapping box whose new score
  is < score_threshold is discarded. With `classes`, boxes of different classes
  never interact, which equals running soft-NMS per class (the official use).
  Entries with a negative score (CornerNet's rejected pairs, padding) take no
  part. Runs as a `lax.while_loop` with one selection per iteration (at most N).

  Not reproduced: the official caller ignores the returned `keep` and reads the
  whole array back, where the discard step (which copies the last box over the
  discarded one) leaves stale copies of moved boxes past the new end; here
  discarded boxes are simply gone (score 0). Ties may also be selected in a
  different order than the Cython in-place swaps give.

  Args:
    boxes: [N, 4] xyxy.
    scores: [N] scores (negative: absent).
    classes: [N] int class ids, or None (class-agnostic).
    iou_threshold: Nt (official 0.5).
    sigma: Gaussian sigma (official 0.5).
    score_threshold: discard threshold (official 0.001).
    method: 'gaussian', 'linear' or 'hard'.

  Returns:
    [N] float32 rescored scores, 0 for discarded and absent boxes.
  """
  if method not in _NMS_METHODS:
    raise ValueError(f'soft_nms method must be one of {_NMS_METHODS}, got {method!r}.')
  new, kept, _ = _soft_nms(boxes, scores, classes, iou_threshold, sigma, score_threshold, method)
  return jnp.where(kept, new, 0.0)


def soft_nms_merge(
    boxes: jax.Array,
    scores: jax.Array,
    classes: jax.Array | None,
    tl_scores: jax.Array,
    br_scores: jax.Array,
    *,
    iou_threshold: float = 0.5,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = 'gaussian',
    weight_exp: float = 10.0,
) -> tuple[jax.Array, jax.Array]:
  """Soft-NMS that also merges boxes (official CornerNet `soft_nms_merge`, multi-scale).

  The scores are rescored exactly as `soft_nms`. When box i is selected, its
  box becomes the average of itself and of every remaining box j it rescales
  in that step (discarded ones included), with weights mw_j = (1 - w_j)^weight_exp
  (w_j the soft-NMS weight; mw_i = 1) times the top-left score for x1, y1 and
  the bottom-right score for x2, y2. The official multi-scale config uses
  weight_exp 10 (code default 8).

  Not reproduced: the Cython code swaps and copies only columns 0-4, so the
  corner scores it reads (columns 5, 6) belong to whatever row sits at that
  position after earlier swaps; here each box uses its own corner scores.

  Args:
    boxes: [N, 4] xyxy.
    scores: [N] scores (negative: absent).
    classes: [N] int class ids, or None.
    tl_scores: [N] top-left corner scores (`corner_decode`'s tl_scores).
    br_scores: [N] bottom-right corner scores.
    iou_threshold, sigma, score_threshold, method: see `soft_nms`.
    weight_exp: merge weight exponent.

  Returns:
    (boxes [N, 4] float32: merged for kept boxes, unchanged otherwise;
     scores [N] float32, 0 for discarded and absent boxes).
  """
  if method not in _NMS_METHODS:
    raise ValueError(f'soft_nms method must be one of {_NMS_METHODS}, got {method!r}.')
  new, kept, merged = _soft_nms(boxes, scores, classes, iou_threshold, sigma, score_threshold,
                                method, (tl_scores, br_scores), weight_exp)
  return merged, jnp.where(kept, new, 0.0)


def nms_top_k(
    boxes: jax.Array,
    scores: jax.Array,
    classes: jax.Array,
    *,
    K: int = 100,
    iou_threshold: float = 0.5,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = 'gaussian',
    corner_scores: tuple[jax.Array, jax.Array] | None = None,
    weight_exp: float = 10.0,
) -> dict[str, jax.Array]:
  """Per-class soft-NMS, then the top K across classes (official `max_per_image`).

  The official test code keeps every detection scoring >= the K-th score (more
  than K on ties); this keeps exactly K. Used by CornerNet testing and by
  CenterNet multi-scale testing (boxes of all scales concatenated). With
  `corner_scores` the boxes are merged as `soft_nms_merge` (CornerNet
  multi-scale, official `merge_bbox`).

  Args:
    boxes: [B, N, 4] xyxy (all scales / the flip concatenated).
    scores: [B, N] scores; negative entries (rejected pairs, padding) are ignored.
    classes: [B, N] int class ids.
    K: detections kept per image (official 100).
    iou_threshold, sigma, score_threshold, method: see `soft_nms`.
    corner_scores: None, or (tl_scores, br_scores) [B, N] each for box merging.
    weight_exp: merge weight exponent (official multi-scale config 10).

  Returns:
    dict with boxes [B, K, 4] float32, scores [B, K] float32 (descending, 0
    where `valid` is False), classes [B, K] int32, valid [B, K] bool (False when
    fewer than K boxes survive).
  """
  if method not in _NMS_METHODS:
    raise ValueError(f'soft_nms method must be one of {_NMS_METHODS}, got {method!r}.')
  b, n = scores.shape
  if corner_scores is None:
    corner_scores = ()
  if K > n:  # pad with absent entries so top_k has K to choose from
    pad = lambda x, v=0.0: jnp.pad(x, ((0, 0), (0, K - n)) + ((0, 0),) * (x.ndim - 2),
                                   constant_values=v)
    boxes, classes = pad(boxes), pad(classes, 0)
    scores = pad(scores, -1.0)
    corner_scores = tuple(pad(c) for c in corner_scores)

  def one(bx, s, c, *corners):
    return _soft_nms(bx, s, c, iou_threshold, sigma, score_threshold, method,
                     corners or None, weight_exp)

  new, kept, out_boxes = jax.vmap(one)(boxes, scores, classes, *corner_scores)
  top, inds = jax.lax.top_k(jnp.where(kept, new, -1.0), K)
  valid = top >= 0
  out_boxes = jnp.take_along_axis(out_boxes, inds[..., None], axis=1)
  out_classes = jnp.take_along_axis(classes, inds, axis=1).astype(jnp.int32)
  return {'boxes': out_boxes, 'scores': jnp.where(valid, top, 0.0), 'classes': out_classes,
          'valid': valid}
