"""Tests for centernet_jax.targets against a per-object numpy oracle of the
official `ctdet.py` / `utils/image.py` (float64, one object at a time)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centernet_jax import targets


def _radius_oracle(height, width, min_overlap=0.7):
  """Official CenterNet gaussian_radius (the '+sqrt, / 2' variant), float64."""
  a1, b1 = 1, height + width
  c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
  r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
  a2, b2 = 4, 2 * (height + width)
  c2 = (1 - min_overlap) * width * height
  r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
  a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
  c3 = (min_overlap - 1) * width * height
  r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
  return min(r1, r2, r3)


def _draw_oracle(heatmap, center, radius):
  """Official draw_umich_gaussian: window slicing and element-wise max."""
  diameter = 2 * radius + 1
  sigma = diameter / 6
  y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
  gaussian = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
  gaussian[gaussian < np.finfo(gaussian.dtype).eps * gaussian.max()] = 0
  cx, cy = int(center[0]), int(center[1])
  height, width = heatmap.shape
  left, right = min(cx, radius), min(width - cx, radius + 1)
  top, bottom = min(cy, radius), min(height - cy, radius + 1)
  window = heatmap[cy - top:cy + bottom, cx - left:cx + right]
  g = gaussian[radius - top:radius + bottom, radius - left:radius + right]
  if min(g.shape) > 0 and min(window.shape) > 0:
    np.maximum(window, g, out=window)


def _ctdet_oracle(boxes, labels, mask, num_classes, out_h, out_w):
  b, m = labels.shape
  hm = np.zeros((b, num_classes, out_h, out_w), np.float32)
  ind = np.zeros((b, m), np.int64)
  wh = np.zeros((b, m, 2), np.float32)
  reg = np.zeros((b, m, 2), np.float32)
  reg_mask = np.zeros((b, m), np.float32)
  for i in range(b):
    for k in range(m):
      if not mask[i, k]:
        continue
      bbox = boxes[i, k].astype(np.float32).copy()
      bbox[[0, 2]] = np.clip(bbox[[0, 2]], 0, out_w - 1)
      bbox[[1, 3]] = np.clip(bbox[[1, 3]], 0, out_h - 1)
      h, w = bbox[3] - bbox[1], bbox[2] - bbox[0]
      if h > 0 and w > 0:
        radius = max(0, int(_radius_oracle(math.ceil(h), math.ceil(w))))
        ct = np.array([(bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2], np.float32)
        ct_int = ct.astype(np.int32)
        _draw_oracle(hm[i, labels[i, k]], ct_int, radius)
        wh[i, k] = w, h
        ind[i, k] = ct_int[1] * out_w + ct_int[0]
        reg[i, k] = ct - ct_int
        reg_mask[i, k] = 1
  return {'hm': hm.transpose(0, 2, 3, 1), 'ind': ind, 'wh': wh, 'reg': reg,
          'reg_mask': reg_mask}


def _random_objects(rng, b, m, c, out_h, out_w):
  """Boxes in output pixels, some partly or fully outside, some degenerate."""
  xy = rng.uniform(-4, [out_w + 2, out_h + 2], (b, m, 2))
  size = rng.uniform(0.3, 0.6 * max(out_h, out_w), (b, m, 2))
  boxes = np.concatenate([xy, xy + size], axis=-1).astype(np.float32)
  boxes[:, 0] = [0, 0, out_w - 1, out_h - 1]  # exactly the clipped full map
  if m > 2:
    boxes[:, 1, 2] = boxes[:, 1, 0]  # zero width
    boxes[:, 2] = [out_w + 1, 2, out_w + 5, 6]  # fully right of the map -> w = 0
  labels = rng.integers(0, c, (b, m)).astype(np.int32)
  mask = rng.uniform(size=(b, m)) < 0.8
  mask[:, 0] = True
  return boxes, labels, mask


def _run(boxes, labels, mask, c, out_h, out_w, **kw):
  fn = jax.jit(functools.partial(targets.ctdet_targets, num_classes=c, output_hw=(out_h, out_w),
                                 **kw))
  return {k: np.asarray(v) for k, v in fn(boxes, labels, mask).items()}


def _assert_targets_equal(got, want):
  np.testing.assert_allclose(got['hm'], want['hm'], atol=2e-6, rtol=0)
  np.testing.assert_array_equal(got['ind'], want['ind'])
  np.testing.assert_allclose(got['wh'], want['wh'], atol=1e-6)
  np.testing.assert_allclose(got['reg'], want['reg'], atol=1e-6)
  np.testing.assert_array_equal(got['reg_mask'], want['reg_mask'])
  # Positives (exact 1.0) are the same pixels: the focal loss depends on it.
  np.testing.assert_array_equal(got['hm'] == 1, want['hm'] == 1)


@pytest.mark.parametrize('seed, b, m, c, out_h, out_w', [
    (0, 1, 1, 1, 16, 16),
    (1, 2, 5, 3, 16, 24),
    (2, 3, 8, 2, 32, 32),
    (3, 2, 8, 1, 24, 16),  # one class: lots of same-class overlaps
    (4, 1, 6, 4, 17, 31),  # odd sizes
])
def test_ctdet_targets_match_oracle(seed, b, m, c, out_h, out_w):
  rng = np.random.default_rng(seed)
  boxes, labels, mask = _random_objects(rng, b, m, c, out_h, out_w)
  got = _run(boxes, labels, mask, c, out_h, out_w)
  want = _ctdet_oracle(boxes, labels, mask, c, out_h, out_w)
  assert got['hm'].shape == (b, out_h, out_w, c) and got['hm'].dtype == np.float32
  assert got['ind'].dtype == np.int32
  _assert_targets_equal(got, want)


@pytest.mark.parametrize('chunk', [1, 3, 8, 100])
def test_chunked_drawing_is_identical(chunk):
  rng = np.random.default_rng(10 + chunk)
  boxes, labels, mask = _random_objects(rng, 2, 8, 2, 16, 16)
  got = _run(boxes, labels, mask, 2, 16, 16, objects_per_chunk=chunk)
  _assert_targets_equal(got, _ctdet_oracle(boxes, labels, mask, 2, 16, 16))


@pytest.mark.parametrize('seed', range(3))
def test_overlapping_same_class_max_merge_and_duplicate_centres(seed):
  rng = np.random.default_rng(100 + seed)
  base = rng.uniform(4, 10, 2)
  size = rng.uniform(3, 8, 2)
  boxes = np.array([[
      [*base, *(base + size)],
      [*(base + 1.3), *(base + 1.3 + size * 1.5)],  # overlaps the first
      [*base, *(base + size)],  # duplicate of the first: same centre
      [*(base - 0.2), *(base + size + 0.2)],  # different box, same ct_int
  ]], np.float32)
  labels = np.zeros((1, 4), np.int32)
  mask = np.ones((1, 4), bool)
  got = _run(boxes, labels, mask, 1, 24, 24)
  want = _ctdet_oracle(boxes, labels, mask, 1, 24, 24)
  _assert_targets_equal(got, want)
  # Max (not sum): never above 1, and the shared centre is one positive.
  assert got['hm'].max() == 1.0
  assert got['ind'][0, 0] == got['ind'][0, 2] == got['ind'][0, 3]
  assert (got['hm'] == 1).sum() == len(np.unique(got['ind'][0]))


def test_empty_image_and_padding():
  boxes = np.full((2, 4, 4), np.nan, np.float32)  # garbage in padded rows
  boxes[1, 0] = [2, 3, 9, 7]
  labels = np.zeros((2, 4), np.int32)
  mask = np.zeros((2, 4), np.float32)
  mask[1, 0] = 1.0
  got = _run(boxes, labels, mask, 2, 16, 16)
  assert not np.isnan(got['wh']).any() and not np.isnan(got['reg']).any()
  assert got['hm'][0].max() == 0 and got['reg_mask'][0].sum() == 0
  np.testing.assert_array_equal(got['ind'][0], 0)
  np.testing.assert_array_equal(got['reg_mask'][1], [1, 0, 0, 0])
  np.testing.assert_allclose(got['wh'][1, 0], [7, 4])
  np.testing.assert_allclose(got['reg'][1, 0], [0.5, 0.0])
  assert got['ind'][1, 0] == 5 * 16 + 5
  assert got['hm'][1, 5, 5, 0] == 1.0 and got['hm'][1, ..., 1].max() == 0


@pytest.mark.parametrize('box, hw, expect_valid, expect_ind, expect_wh', [
    ([0, 0, 15, 15], (16, 16), 1, 7 * 16 + 7, [15, 15]),  # whole map, clipped corners
    ([-5, -5, 3, 2], (16, 16), 1, 1 * 16 + 1, [3, 2]),  # top-left partly outside
    ([10, 12, 40, 40], (16, 16), 1, 13 * 16 + 12, [5, 3]),  # bottom-right outside
    ([15, 3, 19, 8], (16, 16), 0, 0, [0, 0]),  # clipped to zero width on the border
    ([4, 4, 4, 9], (16, 16), 0, 0, [0, 0]),  # zero width
    ([4, 4, 9, 4], (16, 16), 0, 0, [0, 0]),  # zero height
    ([-9, 3, -1, 8], (16, 16), 0, 0, [0, 0]),  # fully left of the map
])
def test_border_cases(box, hw, expect_valid, expect_ind, expect_wh):
  boxes = np.array([[box]], np.float32)
  got = _run(boxes, np.zeros((1, 1), np.int32), np.ones((1, 1), bool), 1, *hw)
  assert got['reg_mask'][0, 0] == expect_valid
  assert got['ind'][0, 0] == expect_ind
  np.testing.assert_allclose(got['wh'][0, 0], expect_wh)
  assert got['hm'].max() == float(expect_valid)
  want = _ctdet_oracle(boxes, np.zeros((1, 1), np.int32), np.ones((1, 1), bool), 1, *hw)
  _assert_targets_equal(got, want)


@pytest.mark.parametrize('height, width, expected', [
    # r3 = (-28 + sqrt(28^2 + 16 * 0.7 * 0.3 * 100)) / 2 = (-28 + sqrt(1120)) / 2.
    (10, 10, (-28 + math.sqrt(1120)) / 2),
    (0, 7, 0.0),
    (1, 1, (-2.8 + math.sqrt(2.8**2 + 3.36)) / 2),
])
def test_gaussian_radius_known(height, width, expected):
  assert float(targets.gaussian_radius(height, width)) == pytest.approx(expected, rel=1e-6)


def test_gaussian_radius_grid_matches_float64_truncation():
  h, w = np.meshgrid(np.arange(0, 257), np.arange(0, 257), indexing='ij')
  got = np.asarray(targets.gaussian_radius(h, w))
  want = np.vectorize(_radius_oracle)(h.astype(float), w.astype(float))
  # Cancellation in r3 for thin boxes costs float32 a few 1e-5 absolute.
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=5e-5)
  np.testing.assert_array_equal(np.trunc(got), np.trunc(want))


@pytest.mark.parametrize('overlap', [0.3, 0.5, 0.9])
def test_gaussian_radius_other_overlaps(overlap):
  rng = np.random.default_rng(int(overlap * 10))
  h, w = rng.integers(1, 128, (2, 20))
  got = np.asarray(targets.gaussian_radius(h, w, overlap))
  want = [_radius_oracle(float(a), float(b), overlap) for a, b in zip(h, w, strict=True)]
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize('radius', [0, 1, 2, 5])
def test_draw_gaussians_single_kernel(radius):
  hm = targets.draw_gaussians(jnp.array([[[6, 7]]]), jnp.array([[radius]]), jnp.array([[0]]),
                              jnp.array([[True]]), num_classes=1, output_hw=(16, 16))
  hm = np.asarray(hm)[0, ..., 0]
  sigma = (2 * radius + 1) / 6
  want = np.zeros((16, 16))
  for y in range(16):
    for x in range(16):
      if abs(x - 6) <= radius and abs(y - 7) <= radius:
        want[y, x] = math.exp(-((x - 6)**2 + (y - 7)**2) / (2 * sigma * sigma))
  np.testing.assert_allclose(hm, want, atol=1e-6, rtol=1e-6)
  assert hm[7, 6] == 1.0 and (hm == 1).sum() == 1
