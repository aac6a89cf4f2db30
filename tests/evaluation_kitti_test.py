"""KITTI object benchmark (evaluation/kitti.py): overlaps against brute-force oracles, the
devkit's threshold sampling and interpolation, hand-worked scenes, and random scenes against a
literal per-threshold transcription of the devkit's matching loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from centernet_jax.data.errors import DataError
from centernet_jax.evaluation import kitti as K

# --- Oracles --------------------------------------------------------------------------------------


def box2d_oracle(a, b, criterion):
  """Overlap of two xyxy boxes from the definition, one pair at a time."""
  iw = min(a[2], b[2]) - max(a[0], b[0])
  ih = min(a[3], b[3]) - max(a[1], b[1])
  if iw <= 0 or ih <= 0:
    return 0.0
  inter = iw * ih
  area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
  return inter / (area(a) + area(b) - inter if criterion == 'union' else area(a))


def _inside(px, pz, box):
  """Grid points inside a box's ground rectangle: length along (cos ry, -sin ry) in (x, z)."""
  _, width, length, x, _, z, ry = box
  u = (px - x) * math.cos(ry) - (pz - z) * math.sin(ry)
  v = (px - x) * math.sin(ry) + (pz - z) * math.cos(ry)
  return (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)


def bev_iou_grid(a, b, n=500):
  """BEV IoU by midpoint integration on an n x n grid over both boxes' extent."""
  r = max(math.hypot(a[1], a[2]), math.hypot(b[1], b[2])) / 2
  lo_x, hi_x = min(a[3], b[3]) - r, max(a[3], b[3]) + r
  lo_z, hi_z = min(a[5], b[5]) - r, max(a[5], b[5]) + r
  cx = lo_x + (np.arange(n) + 0.5) * (hi_x - lo_x) / n
  cz = lo_z + (np.arange(n) + 0.5) * (hi_z - lo_z) / n
  px, pz = np.meshgrid(cx, cz)
  inter = (_inside(px, pz, a) & _inside(px, pz, b)).sum() * (hi_x - lo_x) * (hi_z - lo_z) / n**2
  return inter / (a[1] * a[2] + b[1] * b[2] - inter)


def box3d_axis_aligned(a, b, criterion='union'):
  """Closed form for rotation_y 0 (length along x) or pi/2 (length along z)."""
  def extents(box):
    h, width, length, x, y, z, ry = box
    lx, lz = (length, width) if abs(ry) < 1e-9 else (width, length)
    return [(x - lx / 2, x + lx / 2), (y - h, y), (z - lz / 2, z + lz / 2)]
  inter = 1.0
  for (a0, a1), (b0, b1) in zip(extents(a), extents(b), strict=True):
    inter *= max(0.0, min(a1, b1) - max(a0, b0))
  vol = lambda box: box[0] * box[1] * box[2]
  return inter / (vol(a) + vol(b) - inter if criterion == 'union' else vol(a))


def ap_oracle(precision):
  """AP|R40 and AP|R11 from the published formula: mean over the recall points k of
  max(precision[k:])."""
  p = list(precision)
  return (sum(max(p[k:]) for k in range(1, 41)) / 40,
          sum(max(p[k:]) for k in range(0, 41, 4)) / 11)


# --- Scenes ---------------------------------------------------------------------------------------

CAR = dict(type='Car', truncated=0.0, occluded=0, alpha=0.2, bbox=[100.0, 100.0, 200.0, 160.0],
           dimensions=[1.5, 1.6, 3.9], location=[-2.0, 1.6, 15.0], rotation_y=0.0)
OTHER = dict(CAR, bbox=[400.0, 100.0, 480.0, 170.0], location=[4.0, 1.6, 20.0])
DONT_CARE = dict(type='DontCare', truncated=-1.0, occluded=-1, alpha=-10.0,
                 bbox=[380.0, 90.0, 500.0, 180.0], dimensions=[-1.0, -1.0, -1.0],
                 location=[-1000.0, -1000.0, -1000.0], rotation_y=-10.0)
N = 80  # with 80 counted objects the 41 sampled thresholds reach recall 0 .. 1


def det(obj, score, **changes):
  return dict(obj, score=score, **changes)


def scene(gt_objs, det_objs, n=N):
  """n identical images (the devkit matches per image and sums the counts)."""
  return ({i: list(gt_objs) for i in range(n)}, {i: list(det_objs) for i in range(n)})


def keys(metric, cls='Car'):
  return [f'{metric}_AP_{cls}_{d}{s}' for d in K.DIFFICULTIES for s in ('', '_r11')]


