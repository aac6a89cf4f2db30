"""CenterNet human pose (`multi_pose`): each person is its box centre, its joints regressed from it.

One module per task (registry: `tasks/__init__.py`). Official CenterNet
`datasets/sample/multi_pose.py` (targets), `trains/multi_pose.py` (loss), `models/decode.py:
multi_pose_decode` and `detectors/multi_pose.py` (decoding, flip test); docs/parity.md 4.12.

Heads: the ctdet heads (`hm`, `wh`, `reg`) plus `hps` (2J: x, y offset of every joint from the
person's integer centre), `hm_hp` (J joint heatmaps) and `hp_offset` (2: sub-pixel joint offset).
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
from centernet_jax.keypoints import (
    COCO_FLIP_PAIRS,
    COCO_NUM_JOINTS,
    COCO_OKS_SIGMAS,
    flip_permutation,
)
from centernet_jax.tasks import ctdet

NAME = 'multi_pose'
# Detection arrays whose last axis holds (x, y) pairs in output-map coordinates.
POINT_KEYS = ('boxes', 'keypoints')

def add_config(c: ml_collections.ConfigDict) -> None:
  """Adds the multi_pose keys (official defaults) to the shared config sections."""
  c.data.num_joints = COCO_NUM_JOINTS
  # Left/right joint pairs swapped by the horizontal flip (training and flip test), 0-based.
  c.data.flip_pairs = COCO_FLIP_PAIRS
  c.data.max_objs = 32  # official coco_hp
  c.data.train_on_crowd = True  # official: crowd people are heatmap positives
  c.data.skip_empty_train_images = True  # official coco_hp trains on images with a person
  c.loss.hm_weight = 1.0  # official weights: hm 1, wh 0.1, off 1, hp 1, hm_hp 1
  c.loss.wh_weight = 0.1
  c.loss.off_weight = 1.0  # also weighs the hp_offset loss (official)
  c.loss.hp_weight = 1.0
  c.loss.hm_hp_weight = 1.0
  c.loss.min_overlap = 0.7
  c.eval.nms = False
  # A joint snaps to the nearest joint-heatmap peak scoring above this, inside the person's box
  # and within hp_snap_ratio x the box's longer side (official 0.1 and 0.3).
  c.eval.hp_threshold = 0.1
  c.eval.hp_snap_ratio = 0.3
  # OKS sigma per joint for the keypoint evaluation (pycocotools' COCO values for 17 joints).
  c.eval.oks_sigmas = COCO_OKS_SIGMAS


def heads(num_classes: int, config: ml_collections.ConfigDict | None = None
          ) -> tuple[tuple[str, int], ...]:
  """The official multi_pose heads, in the official order (J = ``config.data.num_joints``)."""
  j = int(config.data.num_joints) if config is not None else COCO_NUM_JOINTS
  return (('hm', num_classes), ('wh', 2), ('hps', 2 * j), ('reg', 2), ('hm_hp', j),
          ('hp_offset', 2))


def multi_pose_targets(
    boxes: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    keypoints: jax.Array,
    *,
    num_classes: int,
    output_hw: Sequence[int],
    min_overlap: float = 0.7,
    objects_per_chunk: int | None = None,
) -> dict[str, jax.Array]:
  """Official multi_pose targets (docs/parity.md 4.12), rendered on device.

  The person part is ctdet's (:func:`ctdet.ctdet_targets`: centre heatmap, ind, wh, reg), except
  that ``reg_mask`` is 0 for a person without any labelled joint (still a heatmap positive).
  A joint j of a kept person is used when its visibility v > 0 and it lies in [0, w) x [0, h)
  of the output map; then ``hps[k, 2j:2j+2] = p - ct_int`` (mask per coordinate),
  ``hp_ind[k*J + j] = int(y) * w + int(x)``, ``hp_offset = p - int(p)``, and a Gaussian of the
  person's box radius is drawn at int(p) in channel j of ``hm_hp``.

  Args:
    boxes: [B, M, 4] float32 xyxy in output-map pixels, unclipped.
    labels: [B, M] int32 class ids.
    mask: [B, M] nonzero marks a real person.
    keypoints: [B, M, J, 3] float32: x, y in output-map pixels, v the visibility flag.
    num_classes: C of ``hm``.
    output_hw: (h, w) of the output map.
    min_overlap: overlap of the radius (official 0.7).
    objects_per_chunk: bounds the Gaussian drawing's memory (:func:`gaussian.draw_gaussians`).

  Returns:
    ctdet's hm, ind, wh, reg, reg_mask, person_mask [B, M] (kept people), plus hps
    [B, M, 2J], hps_mask [B, M, 2J], hm_hp [B, h, w, J], hp_ind [B, M*J] int32, hp_offset
    [B, M*J, 2], hp_mask [B, M*J] float32.
  """
  out_h, out_w = int(output_hw[0]), int(output_hw[1])
  b, m, j = keypoints.shape[:3]
  tgt = ctdet.ctdet_targets(boxes, labels, mask, num_classes=num_classes, output_hw=output_hw,
                            min_overlap=min_overlap, objects_per_chunk=objects_per_chunk)
  c = ctdet.object_centres(boxes, mask, output_hw=output_hw, min_overlap=min_overlap)
  valid = c['valid']
  keypoints = jnp.asarray(keypoints, jnp.float32)
  pts, vis = keypoints[..., :2], keypoints[..., 2]
  labelled = jnp.sum(jnp.where(vis > 0, vis, 0.0), axis=-1) > 0  # official pts[:, 2].sum()
  tgt['reg_mask'] = (valid & labelled).astype(jnp.float32)
  tgt['person_mask'] = valid.astype(jnp.float32)  # every kept person (a heatmap positive)

  x, y = pts[..., 0], pts[..., 1]
  used = (valid[..., None] & (vis > 0) & (x >= 0) & (x < out_w) & (y >= 0) & (y < out_h))
  pts = jnp.where(used[..., None], pts, 0.0)  # garbage (NaN) of unused joints cannot leak
  pt_int = pts.astype(jnp.int32)  # trunc = floor: used joints are >= 0
  hps = jnp.where(used[..., None], pts - c['ct_int'][:, :, None, :].astype(jnp.float32), 0.0)
  tgt['hps'] = hps.reshape(b, m, 2 * j)
  tgt['hps_mask'] = jnp.repeat(used, 2, axis=-1).astype(jnp.float32)
  tgt['hp_ind'] = jnp.where(used, pt_int[..., 1] * out_w + pt_int[..., 0], 0).reshape(
      b, m * j).astype(jnp.int32)
  tgt['hp_offset'] = jnp.where(used[..., None], pts - pt_int.astype(jnp.float32), 0.0).reshape(
      b, m * j, 2)
  tgt['hp_mask'] = used.reshape(b, m * j).astype(jnp.float32)
  joint_ids = jnp.broadcast_to(jnp.arange(j, dtype=jnp.int32), (b, m, j))
  radius = jnp.broadcast_to(c['radius'][..., None], (b, m, j))
  tgt['hm_hp'] = gaussian.draw_gaussians(
      pt_int.reshape(b, m * j, 2), radius.reshape(b, m * j), joint_ids.reshape(b, m * j),
      used.reshape(b, m * j), num_classes=j, output_hw=(out_h, out_w),
      objects_per_chunk=objects_per_chunk)
  return tgt


def multi_pose_loss(
    outputs: Sequence[Mapping[str, jax.Array]],
    targets: Mapping[str, jax.Array],
    *,
    hm_weight: float = 1.0,
    wh_weight: float = 0.1,
    off_weight: float = 1.0,
    hp_weight: float = 1.0,
    hm_hp_weight: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Official ``MultiPoseLoss``, each term averaged over stacks.

  Focal loss on ``hm`` and ``hm_hp`` (clamped sigmoid), the per-coordinate weighted L1 on
  ``hps`` (normalised by the mask sum), L1 on ``wh`` and ``reg`` (by 2 per person with a labelled
  joint) and on ``hp_offset`` (by 2 per used joint, weighted by ``off_weight``). A head a model
  does not have (official ``--not_reg_offset``, ``--not_hm_hp``, ``--not_reg_hp_offset``)
  contributes 0.

  Returns:
    (total, {'hm_loss', 'hp_loss', 'hm_hp_loss', 'hp_offset_loss', 'wh_loss', 'off_loss',
    'loss'}) float32 scalars.
  """
  n = len(outputs)
  zero = jnp.zeros((), jnp.float32)
  hm = hp = hm_hp = hp_off = wh = off = zero
  t = targets
  for out in outputs:
    hm += losses.focal_loss(out['hm'], t['hm']) / n
    hp += losses.reg_weighted_l1_loss(out['hps'], t['ind'], t['hps_mask'], t['hps']) / n
    wh += losses.reg_l1_loss(out['wh'], t['ind'], t['reg_mask'], t['wh']) / n
    if out.get('reg') is not None:
      off += losses.reg_l1_loss(out['reg'], t['ind'], t['reg_mask'], t['reg']) / n
    if out.get('hp_offset') is not None:
      hp_off += losses.reg_l1_loss(out['hp_offset'], t['hp_ind'], t['hp_mask'],
                                   t['hp_offset']) / n
    if out.get('hm_hp') is not None:
      hm_hp += losses.focal_loss(out['hm_hp'], t['hm_hp']) / n
  total = (hm_weight * hm + wh_weight * wh + off_weight * off + hp_weight * hp
           + hm_hp_weight * hm_hp + off_weight * hp_off)
  return total, {'hm_loss': hm, 'hp_loss': hp, 'hm_hp_loss': hm_hp, 'hp_offset_loss': hp_off,
                 'wh_loss': wh, 'off_loss': off, 'loss': total}


