"""Soft-NMS family (official Cython `external/nms.pyx`), used by every task's test-time merge.

`soft_nms` rescales overlapping boxes (Bodla et al. 2017), `soft_nms_merge` also averages each
kept box with those it rescales (CornerNet multi-scale), and `nms_top_k` runs either per class
over a batch and keeps the top K across classes (docs/parity.md 4.5 and 4.9). `make_nms` binds
them to a config's ``eval`` section for the task modules.
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

METHODS = ('linear', 'gaussian', 'hard')


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
  if method not in METHODS:
    raise ValueError(f'soft_nms method must be one of {METHODS}, got {method!r}.')
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
  if method not in METHODS:
    raise ValueError(f'soft_nms method must be one of {METHODS}, got {method!r}.')
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
    extra: Mapping[str, jax.Array] | None = None,
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
    extra: other per-detection arrays [B, N, ...] (pose: keypoints) that follow their box:
      returned under the same names, gathered at the kept detections.

  Returns:
    dict with boxes [B, K, 4] float32, scores [B, K] float32 (descending, 0
    where `valid` is False), classes [B, K] int32, valid [B, K] bool (False when
    fewer than K boxes survive), and the ``extra`` arrays [B, K, ...].
  """
  if method not in METHODS:
    raise ValueError(f'soft_nms method must be one of {METHODS}, got {method!r}.')
  b, n = scores.shape
  if corner_scores is None:
    corner_scores = ()
  if K > n:  # pad with absent entries so top_k has K to choose from
    pad = lambda x, v=0.0: jnp.pad(x, ((0, 0), (0, K - n)) + ((0, 0),) * (x.ndim - 2),
                                   constant_values=v)
    boxes, classes = pad(boxes), pad(classes, 0)
    scores = pad(scores, -1.0)
    corner_scores = tuple(pad(c) for c in corner_scores)
    extra = {k: pad(v) for k, v in (extra or {}).items()}

  def one(bx, s, c, *corners):
    return _soft_nms(bx, s, c, iou_threshold, sigma, score_threshold, method,
                     corners or None, weight_exp)

  new, kept, out_boxes = jax.vmap(one)(boxes, scores, classes, *corner_scores)
  top, inds = jax.lax.top_k(jnp.where(kept, new, -1.0), K)
  valid = top >= 0
  out_boxes = jnp.take_along_axis(out_boxes, inds[..., None], axis=1)
  out_classes = jnp.take_along_axis(classes, inds, axis=1).astype(jnp.int32)
  out = {k: jnp.take_along_axis(v, inds.reshape(inds.shape + (1,) * (v.ndim - 2)), axis=1)
         for k, v in (extra or {}).items()}
  out.update(boxes=out_boxes, scores=jnp.where(valid, top, 0.0), classes=out_classes,
             valid=valid)
  return out


def make_nms(eval_cfg: Mapping[str, Any], *, merge_boxes: bool = False,
             box_scale: float = 1.0) -> Callable[[dict], dict]:
  """Per-class soft-NMS over a batch of detections, then the top ``eval.K`` across classes.

  Args:
    eval_cfg: the config's ``eval`` section (``nms_method``, ``nms_iou``, ``nms_sigma``,
      ``nms_threshold``, ``K``).
    merge_boxes: also average each kept box with those it suppresses, weighted by the corner
      scores (official CornerNet multi-scale ``soft_nms_merge``, weight_exp 10); needs
      detections carrying ``tl_scores`` and ``br_scores``.
    box_scale: boxes are multiplied by this before NMS and divided after: the official IoU
      counts pixels (+1 in widths), so NMS must see image pixels, not output-map units
      (``down_ratio`` for output-map boxes; 1 for boxes already in image pixels).

  Returns:
    ``nms(dets) -> dets``: dets hold boxes [B, N, 4], scores [B, N] (negative: absent),
    classes [B, N] and any other per-detection arrays [B, N, ...] (carried along); the result
    holds K of each plus ``valid`` [B, K].
  """
  e = eval_cfg
  if e['nms_method'] not in METHODS:
    raise ValueError(f"config.eval.nms_method={e['nms_method']!r}: use 'gaussian', 'linear' or "
                     "'hard'")
  K, method = int(e['K']), e['nms_method']
  iou, sigma, threshold = e['nms_iou'], e['nms_sigma'], e['nms_threshold']

  def nms(dets: dict) -> dict:
    corners = (dets['tl_scores'], dets['br_scores']) if merge_boxes else None
    # Every other per-detection array (pose: keypoints, their scores) follows its box.
    extra = {k: v for k, v in dets.items()
             if k not in ('boxes', 'scores', 'classes', 'valid', 'tl_scores', 'br_scores')}
    out = nms_top_k(dets['boxes'] * box_scale, dets['scores'], dets['classes'], K=K,
                    iou_threshold=iou, sigma=sigma, score_threshold=threshold, method=method,
                    corner_scores=corners, extra=extra)
    return dict(out, boxes=out['boxes'] / box_scale)

  return nms