# --- Overlaps -------------------------------------------------------------------------------------


@pytest.mark.parametrize('seed', range(3))
@pytest.mark.parametrize('criterion', ['union', 'a'])
def test_box2d_overlap_matches_definition(seed, criterion):
  rng = np.random.default_rng(seed)
  xy = rng.uniform(0, 60, (2, 12, 2))
  boxes = [np.concatenate([p, p + rng.uniform(1, 40, p.shape)], 1) for p in xy]
  got = K.box2d_overlap(boxes[0], boxes[1], criterion)
  want = [[box2d_oracle(a, b, criterion) for b in boxes[1]] for a in boxes[0]]
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
  assert (got > 0).any() and (got == 0).any()


def _random_boxes(rng, n):
  return np.stack([rng.uniform(1, 2, n), rng.uniform(0.5, 2.5, n), rng.uniform(1, 5, n),
                   rng.uniform(-1.5, 1.5, n), rng.uniform(1, 2, n), rng.uniform(9, 12, n),
                   rng.uniform(-math.pi, math.pi, n)], 1)


@pytest.mark.parametrize('seed', range(4))
def test_bev_overlap_matches_grid_integration(seed):
  rng = np.random.default_rng(100 + seed)
  a, b = _random_boxes(rng, 6), _random_boxes(rng, 6)
  got = K.bev_overlap(a, b)
  want = np.array([[bev_iou_grid(p, q) for q in b] for p in a])
  np.testing.assert_allclose(got, want, atol=6e-3)
  assert (want > 0.05).sum() >= 6  # the boxes do overlap


@pytest.mark.parametrize('a, b, want', [
  ([1, 2, 4, 0, 1, 10, 0.3], [1, 2, 4, 0, 1, 10, 0.3], 1.0),  # identical
  ([1, 2, 4, 0, 1, 10, 0.3], [1, 2, 4, 0, 1, 10, 0.3 + math.pi], 1.0),  # turned around
  ([1, 2, 2, 0, 1, 10, 0.0], [1, 2, 2, 0, 1, 10, math.pi / 2], 1.0),  # square, quarter turn
  ([1, 2, 4, 0, 1, 10, 0.0], [1, 2, 4, 10, 1, 10, 0.0], 0.0),  # apart
  ([1, 2, 4, 0, 1, 10, 0.0], [1, 2, 4, 1, 1, 10, 0.0], 3 / 5),  # shifted along the length
  ([1, 2, 4, 0, 1, 10, 0.0], [1, 2, 4, 0, 1, 11, 0.0], 1 / 3),  # shifted across
  ([1, 2, 4, 0, 1, 10, 0.0], [1, 2, 4, 0, 1, 10, math.pi / 2], 4 / 12),  # a cross: 2x2 of 8+8
  ([1, 2, 2, 0, 1, 10, 0.0], [1, 2, 2, 0, 1, 10, math.pi / 4],  # square and its 45 degree turn
   (8 * math.sqrt(2) - 8) / (8 - (8 * math.sqrt(2) - 8))),
])
def test_bev_overlap_hand_cases(a, b, want):
  np.testing.assert_allclose(K.bev_overlap([a], [b])[0, 0], want, atol=1e-12)


@pytest.mark.parametrize('seed', range(3))
@pytest.mark.parametrize('criterion', ['union', 'a'])
def test_box3d_overlap_axis_aligned_closed_form(seed, criterion):
  rng = np.random.default_rng(200 + seed)
  a, b = _random_boxes(rng, 8), _random_boxes(rng, 8)
  a[:, 6] = rng.choice([0.0, math.pi / 2], 8)
  b[:, 6] = rng.choice([0.0, math.pi / 2], 8)
  b[:, 4] = a[:, 4] + rng.uniform(-1, 1, 8)  # partial height overlaps
  got = K.box3d_overlap(a, b, criterion)
  want = [[box3d_axis_aligned(p, q, criterion) for q in b] for p in a]
  np.testing.assert_allclose(got, want, atol=1e-12)
  assert (got > 0).sum() >= 8


def test_box3d_height_runs_up_from_y():
  """y is the bottom (y points down): a box at y=2 with h=1 spans [1, 2]."""
  a = [1.0, 2.0, 4.0, 0.0, 2.0, 10.0, 0.0]
  assert K.box3d_overlap([a], [[1.0, 2.0, 4.0, 0.0, 1.5, 10.0, 0.0]])[0, 0] == pytest.approx(1 / 3)
  assert K.box3d_overlap([a], [[1.0, 2.0, 4.0, 0.0, 1.0, 10.0, 0.0]])[0, 0] == 0.0
  assert K.box3d_overlap([a], [[1.0, 2.0, 4.0, 0.0, 2.5, 10.0, 0.0]])[0, 0] == pytest.approx(1 / 3)


