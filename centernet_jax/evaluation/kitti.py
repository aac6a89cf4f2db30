"""The KITTI object benchmark in Python: 2D AP, AOS, bird's-eye-view AP and 3D AP by difficulty.

Reproduces the official devkit (``evaluate_object.cpp``; official CenterNet runs the same
procedure as ``tools/kitti_eval/evaluate_object_3d_offline.cpp``, docs/parity.md 4.13), per class
and difficulty (easy / moderate / hard):

- Ground truth counts when its type is the class, its 2D box is at least 40 / 25 / 25 px high,
  its occlusion at most 0 / 1 / 2 and its truncation at most 0.15 / 0.3 / 0.5. Objects of the
  class failing these, and the neighbouring class (Van for Car, Person_sitting for Pedestrian),
  are ignored: a detection matched to them is neither a true nor a false positive. Detections
  less high than the minimum are ignored too, whatever their type (never false positives).
- A detection matches when its overlap exceeds the class's minimum: ``MIN_OVERLAPS`` (the
  devkit: Car 0.7, Pedestrian and Cyclist 0.5, for 2D, BEV and 3D alike) by default;
  ``CENTERNET_MIN_OVERLAPS`` is the looser table of CenterNet's offline tool (BEV and 3D at
  0.5 / 0.25 / 0.25), which its published BEV numbers use. Unmatched detections inside a
  DontCare region (more than the minimum of their own area under the metric's overlap) are
  not false positives; the devkit's DontCare 3D boxes are placeholders (location -1000), so in
  practice only 2D detections are excused.
- Score thresholds are sampled from the scores of the true positives (41 points, the devkit's
  nearest-recall rule), precision (and orientation similarity, ``(1 + cos(dalpha)) / 2`` per
  2D true positive, 0 per false positive) is computed at each, made monotone from the right,
  and averaged over the points 1..40 (``AP|R40``, the benchmark since 2019) or 0, 4, ..., 40
  (``AP|R11``, the older benchmark and CenterNet's offline tool).

Devkit behaviours kept on purpose: the i-th point is the i-th sampled threshold, so with fewer
than about 40 counted objects the recall axis is compressed (a single object found perfectly
scores AP|R40 0 and AP|R11 1/11); a small detection of another class may absorb a ground-truth
object (it is an ignored detection). Where we differ: every image of the ground truth is
evaluated (the devkit only those with a result file), a class without detections scores 0 (the
devkit prints nothing), and values with no counted ground truth are -1 (AP undefined), as is
AOS when any detection has the devkit's invalid alpha -10.

Label files (one per image, ``<id:06d>.txt``) are read and written with
:mod:`centernet_jax.data.kitti`'s parser; this module adds the per-directory helpers. Objects
are dicts: type, truncated, occluded, alpha, bbox [x1, y1, x2, y2], dimensions [h, w, l] (m),
location [x, y, z] (m, the bottom centre, camera coordinates), rotation_y, and score
(detections). 3D boxes inside are rows ``[h, w, l, x, y, z, rotation_y]`` (label-file order).
No TensorFlow or JAX here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from centernet_jax.data.errors import DataError
from centernet_jax.data.kitti import read_label_file, write_label_file

CLASSES = ('Car', 'Pedestrian', 'Cyclist')
DIFFICULTIES = ('easy', 'moderate', 'hard')
METRICS = ('2d', 'bev', '3d')
# evaluate_object.cpp MIN_HEIGHT, MAX_OCCLUSION, MAX_TRUNCATION per difficulty.
MIN_HEIGHT = (40, 25, 25)
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.3, 0.5)
_DEVKIT = {'Car': 0.7, 'Pedestrian': 0.5, 'Cyclist': 0.5}
MIN_OVERLAPS = {m: dict(_DEVKIT) for m in METRICS}  # the devkit's MIN_OVERLAP
_LOOSE = {'Car': 0.5, 'Pedestrian': 0.25, 'Cyclist': 0.25}
CENTERNET_MIN_OVERLAPS = {'2d': dict(_DEVKIT), 'bev': dict(_LOOSE), '3d': dict(_LOOSE)}
NEIGHBOURS = {'car': 'van', 'pedestrian': 'person_sitting'}  # ignored, not false positives
N_SAMPLE_PTS = 41  # recall points 0, 1/40, ..., 1
INVALID_ALPHA = -10.0  # a detection without orientation: no AOS at all (devkit)
_MAX_VERTICES = 16  # polygon buffer; two convex quadrilaterals intersect in at most 8
_CHUNK = 65536  # box pairs clipped at once


# --- Label directories -----------------------------------------------------------------------


def read_label_dir(directory: str, image_ids: Sequence[int] | None = None
                   ) -> dict[int, list[dict]]:
  """Reads ``<directory>/<id:06d>.txt`` label (or result) files.

  Args:
    directory: the folder.
    image_ids: the images to read (a missing file is an error); None: every ``<digits>.txt``.

  Returns:
    image id -> its objects in file order.

  Raises:
    DataError: a missing file or a malformed line (named with the file and line number).
  """
  if image_ids is None:
    if not os.path.isdir(directory):
      raise DataError(f'label directory not found: {directory}')
    names = sorted(n for n in os.listdir(directory) if n.endswith('.txt') and n[:-4].isdigit())
    image_ids = [int(n[:-4]) for n in names]
  return {int(i): read_label_file(os.path.join(directory, f'{int(i):06d}.txt'))
          for i in image_ids}


def write_label_dir(directory: str, objects: Mapping[int, Sequence[dict]]) -> None:
  """Writes one ``<id:06d>.txt`` per image (empty for no objects), 2 decimals as official."""
  os.makedirs(directory, exist_ok=True)
  for image_id, objs in objects.items():
    write_label_file(os.path.join(directory, f'{int(image_id):06d}.txt'), objs)


# --- Overlaps ----------------------------------------------------------------------------------


def _ratio(inter: np.ndarray, denom: np.ndarray) -> np.ndarray:
  """inter / denom, 0 where there is no intersection or the denominator is not positive."""
  ok = (inter > 0) & (denom > 0)
  return np.where(ok, inter / np.where(ok, denom, 1.0), 0.0)


def box2d_overlap(a: np.ndarray, b: np.ndarray, criterion: str = 'union') -> np.ndarray:
  """Overlap of 2D boxes (devkit ``imageBoxOverlap``).

  Args:
    a: [N, 4] xyxy pixels. b: [M, 4].
    criterion: 'union' (IoU) or 'a' (intersection over the area of the ``a`` box).

  Returns:
    [N, M] float64.
  """
  a = np.asarray(a, np.float64).reshape(-1, 4)
  b = np.asarray(b, np.float64).reshape(-1, 4)
  w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
  h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
  inter = np.where((w > 0) & (h > 0), w * h, 0.0)
  area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
  area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
  return _ratio(inter, _denominator(inter, area_a, area_b, criterion))


def _denominator(inter, size_a, size_b, criterion: str):
  if criterion == 'union':
    return size_a + size_b - inter
  if criterion == 'a':
    return np.broadcast_to(size_a, inter.shape)
  raise ValueError(f"criterion must be 'union' or 'a', got {criterion!r}")


def bev_corners(boxes: np.ndarray) -> np.ndarray:
  """Bird's-eye-view corners of 3D boxes, counter-clockwise in the (x, z) plane.

  Args:
    boxes: [N, 7] (h, w, l, x, y, z, rotation_y); the length l lies along
      (cos rotation_y, -sin rotation_y) in (x, z), the width across (devkit ``toPolygon``).

  Returns:
    [N, 4, 2] (x, z) float64.
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 7)
  width, length, x, z, ry = (boxes[:, k, None] for k in (1, 2, 3, 5, 6))
  dl = length / 2 * np.array([1, 1, -1, -1])
  dw = width / 2 * np.array([1, -1, -1, 1])
  c, s = np.cos(ry), np.sin(ry)
  corners = np.stack([x + c * dl + s * dw, z - s * dl + c * dw], -1)
  flip = _signed_area(corners, np.full(len(corners), 4)) < 0  # negative sizes mirror it
  return np.where(flip[:, None, None], corners[:, ::-1], corners)