def multi_pose_decode(
    hm_prob: jax.Array,
    wh: jax.Array,
    hps: jax.Array,
    reg: jax.Array | None = None,
    hm_hp: jax.Array | None = None,
    hp_offset: jax.Array | None = None,
    *,
    K: int = 100,
    hp_threshold: float = 0.1,
    snap_ratio: float = 0.3,
) -> dict[str, jax.Array]:
  """Official ``multi_pose_decode``: top-K people, their regressed joints snapped to peaks.

  Centre peaks (3x3 NMS) and top K as ctdet; regressed joint = integer peak + hps (reg is not
  added). Joint-heatmap candidates: 3x3 NMS on ``hm_hp``, top K per joint, position +
  ``hp_offset`` (+0.5 without it); a candidate counts when its score is strictly above
  ``hp_threshold``. Each regressed joint moves to its nearest counting candidate (first on
  ties) if that lies inside the person's box (edges included) and within ``snap_ratio`` x the
  box's longer side; otherwise it keeps the regressed position.

  Args:
    hm_prob: [B, h, w, C] centre probabilities.
    wh: [B, h, w, 2]; hps: [B, h, w, 2J]; reg, hp_offset: [B, h, w, 2] or None;
    hm_hp: [B, h, w, J] joint probabilities or None (then no snapping).
    K: people per image.
    hp_threshold, snap_ratio: official 0.1 and 0.3.

  Returns:
    ctdet's boxes [B, K, 4], scores [B, K], classes [B, K], plus keypoints [B, K, J, 2] and
    keypoint_scores [B, K, J] (the snapped peak's score, 0 where the regressed joint is kept),
    all in output-map coordinates.
  """
  b, h, w, _ = hm_prob.shape
  j = hps.shape[-1] // 2
  scores, inds, classes, ys, xs = decode.topk(decode.peaks(hm_prob), K)
  kps = losses.gather_feat(hps, inds).astype(jnp.float32).reshape(b, K, j, 2)
  kps = kps + jnp.stack([xs, ys], axis=-1)[:, :, None, :]
  dets = ctdet.ctdet_decode(hm_prob, wh, reg, K=K)
  kp_scores = jnp.zeros((b, K, j), jnp.float32)
  if hm_hp is not None:
    peaks = decode.peaks(hm_hp).transpose(0, 3, 1, 2).reshape(b, j, h * w)
    kc = min(K, h * w)  # candidates per joint (official K; fewer on a tiny map)
    cand_scores, flat = jax.lax.top_k(peaks, kc)  # [B, J, kc]
    cx = (flat % w).astype(jnp.float32)
    cy = (flat // w).astype(jnp.float32)
    if hp_offset is not None:
      off = losses.gather_feat(hp_offset, flat.reshape(b, j * kc)).astype(jnp.float32)
      off = off.reshape(b, j, kc, 2)
      cx, cy = cx + off[..., 0], cy + off[..., 1]
    else:
      cx, cy = cx + 0.5, cy + 0.5
    counts = cand_scores > hp_threshold
    cand_scores = jnp.where(counts, cand_scores, -1.0)
    cand = jnp.where(counts[..., None], jnp.stack([cx, cy], axis=-1), -10000.0)  # [B, J, kc, 2]
    regressed = kps.transpose(0, 2, 1, 3)  # [B, J, K people, 2]
    dist = jnp.sqrt(jnp.sum((regressed[:, :, :, None, :] - cand[:, :, None, :, :]) ** 2, -1))
    nearest = jnp.argmin(dist, axis=-1)  # [B, J, K people]
    min_dist = jnp.take_along_axis(dist, nearest[..., None], axis=-1)[..., 0]
    snap_score = jnp.take_along_axis(cand_scores, nearest, axis=-1)
    snap = jnp.take_along_axis(cand, nearest[..., None], axis=2)  # [B, J, K, 2]
    box = dets['boxes'][:, None]  # [B, 1, K, 4]
    left, top, right, bottom = box[..., 0], box[..., 1], box[..., 2], box[..., 3]
    sx, sy = snap[..., 0], snap[..., 1]
    reject = ((sx < left) | (sx > right) | (sy < top) | (sy > bottom)
              | (snap_score < hp_threshold)
              | (min_dist > jnp.maximum(bottom - top, right - left) * snap_ratio))
    kps = jnp.where(reject[..., None], regressed, snap).transpose(0, 2, 1, 3)
    kp_scores = jnp.where(reject, 0.0, snap_score).transpose(0, 2, 1)
  return dict(dets, keypoints=kps, keypoint_scores=kp_scores)


def merge_flip(outputs: Mapping[str, jax.Array], perm: np.ndarray) -> dict[str, jax.Array]:
  """Merges a flip-test batch [x; mirror(x)] of size 2B (official ``--flip_test``).

  hm, wh: averaged with the mirrored pass; hm_hp: averaged with the mirrored pass's channels
  put back in joint order (``perm``); hps: the mirrored pass's x offsets negated and joints
  swapped before averaging; reg and hp_offset from the un-flipped pass.

  Args:
    outputs: probabilities ``hm``, ``hm_hp`` (optional) and raw ``wh``, ``hps``, ``reg``,
      ``hp_offset`` (optional), each [2B, h, w, ...].
    perm: :func:`flip_permutation`.
  """
  n = outputs['hm'].shape[0]
  if n % 2:
    raise ValueError(f'flip batch must have an even size, got {n}.')
  b = n // 2
  out = {}
  for key, x in outputs.items():
    if x is None:
      out[key] = None
    elif key in ('hm', 'wh'):
      out[key] = (x[:b] + decode.flip_lr(x[b:])) / 2
    elif key == 'hm_hp':
      out[key] = (x[:b] + decode.flip_lr(x[b:])[..., perm]) / 2
    elif key == 'hps':
      h, w, d = x.shape[1:]
      mirrored = decode.flip_lr(x[b:]).reshape(b, h, w, d // 2, 2)
      mirrored = (mirrored * jnp.array([-1.0, 1.0], x.dtype))[..., perm, :]
      out[key] = (x[:b] + mirrored.reshape(b, h, w, d)) / 2
    else:
      out[key] = x[:b]
  return out


def make_train_step(config: ml_collections.ConfigDict, model: nn.Module,
                    tx: optax.GradientTransformation, schedule: optax.Schedule | None = None
                    ) -> Callable[[state.TrainState, dict], tuple[state.TrainState, dict]]:
  """Builds the multi_pose ``train_step(state, batch) -> (state, metrics)`` (not jitted).

  The batch holds ctdet's image, boxes, labels, mask and keypoints [B, M, J, 3] (x, y in input
  pixels, v); boxes and joints are divided by ``config.model.down_ratio`` onto the output map.
  """
  num_classes = config.model.num_classes
  down = config.model.down_ratio
  loss_cfg = config.loss

  def make_targets(batch):
    _, height, width, _ = batch['image'].shape
    out_hw = models.train_output_hw(model, height, width, down)
    kps = batch['keypoints']
    kps = jnp.concatenate([kps[..., :2] / down, kps[..., 2:]], axis=-1)
    j = kps.shape[2]
    # The joint Gaussians are M * J objects: draw them in chunks of 8 people (memory bound).
    return multi_pose_targets(batch['boxes'] / down, batch['labels'], batch['mask'], kps,
                              num_classes=num_classes, output_hw=out_hw,
                              min_overlap=loss_cfg.min_overlap, objects_per_chunk=8 * j)

  def loss(outputs, tgt):
    return multi_pose_loss(outputs, tgt, hm_weight=loss_cfg.hm_weight,
                           wh_weight=loss_cfg.wh_weight, off_weight=loss_cfg.off_weight,
                           hp_weight=loss_cfg.hp_weight, hm_hp_weight=loss_cfg.hm_hp_weight)

  return state.make_train_step_from_objective(model, tx, make_targets, loss,
                                              lambda tgt: tgt['person_mask'].sum(), schedule)


def make_predict_fn(config: ml_collections.ConfigDict, model: nn.Module, *,
                    merge_later: bool = False) -> Callable[[dict, jax.Array], dict]:
  """Builds ``predict(variables, images) -> detections`` (model + decode, all on device).

  Official test: sigmoid on ``hm`` and ``hm_hp``, :func:`multi_pose_decode` with ``eval.K``,
  ``eval.hp_threshold`` and ``eval.hp_snap_ratio``; ``eval.flip_test`` merges the mirrored pass
  (:func:`merge_flip`, joints swapped by ``data.flip_pairs``); ``eval.nms`` soft-NMS in input
  pixels (keypoints follow their box).

  Returns:
    ``predict(variables, images)`` -> boxes [B, K, 4], scores [B, K], classes [B, K],
    keypoints [B, K, J, 2], keypoint_scores [B, K, J] in output-map coordinates (and valid
    [B, K] after NMS).
  """
  e = config.eval
  K, flip_test = e.K, e.flip_test
  heads = dict(config.model.heads)
  perm = flip_permutation(heads['hps'] // 2, config.data.flip_pairs)
  nms_fn = (nms.make_nms(e, box_scale=config.model.down_ratio) if e.nms and not merge_later
            else None)

  def predict(variables: dict, images: jax.Array) -> dict:
    if flip_test:
      images = jnp.concatenate([images, images[:, :, ::-1, :]], axis=0)
    raw = model.apply(variables, images, train=False)[-1]  # inference uses the last stack
    out = {k: (raw[k].astype(jnp.float32) if k in raw else None)
           for k in ('hm', 'wh', 'hps', 'reg', 'hm_hp', 'hp_offset')}
    out['hm'] = jax.nn.sigmoid(out['hm'])
    if out['hm_hp'] is not None:
      out['hm_hp'] = jax.nn.sigmoid(out['hm_hp'])
    if flip_test:
      out = merge_flip(out, perm)
    dets = multi_pose_decode(out['hm'], out['wh'], out['hps'], out['reg'], out['hm_hp'],
                             out['hp_offset'], K=K, hp_threshold=e.hp_threshold,
                             snap_ratio=e.hp_snap_ratio)
    return nms_fn(dets) if nms_fn is not None else dets

  return predict


def make_merge(config: ml_collections.ConfigDict) -> Callable[[dict], dict]:
  """Multi-scale merge: soft-NMS over every scale's people (keypoints follow), then the top K."""
  return nms.make_nms(config.eval)


def coco_results(dets: Mapping[str, np.ndarray], image_id: int, category_ids: Sequence[int],
                 config: ml_collections.ConfigDict) -> list[dict]:
  """COCO keypoint results of one image (official ``convert_eval_format``).

  Each person: category id, bbox xywh, score and ``keypoints`` (x, y, 1) x J, rounded to 2
  decimals with ``eval.round_results``. Entries scoring <= 0 (suppressed, padding) are left out.

  Args:
    dets: one image's detections in original pixels (boxes [K, 4], scores [K], classes [K],
      keypoints [K, J, 2]).
  """
  from centernet_jax.evaluation import coco as coco_eval

  keep = np.asarray(dets['scores']) > 0
  return coco_eval.detections_to_coco(
      np.asarray(dets['boxes'])[keep], np.asarray(dets['scores'])[keep],
      np.asarray(dets['classes'])[keep], image_id, category_ids,
      round_results=config.eval.round_results,
      keypoints=np.asarray(dets['keypoints'])[keep])


def evaluate(gt, results: Sequence[Mapping], image_ids: Sequence[int],
             config: ml_collections.ConfigDict, log: Callable[[str], object] | None = print
             ) -> dict[str, float]:
  """Box AP and keypoint AP (OKS, ``eval.oks_sigmas``) of the same results over every image.

  Returns:
    The COCO box metrics (``AP``, ...) and the keypoint metrics (``kp_AP``, ``kp_AP50``,
    ``kp_AP75``, ``kp_APm``, ``kp_APl``, ``kp_AR``, ...).
  """
  from centernet_jax.evaluation import coco as coco_eval

  metrics = coco_eval.evaluate_detections(gt, results, image_ids=image_ids, log=log)
  metrics.update(coco_eval.evaluate_keypoints(gt, results, image_ids=image_ids, log=log,
                                              oks_sigmas=tuple(config.eval.oks_sigmas)))
  return metrics