def test_clip_convex_square_by_triangle():
  square = np.array([[[0, 0], [2, 0], [2, 2], [0, 2]]], np.float64)
  triangle = np.array([[[0, -1], [2, 1], [0, 3]]], np.float64)  # CCW; cuts two corners
  poly, count = K.clip_convex(square, np.array([4]), triangle)
  pts = poly[0, :count[0]]
  area = 0.5 * np.sum(pts[:, 0] * np.roll(pts[:, 1], -1) - pts[:, 1] * np.roll(pts[:, 0], -1))
  # Inside: 0 <= x <= 2, max(0, x - 1) <= y <= min(2, 3 - x): 2 + 1 square units, 5 corners.
  assert count[0] == 5 and area == pytest.approx(3.0)
  np.testing.assert_allclose(sorted(map(tuple, pts)), [(0, 0), (0, 2), (1, 0), (1, 2), (2, 1)],
                             atol=1e-12)


# --- Threshold sampling and interpolation ---------------------------------------------------------


@pytest.mark.parametrize('num_gt, num_scores, picked', [
  (1, 1, [0]),
  (4, 4, [0, 1, 2, 3]),  # few objects: every score is a point
  (10, 2, [0, 1]),
  (40, 40, list(range(40))),  # one short of 41 points: recall 1 lands on point 39
  (80, 10, [0, 1, 3, 5, 7, 9]),  # recall steps of 1/80: every other score, the last always
  (52, 10, [0, 1, 2, 3, 4, 5, 7, 8, 9]),  # i=5: 7/52 - 0.125 == 0.125 - 6/52, a tie: kept
  (80, 80, [0, 1, *range(3, 80, 2)]),
])
def test_thresholds_from_scores(num_gt, num_scores, picked):
  rng = np.random.default_rng(num_gt + num_scores)
  scores = np.sort(rng.uniform(0, 1, num_scores))[::-1]
  got = K.thresholds_from_scores(rng.permutation(scores), num_gt)
  np.testing.assert_array_equal(got, scores[picked])


@pytest.mark.parametrize('precision, want', [
  ([1.0] * 41, (1.0, 1.0)),
  ([1.0] * 21 + [0.0] * 20, (20 / 40, 6 / 11)),
  ([1.0] + [0.0] * 40, (0.0, 1 / 11)),  # one object found: only point 0
  ([0.2, 0.5, 1.0] + [0.0] * 38, (2 / 40, 1 / 11)),  # made monotone from the right
  ([0.0] * 40 + [1.0], (1.0, 1.0)),
])
def test_interpolated_ap_hand_curves(precision, want):
  np.testing.assert_allclose(K.interpolated_ap(np.array(precision)), want, atol=1e-12)


@pytest.mark.parametrize('seed', range(4))
def test_interpolated_ap_random_curves(seed):
  rng = np.random.default_rng(seed)
  p = rng.uniform(0, 1, 41) * (rng.uniform(0, 1, 41) < 0.7)
  np.testing.assert_allclose(K.interpolated_ap(p), ap_oracle(p), atol=1e-12)


def test_interpolated_ap_rejects_a_wrong_length():
  with pytest.raises(ValueError, match='41'):
    K.interpolated_ap(np.ones(40))


# --- evaluate_kitti on hand-worked scenes ---------------------------------------------------------


def test_perfect_detections_score_one_and_absent_classes_minus_one():
  gt, dets = scene([CAR], [det(CAR, 0.9)])
  out = K.evaluate_kitti(gt, dets)
  assert len(out) == 4 * 3 * 3 * 2
  for metric in ('2d', 'aos', 'bev', '3d'):
    assert [out[k] for k in keys(metric)] == [1.0] * 6
    assert [out[k] for k in keys(metric, 'Pedestrian') + keys(metric, 'Cyclist')] == [-1.0] * 12


def test_one_object_compresses_the_recall_axis_as_the_devkit():
  """A single object found perfectly lands on point 0 only: R40 0, R11 1/11."""
  out = K.evaluate_kitti(*scene([CAR], [det(CAR, 0.9)], n=1))
  assert out['2d_AP_Car_easy'] == 0.0 and out['2d_AP_Car_easy_r11'] == pytest.approx(1 / 11)