def _signed_area(poly: np.ndarray, count: np.ndarray) -> np.ndarray:
  """Shoelace area of [P, V, 2] polygons using their first ``count`` vertices (CCW > 0)."""
  live = np.arange(poly.shape[1])[None] < count[:, None]
  p = np.where(live[..., None], poly, poly[:, :1])  # padding repeats vertex 0: adds nothing
  q = np.roll(p, -1, axis=1)
  area = 0.5 * (p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0]).sum(1)
  return np.where(count >= 3, area, 0.0)


def _side(edge, origin, p):
  """Cross product edge x (p - origin): > 0 left of the edge (inside a CCW polygon)."""
  return edge[..., 0] * (p[..., 1] - origin[..., 1]) - edge[..., 1] * (p[..., 0] - origin[..., 0])


def clip_convex(subject: np.ndarray, count: np.ndarray, clip: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
  """Sutherland-Hodgman: clips each convex polygon by a convex counter-clockwise polygon.

  Vectorised over P pairs; a vertex on an edge's line counts as inside.

  Args:
    subject: [P, V, 2] polygons, the first ``count`` vertices used, counter-clockwise.
    count: [P] int vertex counts.
    clip: [P, K, 2] counter-clockwise convex polygons (all K vertices used).

  Returns:
    ([P, 16, 2] the intersections, [P] their vertex counts).
  """
  p_count = subject.shape[0]
  poly = np.zeros((p_count, _MAX_VERTICES, 2))
  poly[:, :subject.shape[1]] = subject[:, :_MAX_VERTICES]
  count = np.minimum(np.asarray(count), _MAX_VERTICES)
  idx = np.arange(_MAX_VERTICES)
  for e in range(clip.shape[1]):
    c0, c1 = clip[:, e, None], clip[:, (e + 1) % clip.shape[1], None]
    edge = c1 - c0
    prev = np.take_along_axis(poly, ((idx[None] - 1) % np.maximum(count, 1)[:, None])[..., None],
                              axis=1)
    d_cur, d_prev = _side(edge, c0, poly), _side(edge, c0, prev)
    live = idx[None] < count[:, None]
    cross = live & (d_prev * d_cur < 0)  # strictly: a vertex on the line is not doubled
    t = d_prev / np.where(cross, d_prev - d_cur, 1.0)
    inter = prev + t[..., None] * (poly - prev)
    # Per input vertex: the crossing into / out of the half-plane (if any), then the vertex.
    out = np.stack([inter, poly], 2).reshape(p_count, 2 * _MAX_VERTICES, 2)
    ok = np.stack([cross, live & (d_cur >= 0)], 2).reshape(p_count, 2 * _MAX_VERTICES)
    order = np.argsort(~ok, axis=1, kind='stable')[:, :_MAX_VERTICES]
    poly = np.take_along_axis(out, order[..., None], axis=1)
    count = np.minimum(ok.sum(1), _MAX_VERTICES)
  return poly, count


def bev_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Areas of intersection of the bird's-eye-view rectangles of 3D boxes.

  Args:
    a: [N, 7] (h, w, l, x, y, z, rotation_y). b: [M, 7].

  Returns:
    [N, M] float64 square metres.
  """
  a = np.asarray(a, np.float64).reshape(-1, 7)
  b = np.asarray(b, np.float64).reshape(-1, 7)
  out = np.zeros((len(a), len(b)))
  radius = lambda x: 0.5 * np.hypot(x[:, 1], x[:, 2])
  dist = np.hypot(a[:, None, 3] - b[None, :, 3], a[:, None, 5] - b[None, :, 5])
  ii, jj = np.nonzero(dist <= radius(a)[:, None] + radius(b)[None, :])  # circles touch
  pa, pb = bev_corners(a), bev_corners(b)
  for s in range(0, len(ii), _CHUNK):
    i, j = ii[s:s + _CHUNK], jj[s:s + _CHUNK]
    poly, count = clip_convex(pa[i], np.full(len(i), 4), pb[j])
    out[i, j] = np.abs(_signed_area(poly, count))
  return out


def _bev_ratio(inter, a, b, criterion):
  area = lambda x: np.abs(x[:, 1] * x[:, 2])
  return _ratio(inter, _denominator(inter, area(a)[:, None], area(b)[None], criterion))


def _box3d_ratio(inter, a, b, criterion):
  top = np.minimum(a[:, None, 4], b[None, :, 4])  # y points down: the box spans [y - h, y]
  bottom = np.maximum(a[:, None, 4] - a[:, None, 0], b[None, :, 4] - b[None, :, 0])
  inter = inter * np.maximum(top - bottom, 0.0)
  vol = lambda x: np.abs(x[:, 0] * x[:, 1] * x[:, 2])
  return _ratio(inter, _denominator(inter, vol(a)[:, None], vol(b)[None], criterion))


def bev_overlap(a: np.ndarray, b: np.ndarray, criterion: str = 'union') -> np.ndarray:
  """Bird's-eye-view overlap of 3D boxes [N, 7] and [M, 7] -> [N, M] (devkit
  ``groundBoxOverlap``); criterion 'union' (IoU) or 'a' (over the area of ``a``)."""
  a = np.asarray(a, np.float64).reshape(-1, 7)
  b = np.asarray(b, np.float64).reshape(-1, 7)
  return _bev_ratio(bev_intersection(a, b), a, b, criterion)


def box3d_overlap(a: np.ndarray, b: np.ndarray, criterion: str = 'union') -> np.ndarray:
  """3D overlap of boxes [N, 7] and [M, 7] -> [N, M] (devkit ``box3DOverlap``): the BEV
  intersection times the overlap of [y - h, y]; criterion 'union' (IoU) or 'a' (over a)."""
  a = np.asarray(a, np.float64).reshape(-1, 7)
  b = np.asarray(b, np.float64).reshape(-1, 7)
  return _box3d_ratio(bev_intersection(a, b), a, b, criterion)


# --- Precision sampling ------------------------------------------------------------------------


def thresholds_from_scores(scores: Sequence[float], num_gt: int) -> np.ndarray:
  """Score thresholds for the 41 recall points (devkit ``getThresholds``).

  Walking the true-positive scores from the highest, a score is kept when its recall
  ``(i + 1) / num_gt`` is at least as close to the next recall point as the following
  score's; the last score is always kept.

  Args:
    scores: the scores of the true positives (first matching pass).
    num_gt: the counted ground-truth objects.

  Returns:
    [T] float64 thresholds, descending.
  """
  v = sorted((float(s) for s in scores), reverse=True)
  kept, current = [], 0.0
  for i, score in enumerate(v):
    last = i == len(v) - 1
    left = (i + 1) / num_gt
    right = left if last else (i + 2) / num_gt
    if not last and right - current < current - left:
      continue
    kept.append(score)
    current += 1.0 / (N_SAMPLE_PTS - 1.0)
  return np.array(kept, np.float64)


def interpolated_ap(precision: np.ndarray) -> tuple[float, float]:
  """(AP|R40, AP|R11) of a 41-point precision (or similarity) curve.

  The curve is made monotone from the right (``p[i] = max(p[i:])``), then averaged over the
  points 1..40 and over 0, 4, ..., 40.
  """
  p = np.asarray(precision, np.float64)
  if p.shape != (N_SAMPLE_PTS,):
    raise ValueError(f'expected {N_SAMPLE_PTS} precision values, got shape {p.shape}')
  p = np.maximum.accumulate(p[::-1])[::-1]
  return float(p[1:].sum() / 40), float(p[::4].sum() / 11)


# --- Matching ------------------------------------------------------------------------------------


# Numeric fields of an object in the order of the array row below, with their sizes.
_LAYOUT = (('truncated', 1), ('occluded', 1), ('alpha', 1), ('score', 1), ('bbox', 4),
           ('dimensions', 3), ('location', 3), ('rotation_y', 1))


def _numbers(obj: Mapping, field: str, size: int, at: str) -> list[float]:
  value = obj[field]
  try:
    v = [float(x) for x in value] if size > 1 else [float(value)]
  except (TypeError, ValueError):
    v = []
  if len(v) != size or not all(map(math.isfinite, v)):
    raise DataError(f'{at}: {field} is {value!r}, expected {size} finite number(s)')
  return v


def _to_arrays(objects: Sequence[Mapping], where: str, detections: bool) -> dict:
  """Object dicts -> arrays (checked: missing or malformed fields are named). Detections may
  leave out truncated and occluded (the devkit skips them)."""
  need = ['type', 'alpha', 'bbox', 'dimensions', 'location', 'rotation_y']
  need += ['score'] if detections else ['truncated', 'occluded']
  types, rows = [], []
  for k, obj in enumerate(objects):
    at = f'{where}, object {k}'
    missing = [f for f in need if f not in obj]
    if missing:
      raise DataError(f'{at}: missing field(s) {missing}')
    types.append(str(obj['type']).lower())  # the devkit compares case-insensitively
    rows.append([x for field, size in _LAYOUT
                 for x in (_numbers(obj, field, size, at) if field in obj else [0.0] * size)])
  rows = np.array(rows, np.float64).reshape(-1, 15)
  return {'type': np.array(types, dtype=object), 'truncated': rows[:, 0],
          'occluded': rows[:, 1], 'alpha': rows[:, 2], 'score': rows[:, 3],
          'bbox': rows[:, 4:8], 'box3d': rows[:, 8:15]}


def _image_overlaps(g: dict, d: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """metric -> ([G, D] IoU with every ground truth, [C, D] over the detection with the C
  DontCare regions)."""
  dc = g['type'] == 'dontcare'
  inter = bev_intersection(d['box3d'], g['box3d'])
  out = {'2d': (box2d_overlap(d['bbox'], g['bbox']), box2d_overlap(d['bbox'], g['bbox'][dc], 'a'))}
  for metric, ratio in (('bev', _bev_ratio), ('3d', _box3d_ratio)):
    out[metric] = (ratio(inter, d['box3d'], g['box3d'], 'union'),
                   ratio(inter[:, dc], d['box3d'], g['box3d'][dc], 'a'))
  return {m: (iou.T, over_dc.T) for m, (iou, over_dc) in out.items()}


def _clean(g: dict, d: dict, cls: str, level: int, height_scale: float = 1.0
           ) -> tuple[np.ndarray, np.ndarray]:
  """Devkit ``cleanData``: ground truth 0 counted / 1 ignored / -1 other; detections 0 the
  class / 1 too small (any type) / -1 other. ``height_scale`` multiplies ``MIN_HEIGHT``."""
  min_height = MIN_HEIGHT[level] * height_scale
  valid = g['type'] == cls
  neighbour = (g['type'] == NEIGHBOURS[cls]) if cls in NEIGHBOURS else np.zeros_like(valid)
  height = g['bbox'][:, 3] - g['bbox'][:, 1]
  hard = ((g['occluded'] > MAX_OCCLUSION[level]) | (g['truncated'] > MAX_TRUNCATION[level])
          | (height < min_height))
  ig = np.where(valid & ~hard, 0, np.where(neighbour | valid, 1, -1))
  # The devkit truncates this height to an integer: the same test, the minima being integers.
  det_height = np.abs(d['bbox'][:, 1] - d['bbox'][:, 3])
  idt = np.where(det_height < min_height, 1, np.where(d['type'] == cls, 0, -1))
  return ig, idt


def _true_positive_scores(ov, ig, idt, score, min_ov) -> list[float]:
  """First pass: each ground truth takes the highest-scored free detection above the minimum
  overlap; returns the scores of the true positives."""
  assigned = np.zeros(len(score), bool)
  out = []
  for i in np.flatnonzero(ig != -1):
    cand = (idt != -1) & ~assigned & (ov[i] > min_ov)
    if cand.any():
      j = int(np.argmax(np.where(cand, score, -np.inf)))  # first of equal scores
      assigned[j] = True
      if ig[i] == 0 and idt[j] == 0:
        out.append(float(score[j]))
  return out


def _statistics(ov, over_dc, ig, idt, g_alpha, d_alpha, score, min_ov, thresholds):
  """Second pass at every threshold at once (devkit ``computeStatistics`` with FP): each
  ground truth takes the free valid detection of largest overlap (the first of equal ones).
  Returns [T] true and false positives and summed orientation similarity.

  Left out as they cannot change AP: the devkit's false negatives, and its matching of an
  ignored (too small) detection to a ground truth no valid detection overlaps (ignored
  detections are never false positives, and they absorb only objects no valid detection
  could take).
  """
  keep = score[None, :] >= thresholds[:, None]
  tp, sim = np.zeros(len(thresholds)), np.zeros(len(thresholds))
  if not keep.size:  # no threshold, or no detection
    return tp, tp, sim
  assigned = np.zeros(keep.shape, bool)
  rows = np.arange(len(thresholds))
  for i in np.flatnonzero(ig != -1):
    valid = keep & ~assigned & (ov[i] > min_ov)[None] & (idt == 0)[None]
    has_valid = valid.any(1)
    j = np.argmax(np.where(valid, ov[i], -np.inf), 1)
    assigned[rows[has_valid], j[has_valid]] = True
    if ig[i] == 0:
      tp += has_valid
      sim += np.where(has_valid, (1.0 + np.cos(g_alpha[i] - d_alpha[j])) / 2.0, 0.0)
  free = keep & ~assigned & (idt == 0)[None]
  stuff = free & (over_dc > min_ov).any(0)[None]  # inside a DontCare region: not counted
  return tp, (free & ~stuff).sum(1), sim


def _eval_class(images, cleaned, metric: str, min_ov: float) -> tuple[np.ndarray, np.ndarray]:
  """Devkit ``eval_class`` for one class and difficulty (``cleaned``: :func:`_clean` of each
  image): ([41] precision, [41] orientation similarity)."""
  scores, num_gt = [], 0
  for (_, d, overlaps), (ig, idt) in zip(images, cleaned, strict=True):
    num_gt += int((ig == 0).sum())
    if (ig != -1).any():
      scores += _true_positive_scores(overlaps[metric][0], ig, idt, d['score'], min_ov)
  thresholds = thresholds_from_scores(scores, num_gt)[:N_SAMPLE_PTS]
  tp, fp, sim = (np.zeros(len(thresholds)) for _ in range(3))
  for (g, d, overlaps), (ig, idt) in zip(images, cleaned, strict=True):
    if (ig != -1).any() or (idt == 0).any():
      t, f, s = _statistics(*overlaps[metric], ig, idt, g['alpha'], d['alpha'], d['score'],
                               min_ov, thresholds)
      tp, fp, sim = tp + t, fp + f, sim + s
  precision, similarity = np.zeros(N_SAMPLE_PTS), np.zeros(N_SAMPLE_PTS)
  precision[:len(thresholds)] = _ratio(tp, tp + fp)
  similarity[:len(thresholds)] = _ratio(sim, tp + fp)
  return precision, similarity


def evaluate_kitti(gt: Mapping[int, Sequence[Mapping]], dets: Mapping[int, Sequence[Mapping]],
                   classes: Sequence[str] = CLASSES,
                   min_overlaps: Mapping[str, Mapping[str, float]] | None = None,
                   min_height_scale: float = 1.0) -> dict[str, float]:
  """KITTI object benchmark of detections (module docstring for the rules).

  Args:
    gt: image id -> ground-truth objects (every type, DontCare included).
    dets: image id -> detections (with ``score``); images of ``gt`` absent here have none.
    classes: the classes evaluated (KITTI type names, any case).
    min_overlaps: metric ('2d', 'bev', '3d') -> class -> minimum overlap; default
      ``MIN_OVERLAPS`` (the devkit); ``CENTERNET_MIN_OVERLAPS`` for CenterNet's offline tool.
    min_height_scale: multiplies the difficulties' minimum box heights (``MIN_HEIGHT``, in
      pixels of 1242 x 375 KITTI images); 1 is the benchmark. Images at another scale (the
      built-in ``shapes_ddd`` set: ``shapes_ddd.pixel_scale``) select the same depths with it.

  Returns:
    ``{2d,aos,bev,3d}_AP_<class>_<difficulty>`` (AP|R40) and the same names ending in ``_r11``
    (AP|R11), fractions in [0, 1]; -1 where no ground truth of the class counts at that
    difficulty (e.g. a class absent from ``gt``), and for AOS when a detection has alpha -10.

  Raises:
    DataError: detections of an image not in ``gt``, or a malformed object (named by image
      and index). ValueError: a class missing from ``min_overlaps``.
  """
  min_overlaps = MIN_OVERLAPS if min_overlaps is None else min_overlaps
  missing = [f'{m}/{c}' for m in METRICS for c in classes if c not in min_overlaps.get(m, {})]
  if missing:
    raise ValueError(f'min_overlaps has no value for {missing}')
  extra = [i for i in dets if i not in gt]
  if extra:
    raise DataError(f'detections for {len(extra)} image id(s) without ground truth, e.g. '
                    f'{extra[:5]}')
  images = []
  for image_id, objects in gt.items():
    g = _to_arrays(objects, f'ground truth of image {image_id!r}', detections=False)
    d = _to_arrays(dets.get(image_id, ()), f'detections of image {image_id!r}', detections=True)
    images.append((g, d, _image_overlaps(g, d)))
  with_aos = not any((d['alpha'] == INVALID_ALPHA).any() for _, d, _ in images)
  out = {}
  for cls in classes:
    for level, name in enumerate(DIFFICULTIES):
      cleaned = [_clean(g, d, cls.lower(), level, min_height_scale) for g, d, _ in images]
      counted = sum(int((ig == 0).sum()) for ig, _ in cleaned) > 0
      for metric in METRICS:
        precision, similarity = _eval_class(images, cleaned, metric,
                                            float(min_overlaps[metric][cls]))
        key = f'{metric}_AP_{cls}_{name}'
        out[key], out[key + '_r11'] = interpolated_ap(precision) if counted else (-1.0, -1.0)
        if metric == '2d':
          key = f'aos_AP_{cls}_{name}'
          ok = counted and with_aos
          out[key], out[key + '_r11'] = interpolated_ap(similarity) if ok else (-1.0, -1.0)
  order = {m: k for k, m in enumerate(('2d', 'aos', 'bev', '3d'))}
  return dict(sorted(out.items(), key=lambda kv: order[kv[0].split('_', 1)[0]]))


__all__ = [
  'CENTERNET_MIN_OVERLAPS', 'CLASSES', 'DIFFICULTIES', 'MIN_OVERLAPS', 'bev_corners',
  'bev_intersection', 'bev_overlap', 'box2d_overlap', 'box3d_overlap', 'clip_convex',
  'evaluate_kitti', 'interpolated_ap', 'read_label_dir', 'thresholds_from_scores',
  'write_label_dir',
]
