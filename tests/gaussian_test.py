"""Tests for centernet_jax.gaussian against float64 oracles of the official radius formulas
(CenterNet `utils/image.py`, CornerNet `sample/utils.py`) and of `draw_umich_gaussian`."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from centernet_jax import gaussian


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


def _corner_radius_oracle(height, width, min_overlap):
  """CornerNet gaussian_radius: the three quadratic roots, each divided by 2a."""
  a1, b1 = 1, height + width
  c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
  r1 = (b1 - math.sqrt(b1**2 - 4 * a1 * c1)) / (2 * a1)
  a2, b2 = 4, 2 * (height + width)
  c2 = (1 - min_overlap) * width * height
  r2 = (b2 - math.sqrt(b2**2 - 4 * a2 * c2)) / (2 * a2)
  a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
  c3 = (min_overlap - 1) * width * height
  r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / (2 * a3)
  return min(r1, r2, r3)


@pytest.mark.parametrize('height, width, expected', [
    # r3 = (-28 + sqrt(28^2 + 16 * 0.7 * 0.3 * 100)) / 2 = (-28 + sqrt(1120)) / 2.
    (10, 10, (-28 + math.sqrt(1120)) / 2),
    (0, 7, 0.0),
    (1, 1, (-2.8 + math.sqrt(2.8**2 + 3.36)) / 2),
])
def test_gaussian_radius_known(height, width, expected):
  assert float(gaussian.gaussian_radius(height, width)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize('height, width, overlap', [
    (3, 1500, 0.7),  # the elongated box of bug 6: float32 cancellation cost 5e-5 relative
    (1500, 3, 0.7),
    (1, 1000, 0.7),
    (2, 4000, 0.7),
    (3, 1500, 0.3),
    (3, 1500, 0.9),
    (5, 600, 0.5),
    (1, 1, 0.7),
    (0, 0, 0.7),
])
def test_gaussian_radius_elongated_boxes_match_float64(height, width, overlap):
  got = float(gaussian.gaussian_radius(height, width, overlap))
  want = _radius_oracle(float(height), float(width), overlap)
  assert got == pytest.approx(want, rel=1e-6, abs=1e-12)


def test_gaussian_radius_grid_matches_float64():
  h, w = np.meshgrid(np.arange(0, 257), np.arange(0, 257), indexing='ij')
  got = np.asarray(gaussian.gaussian_radius(h, w))
  want = np.vectorize(_radius_oracle)(h.astype(float), w.astype(float))
  # Every root adds positive numbers now: no cancellation, ordinary boxes within 1e-6.
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
  # float32 can land one ulp below an exactly integer radius (h = 42, w = 65 gives 14) and
  # truncate one lower; everywhere else the truncation is the official one.
  near_int = np.abs(want - np.round(want)) < 1e-4
  np.testing.assert_array_equal(np.trunc(got)[~near_int], np.trunc(want)[~near_int])


@pytest.mark.parametrize('overlap', [0.3, 0.5, 0.9])
def test_gaussian_radius_other_overlaps(overlap):
  rng = np.random.default_rng(int(overlap * 10))
  h, w = rng.integers(1, 128, (2, 20))
  got = np.asarray(gaussian.gaussian_radius(h, w, overlap))
  want = [_radius_oracle(float(a), float(b), overlap) for a, b in zip(h, w, strict=True)]
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize('overlap', [0.7, 0.3, 0.9])
def test_centernet_radius_table_is_the_official_float64_truncation(overlap):
  table = gaussian.centernet_radius_table(128, 160, overlap)
  assert table.shape == (129, 161) and table.dtype == np.int32
  want = np.array([[max(0, int(_radius_oracle(float(h), float(w), overlap))) for w in range(161)]
                   for h in range(129)])
  np.testing.assert_array_equal(table, want)
  if overlap == 0.7:
    assert table[42, 65] == 14  # exactly 14: float64 gives 14.0, float32 13.999999


def test_lookup_radius_ceils_and_clips():
  table = gaussian.centernet_radius_table(16, 16)
  h = jnp.array([3.2, 3.0, 0.0, 40.0, jnp.nan])
  w = jnp.array([7.01, 7.0, 5.0, 2.0, 1.0])
  got = np.asarray(gaussian.lookup_radius(table, h, w))
  np.testing.assert_array_equal(got[:4], [table[4, 8], table[3, 7], table[0, 5], table[16, 2]])
  assert 0 <= got[4] <= table.max()  # NaN (padding) reads some entry, never out of range


@pytest.mark.parametrize('overlap', [0.3, 0.5, 0.7])
def test_corner_radius_table_is_the_official_float64_truncation(overlap):
  table = gaussian.corner_radius_table(128, 96, overlap)
  want = np.array([[max(0, int(_corner_radius_oracle(h, w, overlap))) for w in range(97)]
                   for h in range(129)])
  np.testing.assert_array_equal(table, want)
  if overlap == 0.3:
    # r2 is exactly 3 for (10, 24) but float64 gives 2.999...: the official radius is 2.
    assert table[10, 24] == 2


def test_corner_gaussian_radius_float_values():
  h, w = np.meshgrid(np.arange(0, 130), np.arange(0, 130), indexing='ij')
  got = np.asarray(gaussian.corner_gaussian_radius(h, w, 0.3))
  want = np.vectorize(lambda a, b: _corner_radius_oracle(float(a), float(b), 0.3))(h, w)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Smaller than CenterNet's radius: the corrected roots.
  assert (got[1:, 1:] < np.asarray(gaussian.gaussian_radius(h, w, 0.3))[1:, 1:]).all()


@pytest.mark.parametrize('radius', [0, 1, 2, 5])
def test_draw_gaussians_single_kernel(radius):
  hm = gaussian.draw_gaussians(jnp.array([[[6, 7]]]), jnp.array([[radius]]), jnp.array([[0]]),
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