def test_missing_detections_score_zero():
  out = K.evaluate_kitti(*scene([CAR], []))
  assert [out[k] for k in keys('2d') + keys('3d')] == [0.0] * 12


@pytest.mark.parametrize('changes, overlaps, want', [
  ({'bbox': [110.0, 100.0, 210.0, 160.0]}, None, (1, 1, 1)),  # 2D IoU 90/110
  ({'bbox': [125.0, 100.0, 225.0, 160.0]}, None, (0, 1, 1)),  # 2D IoU 0.6 < 0.7
  ({'location': [-1.0, 1.6, 15.0]}, None, (1, 0, 0)),  # BEV IoU 2.9/4.9 < 0.7
  ({'location': [-2.0, 2.0, 15.0]}, None, (1, 1, 0)),  # 3D: heights overlap 1.1/1.9 < 0.7
  ({'location': [-2.0, 2.0, 15.0]}, K.CENTERNET_MIN_OVERLAPS, (1, 1, 1)),  # ... > 0.5
  ({'location': [-1.0, 1.6, 15.0]}, K.CENTERNET_MIN_OVERLAPS, (1, 1, 1)),  # 0.59 > 0.5
  ({'location': [-1.0, 2.0, 15.0]}, K.CENTERNET_MIN_OVERLAPS, (1, 1, 0)),  # 3D 0.59 x 0.58
  ({'rotation_y': math.pi / 2}, None, (1, 0, 0)),  # a cross on the ground
])
def test_minimum_overlaps(changes, overlaps, want):
  out = K.evaluate_kitti(*scene([CAR], [det(CAR, 0.9, **changes)]), min_overlaps=overlaps)
  for metric, w in zip(('2d', 'bev', '3d'), want, strict=True):
    assert [out[k] for k in keys(metric)] == [float(w)] * 6, metric


@pytest.mark.parametrize('cls, det_x1, want', [
  ('Pedestrian', 110.0, 0.0),  # IoU 1200 / 2400 = 0.5 exactly: not above the minimum
  ('Pedestrian', 109.0, 1.0),
  ('Car', 110.0, 0.0),
])
def test_the_minimum_overlap_is_exclusive(cls, det_x1, want):
  obj = dict(CAR, type=cls, bbox=[100.0, 100.0, 130.0, 160.0])
  out = K.evaluate_kitti(*scene([obj], [det(obj, 0.9, bbox=[det_x1, 100.0, det_x1 + 30, 160.0])]))
  assert out[f'2d_AP_{cls}_moderate'] == want


def test_the_minimum_overlap_is_exclusive_when_counting_false_positives():
  """A higher-scored detection at exactly the minimum overlap stays a false positive."""
  obj = dict(CAR, type='Pedestrian', bbox=[100.0, 100.0, 130.0, 160.0])
  other = dict(obj, bbox=[300.0, 100.0, 330.0, 160.0], location=[3.0, 1.6, 15.0])
  at_minimum = det(other, 0.95, bbox=[310.0, 100.0, 340.0, 160.0])  # IoU 0.5
  out = K.evaluate_kitti(*scene([obj, other], [det(obj, 0.9), at_minimum]))
  # Precision 1/2 up to recall 1/2 (points 0..20): 20 x 0.5 / 40.
  assert out['2d_AP_Pedestrian_moderate'] == 0.25


@pytest.mark.parametrize('small_type, small_height, small_score, want', [
  ('Pedestrian', 24.0, 0.9, 0.0),  # too small: ignored, yet it takes the car first (devkit)
  ('Pedestrian', 24.0, 0.7, 1.0),  # the car detection scores higher and takes it
  ('Pedestrian', 25.0, 0.9, 1.0),  # high enough: another class, never a candidate
  ('Car', 24.0, 0.9, 0.0),
])
def test_small_detections_of_any_class_can_absorb_an_object(small_type, small_height,
                                                              small_score, want):
  """The devkit's first (threshold) pass lets an ignored detection (too small, any class) take
  an object when it scores highest: the object then gives no threshold at all."""
  obj = dict(CAR, bbox=[100.0, 100.0, 200.0, 130.0])  # 30 px: counted from moderate on
  small = det(obj, small_score, type=small_type, bbox=[100.0, 103.0, 200.0, 103.0 + small_height])
  out = K.evaluate_kitti(*scene([obj], [det(obj, 0.8), small]))
  assert out['2d_AP_Car_moderate'] == want and out['2d_AP_Car_easy'] == -1.0


