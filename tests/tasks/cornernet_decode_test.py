"""Tests for tasks.cornernet.corner_decode and corner_merge_flip against numpy loop references
of the official CornerNet `_decode` and `test/coco.py`."""

import functools

import jax
import numpy as np
import pytest

from centernet_jax.tasks import cornernet


def _peaks_oracle(heat):
  b, h, w, c = heat.shape
  out = np.zeros_like(heat)
  for i, y, x, k in np.ndindex(heat.shape):
    if heat[i, y, x, k] == heat[i, max(0, y - 1):y + 2, max(0, x - 1):x + 2, k].max():
      out[i, y, x, k] = heat[i, y, x, k]
  return out


def _top_corners(heat, k):
  """Sorted (score, class, y, x) of the K highest peak entries of one image."""
  h, w, c = heat.shape
  entries = [(heat[y, x, cl], cl, y, x) for y in range(h) for x in range(w) for cl in range(c)]
  return sorted(entries, key=lambda e: -e[0])[:k]


def _pairs_oracle(tl_heat, br_heat, tl_tag, br_tag, tl_regr, br_regr, k, ae_threshold):
  """All K x K pairs of one image, as the official `_decode`, score -1 when rejected."""
  tl = _top_corners(tl_heat, k)
  br = _top_corners(br_heat, k)
  pairs = []
  for s1, c1, y1, x1 in tl:
    for s2, c2, y2, x2 in br:
      bx1, by1 = x1 + tl_regr[y1, x1, 0], y1 + tl_regr[y1, x1, 1]
      bx2, by2 = x2 + br_regr[y2, x2, 0], y2 + br_regr[y2, x2, 1]
      score = (s1 + s2) / 2
      if (c1 != c2 or abs(tl_tag[y1, x1, 0] - br_tag[y2, x2, 0]) > ae_threshold
          or bx2 < bx1 or by2 < by1):
        score = -1.0
      pairs.append((score, (bx1, by1, bx2, by2), c1))
  return pairs


def _corner_maps(rng, b, h, w, c):
  def heat():  # distinct values so the corner order is defined
    x = rng.permutation(b * h * w * c).reshape(b, h, w, c).astype(np.float32)
    return (x + 1) / x.size
  return (heat(), heat(), rng.uniform(0, 1.2, (b, h, w, 1)).astype(np.float32),
          rng.uniform(0, 1.2, (b, h, w, 1)).astype(np.float32),
          rng.uniform(0, 1, (b, h, w, 2)).astype(np.float32),
          rng.uniform(0, 1, (b, h, w, 2)).astype(np.float32))


@pytest.mark.parametrize('seed, shape, k, num_dets', [
    (0, (2, 8, 8, 2), 12, 100),
    (1, (1, 10, 7, 3), 20, 400),  # num_dets = K * K: every pair comes back
])
def test_corner_decode_matches_pairing_oracle(seed, shape, k, num_dets):
  rng = np.random.default_rng(seed)
  maps = _corner_maps(rng, *shape)
  fn = jax.jit(functools.partial(cornernet.corner_decode, K=k, num_dets=num_dets))
  got = {key: np.asarray(v) for key, v in fn(*maps).items()}
  assert got['boxes'].shape == (shape[0], num_dets, 4) and got['classes'].dtype == np.int32
  tl_heat, br_heat = _peaks_oracle(maps[0]), _peaks_oracle(maps[1])
  for i in range(shape[0]):
    pairs = _pairs_oracle(tl_heat[i], br_heat[i], *(m[i] for m in maps[2:]), k, 0.5)
    pairs.sort(key=lambda p: -p[0])
    want_scores = np.array([p[0] for p in pairs[:num_dets]])
    np.testing.assert_allclose(got['scores'][i], want_scores, rtol=1e-6)
    valid = want_scores > -1
    assert 0 < valid.sum() < num_dets  # both accepted and rejected pairs are exercised
    # Accepted pairs have distinct scores here, so their order is defined.
    np.testing.assert_allclose(got['boxes'][i][valid], [p[1] for p in pairs[:valid.sum()]],
                               atol=1e-5)
    np.testing.assert_array_equal(got['classes'][i][valid], [p[2] for p in pairs[:valid.sum()]])
    np.testing.assert_allclose((got['tl_scores'][i] + got['br_scores'][i])[valid] / 2,
                               want_scores[valid], rtol=1e-6)


def _one_pair(tl=(2, 3), br=(9, 7), tl_cls=1, br_cls=1, tl_e=0.2, br_e=0.6,
              tl_off=(0.3, 0.4), br_off=(0.5, 0.1)):
  """Maps with one top-left and one bottom-right peak, (x, y) pixels."""
  maps = [np.zeros((1, 12, 12, 2), np.float32), np.zeros((1, 12, 12, 2), np.float32),
          np.zeros((1, 12, 12, 1), np.float32), np.zeros((1, 12, 12, 1), np.float32),
          np.zeros((1, 12, 12, 2), np.float32), np.zeros((1, 12, 12, 2), np.float32)]
  maps[0][0, tl[1], tl[0], tl_cls] = 0.9
  maps[1][0, br[1], br[0], br_cls] = 0.7
  maps[2][0, tl[1], tl[0], 0] = tl_e
  maps[3][0, br[1], br[0], 0] = br_e
  maps[4][0, tl[1], tl[0]] = tl_off
  maps[5][0, br[1], br[0]] = br_off
  return maps