def test_one_detection_matches_one_object():
  """Two overlapping cars, one detection: half the objects found, precision 1 (recall 0..0.5
  covers the points 0..20)."""
  twin = dict(CAR, bbox=[105.0, 100.0, 205.0, 160.0])
  out = K.evaluate_kitti(*scene([CAR, twin], [det(CAR, 0.9, bbox=[102.0, 100.0, 202.0, 160.0])]))
  assert out['2d_AP_Car_easy'] == 0.5 and out['2d_AP_Car_easy_r11'] == pytest.approx(6 / 11)


def test_duplicate_detections_are_false_positives():
  """Image k: its car found with score s_k = 1 - k/200 and again with s_k - 0.001. At the
  threshold s_j the j + 1 true positives come with the j duplicates of the images before."""
  gt = {k: [CAR] for k in range(N)}
  score = lambda k: 1 - k / 200
  clean = {k: [det(CAR, score(k))] for k in range(N)}
  dup = {k: [det(CAR, score(k)), det(CAR, score(k) - 0.001)] for k in range(N)}
  picked = [0, 1, *range(3, N, 2)]  # the sampled thresholds (test_thresholds_from_scores)
  want = ap_oracle([(j + 1) / (2 * j + 1) for j in picked])
  assert K.evaluate_kitti(gt, clean)['2d_AP_Car_easy'] == 1.0
  out = K.evaluate_kitti(gt, dup)
  for metric in ('2d', 'bev', '3d'):
    got = (out[f'{metric}_AP_Car_moderate'], out[f'{metric}_AP_Car_moderate_r11'])
    np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize('fp_score, want', [(0.49, 1.0), (0.5, 0.5), (0.51, 0.5)])
def test_ties_in_score(fp_score, want):
  """A false positive with the true positives' score is above the threshold (score >= t)."""
  out = K.evaluate_kitti(*scene([CAR], [det(CAR, 0.5), det(OTHER, fp_score)]))
  assert out['2d_AP_Car_easy'] == want and out['2d_AP_Car_easy_r11'] == want


@pytest.mark.parametrize('dont_care, want_2d, want_bev', [
  (False, 0.5, 0.5),
  (True, 1.0, 0.5),  # the DontCare 3D box is a placeholder: BEV still counts the detection
])
def test_dont_care_regions(dont_care, want_2d, want_bev):
  gt_objs = [CAR, DONT_CARE] if dont_care else [CAR]
  out = K.evaluate_kitti(*scene(gt_objs, [det(CAR, 0.9), det(OTHER, 0.95)]))
  assert out['2d_AP_Car_easy'] == want_2d and out['bev_AP_Car_easy'] == want_bev


@pytest.mark.parametrize('cls, other_type, want', [
  ('Car', 'Van', 1.0),
  ('Car', 'Truck', 0.5),
  ('Pedestrian', 'Person_sitting', 1.0),
  ('Pedestrian', 'Van', 0.5),
  ('Cyclist', 'Person_sitting', 0.5),
])
def test_neighbouring_classes_are_ignored(cls, other_type, want):
  """A neighbour detected as the class is neither a true nor a false positive."""
  target = dict(CAR, type=cls)
  out = K.evaluate_kitti(*scene([target, dict(OTHER, type=other_type)],
                                [det(target, 0.9), det(OTHER, 0.95, type=cls)]))
  assert [out[k] for k in keys('2d', cls)] == [want] * 6


@pytest.mark.parametrize('height, occluded, truncated, want', [
  (50, 0, 0.0, (1, 1, 1)),
  (40, 0, 0.0, (1, 1, 1)),  # the minimum height itself counts
  (39.5, 0, 0.0, (-1, 1, 1)),
  (24.9, 0, 0.0, (-1, -1, -1)),
  (50, 1, 0.0, (-1, 1, 1)),
  (50, 2, 0.0, (-1, -1, 1)),
  (50, 3, 0.0, (-1, -1, -1)),
  (50, 0, 0.15, (1, 1, 1)),  # the maximum truncation itself counts
  (50, 0, 0.2, (-1, 1, 1)),
  (50, 0, 0.4, (-1, -1, 1)),
  (50, 0, 0.6, (-1, -1, -1)),
])
def test_difficulty_filtering(height, occluded, truncated, want):
  obj = dict(CAR, occluded=occluded, truncated=truncated, bbox=[100.0, 100.0, 200.0, 100 + height])
  out = K.evaluate_kitti(*scene([obj], [det(obj, 0.9)]))
  assert [out[f'2d_AP_Car_{d}'] for d in K.DIFFICULTIES] == [float(w) for w in want]


@pytest.mark.parametrize('height,scale,want', [
    (15.0, 1.0, (-1, -1, -1)),  # below every minimum on KITTI images
    (15.0, 0.5, (-1, 1, 1)),  # minima 20 / 12.5 / 12.5 px
    (20.0, 0.5, (1, 1, 1)),  # the scaled minimum itself counts
    (13.0, 0.5, (-1, 1, 1)),
    (12.0, 0.5, (-1, -1, -1)),
])
def test_min_height_scale_scales_every_difficulty(height, scale, want):
  obj = dict(CAR, bbox=[100.0, 100.0, 200.0, 100 + height])
  out = K.evaluate_kitti(*scene([obj], [det(obj, 0.9)]), min_height_scale=scale)
  assert [out[f'2d_AP_Car_{d}'] for d in K.DIFFICULTIES] == [float(w) for w in want]


def test_objects_beyond_a_difficulty_do_not_count_as_misses():
  hidden = dict(OTHER, occluded=2)
  out = K.evaluate_kitti(*scene([CAR, hidden], [det(CAR, 0.9)]))
  assert out['2d_AP_Car_easy'] == 1.0 and out['2d_AP_Car_moderate'] == 1.0
  assert out['2d_AP_Car_hard'] < 0.6  # half of them missed


@pytest.mark.parametrize('dalpha', [0.0, math.pi, math.pi / 2, -math.pi / 3, 2.5])
def test_aos_orientation_similarity(dalpha):
  out = K.evaluate_kitti(*scene([CAR], [det(CAR, 0.9, alpha=CAR['alpha'] + dalpha)]))
  assert out['2d_AP_Car_easy'] == 1.0
  np.testing.assert_allclose([out[k] for k in keys('aos')], (1 + math.cos(dalpha)) / 2,
                             atol=1e-12)


def test_aos_is_minus_one_with_an_invalid_alpha():
  gt, dets = scene([CAR], [det(CAR, 0.9)])
  dets[3] = [det(CAR, 0.9, alpha=K.INVALID_ALPHA)]
  out = K.evaluate_kitti(gt, dets)
  assert out['aos_AP_Car_easy'] == -1.0 and out['2d_AP_Car_easy'] == 1.0


def test_types_compare_case_insensitively():
  out = K.evaluate_kitti(*scene([dict(CAR, type='car')], [det(CAR, 0.9, type='CAR')]))
  assert out['2d_AP_Car_easy'] == 1.0


@pytest.mark.parametrize('gt_obj, det_obj, match', [
  ({k: v for k, v in CAR.items() if k != 'occluded'}, det(CAR, 0.9),
   r"ground truth of image 0, object 0: missing field\(s\) \['occluded'\]"),
  (CAR, CAR, r"detections of image 0, object 0: missing field\(s\) \['score'\]"),
  (CAR, det(CAR, 0.9, bbox=[1, 2, 3]), 'detections of image 0, object 0: bbox'),
  (CAR, det(CAR, float('nan')), 'detections of image 0, object 0: score'),
  (dict(CAR, location='here'), det(CAR, 0.9), 'ground truth of image 0, object 0: location'),
])
def test_malformed_objects_are_named(gt_obj, det_obj, match):
  with pytest.raises(DataError, match=match):
    K.evaluate_kitti({0: [gt_obj]}, {0: [det_obj]})


def test_detections_of_unknown_images_and_unknown_classes_are_errors():
  with pytest.raises(DataError, match=r'without ground truth, e.g. \[7\]'):
    K.evaluate_kitti({0: [CAR]}, {0: [], 7: []})
  with pytest.raises(ValueError, match='Tram'):
    K.evaluate_kitti({0: [CAR]}, {0: []}, classes=('Tram',))


# --- Label directories ----------------------------------------------------------------------------


def test_label_directory_round_trip(tmp_path):
  objs = {3: [CAR, DONT_CARE], 12: [], 7: [OTHER]}
  K.write_label_dir(str(tmp_path), {k: [det(o, 0.87) if o is not DONT_CARE else o for o in v]
                                    for k, v in objs.items()})
  back = K.read_label_dir(str(tmp_path))
  assert sorted(back) == [3, 7, 12] and back[12] == []
  assert back[3][0]['score'] == 0.87 and 'score' not in back[3][1]
  for k, v in objs.items():
    for a, b in zip(v, back[k], strict=True):
      assert a['type'] == b['type'] and a['occluded'] == b['occluded']
      np.testing.assert_allclose([*a['bbox'], *a['dimensions'], *a['location']],
                                 [*b['bbox'], *b['dimensions'], *b['location']])
  assert K.read_label_dir(str(tmp_path), [7]) == {7: back[7]}