@pytest.mark.parametrize('change, accepted', [
    ({}, True),
    ({'br_cls': 0}, False),  # classes differ
    ({'br_e': 0.71}, False),  # |e_tl - e_br| = 0.51 > 0.5
    ({'br_e': 0.7}, True),  # 0.49999998 in float32: not > 0.5
    ({'br': (2, 7), 'br_off': (0.2, 0.0)}, False),  # same column, br_x 2.2 < tl_x 2.3
    ({'br': (2, 7), 'br_off': (0.3, 0.0)}, True),  # br_x == tl_x is kept
    ({'br': (9, 3), 'br_off': (0.0, 0.35)}, False),  # br_y 3.35 < tl_y 3.4
    ({'br': (1, 7)}, False),  # left of the top-left
    ({'br': (9, 1)}, False),  # above the top-left
])
def test_corner_decode_rejection_rules(change, accepted):
  maps = _one_pair(**change)
  got = _decode_small(*maps)
  score = float(got['scores'][0, 0])
  if accepted:
    assert score == pytest.approx((0.9 + 0.7) / 2)
    kw = {**dict(tl=(2, 3), br=(9, 7), tl_off=(0.3, 0.4), br_off=(0.5, 0.1)), **change}
    want = [kw['tl'][0] + kw['tl_off'][0], kw['tl'][1] + kw['tl_off'][1],
            kw['br'][0] + kw['br_off'][0], kw['br'][1] + kw['br_off'][1]]
    np.testing.assert_allclose(np.asarray(got['boxes'][0, 0]), want, atol=1e-6)
    assert int(got['classes'][0, 0]) == 1
  else:
    # The real pair is rejected; the best left is a pair with a zero-score corner.
    assert score <= 0.9 / 2
    assert not np.any(np.isclose(np.asarray(got['scores']), 0.8))


_decode_small = jax.jit(functools.partial(cornernet.corner_decode, K=4, num_dets=16))


def test_corner_decode_argument_checks():
  maps = _one_pair()
  with pytest.raises(ValueError, match='num_dets'):
    cornernet.corner_decode(*maps, K=2, num_dets=5)
  with pytest.raises(ValueError, match='tl_regr'):
    cornernet.corner_decode(*maps[:4], maps[4], None, K=2, num_dets=4)


def test_targets_then_corner_decode_recovers_boxes():
  """Perfect maps built from cornernet_targets decode to the clipped, scaled boxes."""
  rng = np.random.default_rng(3)
  in_hw, out_hw, m = (47, 47), (12, 12), 3  # the shapes of `_decode_small`
  cells = rng.choice(4, m, replace=False)
  x1 = (cells % 2) * 20 + rng.uniform(0, 4, m)
  y1 = (cells // 2) * 20 + rng.uniform(0, 4, m)
  x2 = x1 + rng.uniform(8, 26, m)
  y2 = y1 + rng.uniform(8, 26, m)
  boxes = np.stack([x1, y1, x2, y2], -1).astype(np.float32)
  labels = rng.integers(0, 2, m).astype(np.int32)
  t = jax.jit(functools.partial(cornernet.cornernet_targets, num_classes=2, output_hw=out_hw,
                                input_hw=in_hw))(boxes[None], labels[None], np.ones((1, m)))
  tags = [np.zeros((1, *out_hw, 1), np.float32) for _ in range(2)]
  regrs = [np.zeros((1, *out_hw, 2), np.float32) for _ in range(2)]
  for side, (tag_map, regr_map) in enumerate(zip(tags, regrs, strict=True)):
    ind = np.asarray(t[('tl_tag', 'br_tag')[side]][0])
    tag_map[0, ind // 12, ind % 12, 0] = 2.0 * np.arange(m)  # embedding k * 2 for object k
    regr_map[0, ind // 12, ind % 12] = np.asarray(t[('tl_regr', 'br_regr')[side]][0])
  got = _decode_small(t['tl_heat'], t['br_heat'], *tags, *regrs)
  np.testing.assert_array_equal(np.asarray(got['scores'][0, :m]), 1.0)
  assert float(got['scores'][0, m]) < 1.0
  want = np.clip(boxes, 0, 46) * (12 / 47)
  key = lambda bx: bx[:, 0] * 1000 + bx[:, 1]
  got_boxes = np.asarray(got['boxes'][0, :m])
  np.testing.assert_allclose(got_boxes[np.argsort(key(got_boxes))], want[np.argsort(key(want))],
                             atol=1e-4)


def test_corner_merge_flip_matches_loop():
  rng = np.random.default_rng(4)
  dets = {'boxes': rng.uniform(0, 30, (4, 6, 4)).astype(np.float32),
          'scores': rng.uniform(size=(4, 6)).astype(np.float32),
          'classes': rng.integers(0, 3, (4, 6)).astype(np.int32),
          'tl_scores': rng.uniform(size=(4, 6)).astype(np.float32),
          'br_scores': rng.uniform(size=(4, 6)).astype(np.float32)}
  got = jax.jit(cornernet.corner_merge_flip, static_argnums=1)(dets, 32)
  for i in range(2):
    for key in dets:
      np.testing.assert_array_equal(np.asarray(got[key][i, :6]), dets[key][i])
      if key != 'boxes':
        np.testing.assert_array_equal(np.asarray(got[key][i, 6:]), dets[key][2 + i])
    for j in range(6):  # official: dets[1, :, [0, 2]] = out_width - dets[1, :, [2, 0]]
      x1, y1, x2, y2 = dets['boxes'][2 + i, j]
      np.testing.assert_allclose(np.asarray(got['boxes'][i, 6 + j]), [32 - x2, y1, 32 - x1, y2])
  with pytest.raises(ValueError):
    cornernet.corner_merge_flip({k: v[:3] for k, v in dets.items()}, 32)