def test_label_directory_errors_name_file_and_line(tmp_path):
  with pytest.raises(DataError, match='000005.txt'):
    K.read_label_dir(str(tmp_path), [5])
  (tmp_path / '000001.txt').write_text('Car 0 0 0 1 2 3 4 1 1 1 0 0 10 0\nCar 0 0 x\n')
  with pytest.raises(DataError, match='000001.txt:2'):
    K.read_label_dir(str(tmp_path))
  with pytest.raises(DataError, match='not found'):
    K.read_label_dir(str(tmp_path / 'nope'))


# --- Random scenes against the devkit's loops -----------------------------------------------------


def _devkit_eval_class(images, cls, level, metric, min_ov):
  """Literal transcription of the devkit's cleanData / computeStatistics / eval_class, one
  threshold at a time; returns ([41] precision, [41] orientation similarity, counted gt)."""
  cls = cls.lower()
  no_detection = -10000000

  def clean(gts, dts):
    ig, idt, n_gt = [], [], 0
    for g in gts:
      t = g['type'].lower()
      valid = (1 if t == cls else 0 if (cls, t) in (('pedestrian', 'person_sitting'),
                                                     ('car', 'van')) else -1)
      ignore = (g['occluded'] > K.MAX_OCCLUSION[level] or g['truncated'] > K.MAX_TRUNCATION[level]
                or g['bbox'][3] - g['bbox'][1] < K.MIN_HEIGHT[level])
      if valid == 1 and not ignore:
        ig.append(0)
        n_gt += 1
      elif valid == 0 or (ignore and valid == 1):
        ig.append(1)
      else:
        ig.append(-1)
    for d in dts:
      height = int(abs(d['bbox'][1] - d['bbox'][3]))
      idt.append(1 if height < K.MIN_HEIGHT[level] else 0 if d['type'].lower() == cls else -1)
    return ig, idt, n_gt

  def statistics(gts, dts, ov, ov_a, ig, idt, compute_fp, thresh=0.0):
    tp = fp = fn = 0
    v, delta = [], []
    assigned = [False] * len(dts)
    low = [compute_fp and d['score'] < thresh for d in dts]
    for i, g in enumerate(gts):
      if ig[i] == -1:
        continue
      det_idx, valid_detection, max_overlap, assigned_ignored = -1, no_detection, 0.0, False
      for j, d in enumerate(dts):
        if idt[j] == -1 or assigned[j] or low[j]:
          continue
        o = ov[j][i]
        if not compute_fp and o > min_ov and d['score'] > valid_detection:
          det_idx, valid_detection = j, d['score']
        elif compute_fp and o > min_ov and (o > max_overlap or assigned_ignored) and idt[j] == 0:
          max_overlap, det_idx, valid_detection, assigned_ignored = o, j, 1, False
        elif compute_fp and o > min_ov and valid_detection == no_detection and idt[j] == 1:
          det_idx, valid_detection, assigned_ignored = j, 1, True
      if valid_detection == no_detection and ig[i] == 0:
        fn += 1
      elif valid_detection != no_detection and (ig[i] == 1 or idt[det_idx] == 1):
        assigned[det_idx] = True
      elif valid_detection != no_detection:
        tp += 1
        v.append(dts[det_idx]['score'])
        delta.append(g['alpha'] - dts[det_idx]['alpha'])
        assigned[det_idx] = True
    if compute_fp:
      fp = sum(not (assigned[j] or idt[j] in (-1, 1) or low[j]) for j in range(len(dts)))
      dont_care = [g for g in gts if g['type'].lower() == 'dontcare']
      for k in range(len(dont_care)):
        for j in range(len(dts)):
          if not (assigned[j] or idt[j] in (-1, 1) or low[j]) and ov_a[j][k] > min_ov:
            assigned[j] = True
            fp -= 1
    return tp, fp, fn, sum((1 + math.cos(x)) / 2 for x in delta), v

  cleaned = [clean(gts, dts) for gts, dts, _ in images]
  num_gt = sum(c[2] for c in cleaned)
  scores = []
  for (gts, dts, ovs), (ig, idt, _) in zip(images, cleaned, strict=True):
    scores += statistics(gts, dts, *ovs[metric], ig, idt, False)[4]
  precision, similarity = [0.0] * 41, [0.0] * 41
  for t, thresh in enumerate(K.thresholds_from_scores(scores, num_gt)):
    tp = fp = 0
    sim = 0.0
    for (gts, dts, ovs), (ig, idt, _) in zip(images, cleaned, strict=True):
      a, b, _, s, _ = statistics(gts, dts, *ovs[metric], ig, idt, True, thresh)
      tp, fp = tp + a, fp + b
      sim += s if a + b > 0 else 0.0
    precision[t] = tp / (tp + fp)
    similarity[t] = sim / (tp + fp)
  return precision, similarity, num_gt


TYPES = ('Car', 'Car', 'Car', 'Van', 'Truck', 'Pedestrian', 'Pedestrian', 'Person_sitting',
         'Cyclist', 'DontCare')


def _random_scene(rng, num_images):
  gt, dets = {}, {}
  for k in range(num_images):
    gts, dts = [], []
    for _ in range(rng.integers(1, 6)):
      x1, y1 = rng.uniform(0, 300, 2)
      height = rng.choice([20, 30, 45, 70]) * rng.uniform(0.9, 1.1)
      box = [x1, y1, x1 + rng.uniform(20, 120), y1 + height]
      obj = dict(type=str(rng.choice(TYPES)),
                 truncated=float(rng.choice([0, 0.1, 0.2, 0.4, 0.6])),
                 occluded=int(rng.integers(0, 4)), alpha=float(rng.uniform(-3, 3)), bbox=box,
                 dimensions=list(rng.uniform([1.4, 0.5, 0.8], [1.8, 1.8, 4.5])),
                 location=[float(rng.uniform(-4, 4)), float(rng.uniform(1.4, 1.8)),
                           float(rng.uniform(8, 14))], rotation_y=float(rng.uniform(-3, 3)))
      gts.append(obj)
      for _ in range(rng.integers(0, 3)):  # zero to two detections around it
        jitter = lambda v, s: [float(a) + rng.normal(0, s) for a in v]
        dts.append(dict(obj, bbox=jitter(box, 4), location=jitter(obj['location'], 0.3),
                        dimensions=jitter(obj['dimensions'], 0.1),
                        alpha=obj['alpha'] + rng.normal(0, 0.5), score=round(rng.uniform(), 1),
                        type=str(rng.choice(('Car', 'Pedestrian', 'Cyclist', obj['type'])))))
    for d in dts:
      if d['type'] == 'DontCare':
        d['type'] = 'Car'
    rng.shuffle(dts)
    gt[k], dets[k] = gts, dts
  return gt, dets


def _oracle_overlaps(gts, dts):
  box3d = lambda objs: np.array([[*o['dimensions'], *o['location'], o['rotation_y']]
                                 for o in objs]).reshape(-1, 7)
  bbox = lambda objs: np.array([o['bbox'] for o in objs]).reshape(-1, 4)
  dc = [o for o in gts if o['type'] == 'DontCare']
  return {'2d': (K.box2d_overlap(bbox(dts), bbox(gts)),
                 K.box2d_overlap(bbox(dts), bbox(dc), 'a')),
          'bev': (K.bev_overlap(box3d(dts), box3d(gts)),
                  K.bev_overlap(box3d(dts), box3d(dc), 'a')),
          '3d': (K.box3d_overlap(box3d(dts), box3d(gts)),
                 K.box3d_overlap(box3d(dts), box3d(dc), 'a'))}


@pytest.mark.parametrize('seed', range(3))
def test_random_scenes_match_the_devkit_loops(seed):
  rng = np.random.default_rng(seed)
  gt, dets = _random_scene(rng, 16)
  overlaps = K.CENTERNET_MIN_OVERLAPS if seed == 2 else K.MIN_OVERLAPS
  got = K.evaluate_kitti(gt, dets, min_overlaps=overlaps)
  images = [(gt[k], dets[k], _oracle_overlaps(gt[k], dets[k])) for k in gt]
  counted = 0
  for metric in K.METRICS:
    for cls in K.CLASSES:
      for level, name in enumerate(K.DIFFICULTIES):
        precision, sim, num_gt = _devkit_eval_class(images, cls, level, metric,
                                                    overlaps[metric][cls])
        counted += num_gt > 0
        want = ap_oracle(precision) if num_gt else (-1.0, -1.0)
        key = f'{metric}_AP_{cls}_{name}'
        np.testing.assert_allclose((got[key], got[key + '_r11']), want, atol=1e-12, err_msg=key)
        if metric == '2d':
          want = ap_oracle(sim) if num_gt else (-1.0, -1.0)
          key = f'aos_AP_{cls}_{name}'
          np.testing.assert_allclose((got[key], got[key + '_r11']), want, atol=1e-12,
                                     err_msg=key)
  assert counted >= 15
  assert 0 < got['2d_AP_Car_hard'] < 1
