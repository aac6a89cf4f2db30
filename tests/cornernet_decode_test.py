"""Tests for decode.corner_decode, corner_merge_flip, soft_nms and nms_top_k against
numpy loop references of the official CornerNet `_decode`, `test/coco.py` and the
Cython `external/nms.pyx: soft_nms`."""

import functools

import jax
import numpy as np
import pytest

from centernet_jax import decode, targets


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
  fn = jax.jit(functools.partial(decode.corner_decode, K=k, num_dets=num_dets))
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


_decode_small = jax.jit(functools.partial(decode.corner_decode, K=4, num_dets=16))


def test_corner_decode_argument_checks():
  maps = _one_pair()
  with pytest.raises(ValueError, match='num_dets'):
    decode.corner_decode(*maps, K=2, num_dets=5)
  with pytest.raises(ValueError, match='tl_regr'):
    decode.corner_decode(*maps[:4], maps[4], None, K=2, num_dets=4)


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
  t = jax.jit(functools.partial(targets.cornernet_targets, num_classes=2, output_hw=out_hw,
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
  got = jax.jit(decode.corner_merge_flip, static_argnums=1)(dets, 32)
  for i in range(2):
    for key in dets:
      np.testing.assert_array_equal(np.asarray(got[key][i, :6]), dets[key][i])
      if key != 'boxes':
        np.testing.assert_array_equal(np.asarray(got[key][i, 6:]), dets[key][2 + i])
    for j in range(6):  # official: dets[1, :, [0, 2]] = out_width - dets[1, :, [2, 0]]
      x1, y1, x2, y2 = dets['boxes'][2 + i, j]
      np.testing.assert_allclose(np.asarray(got['boxes'][i, 6 + j]), [32 - x2, y1, 32 - x1, y2])
  with pytest.raises(ValueError):
    decode.corner_merge_flip({k: v[:3] for k, v in dets.items()}, 32)


def _cython_soft_nms(dets, sigma, nt, threshold, method):
  """Line-by-line numpy port of the official Cython soft_nms (in place on [N, 6] float32
  rows x1, y1, x2, y2, score, original index); returns the first N rows it keeps."""
  boxes = dets.astype(np.float32).copy()
  n = boxes.shape[0]
  f32 = np.float32
  for i in range(boxes.shape[0]):
    if i >= n:
      break
    maxpos = i + int(np.argmax(boxes[i:n, 4]))  # the first maximum, as the strict `<`
    boxes[[i, maxpos]] = boxes[[maxpos, i]]
    tx1, ty1, tx2, ty2 = boxes[i, :4]
    pos = i + 1
    while pos < n:
      x1, y1, x2, y2 = boxes[pos, :4]
      area = (x2 - x1 + f32(1)) * (y2 - y1 + f32(1))
      iw = min(tx2, x2) - max(tx1, x1) + f32(1)
      if iw > 0:
        ih = min(ty2, y2) - max(ty1, y1) + f32(1)
        if ih > 0:
          ua = f32((tx2 - tx1 + f32(1)) * (ty2 - ty1 + f32(1)) + area - iw * ih)
          ov = f32(iw * ih / ua)
          if method == 1:
            weight = 1 - ov if ov > nt else 1
          elif method == 2:
            weight = np.exp(-(ov * ov) / sigma)
          else:
            weight = 0 if ov > nt else 1
          boxes[pos, 4] = f32(weight) * boxes[pos, 4]
          if boxes[pos, 4] < threshold:
            boxes[pos] = boxes[n - 1]
            n -= 1
            pos -= 1
      pos += 1
  return boxes[:n]


def _clustered_boxes(rng, n, c):
  centres = rng.uniform(10, 60, (4, 2))[rng.integers(0, 4, n)] + rng.normal(0, 3, (n, 2))
  half = rng.uniform(3, 12, (n, 2))
  boxes = np.concatenate([centres - half, centres + half], -1).astype(np.float32)
  scores = rng.permutation(n).astype(np.float32) / n * 0.9 + 0.001  # distinct, some < 0.01
  scores[: n // 8] = rng.uniform(0, 0.003, n // 8)  # near the discard threshold
  return boxes, scores.astype(np.float32), rng.integers(0, c, n).astype(np.int32)


_METHODS = {'linear': 1, 'gaussian': 2, 'hard': 0}


@pytest.mark.parametrize('seed, method, per_class', [
    (0, 'gaussian', True),
    (1, 'linear', True),
    (2, 'hard', True),
    (3, 'gaussian', False),
])
def test_soft_nms_matches_cython_port(seed, method, per_class):
  rng = np.random.default_rng(seed)
  n, c = 60, 3
  boxes, scores, classes = _clustered_boxes(rng, n, c)
  scores[-3:] = -1.0  # rejected pairs take no part
  fn = jax.jit(functools.partial(decode.soft_nms, method=method))
  got = np.asarray(fn(boxes, scores, classes if per_class else None))
  want = np.zeros(n, np.float32)
  groups = [np.nonzero((classes == k) & (scores >= 0))[0] for k in range(c)] if per_class else [
      np.nonzero(scores >= 0)[0]]
  for idx in groups:  # the official test code runs soft-NMS per class
    rows = np.concatenate([boxes[idx], scores[idx, None], idx[:, None]], 1)
    for row in _cython_soft_nms(rows, 0.5, 0.5, 0.001, _METHODS[method]):
      want[int(row[5])] = row[4]
  assert (want == 0).sum() > 3 and (want > 0).sum() > 10  # discards and survivors
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


def test_soft_nms_hand_case_and_bad_method():
  # IoU with the +1 convention: [0,0,9,9] vs [0,0,9,4]: inter 10*5, union 100 -> 0.5.
  boxes = np.array([[0, 0, 9, 9], [0, 0, 9, 4], [20, 20, 30, 30]], np.float32)
  scores = np.array([0.9, 0.8, 0.0005], np.float32)
  got = np.asarray(decode.soft_nms(boxes, scores, None))
  np.testing.assert_allclose(got, [0.9, 0.8 * np.exp(-0.25 / 0.5), 0.0005], rtol=1e-6)
  got = np.asarray(decode.soft_nms(boxes, scores, None, method='linear'))
  np.testing.assert_allclose(got, [0.9, 0.8, 0.0005], rtol=1e-6)  # 0.5 is not > Nt
  with pytest.raises(ValueError, match='method'):
    decode.soft_nms(boxes, scores, None, method='soft')


def test_nms_top_k_matches_per_class_reference():
  rng = np.random.default_rng(0)
  b, c, n, k = 2, 3, 40, 10
  data = [_clustered_boxes(rng, n, c) for _ in range(b)]
  boxes, scores, classes = (np.stack(x) for x in zip(*data, strict=True))
  scores[:, 0] = -1.0
  scores[1, 7:] = -1.0  # fewer than K left: the tail is marked invalid
  got = jax.jit(functools.partial(decode.nms_top_k, K=k))(boxes, scores, classes)
  for i in range(b):
    kept = []
    for cl in range(c):
      idx = np.nonzero((classes[i] == cl) & (scores[i] >= 0))[0]
      rows = np.concatenate([boxes[i, idx], scores[i, idx, None], idx[:, None]], 1)
      kept += [(row[4], int(row[5])) for row in _cython_soft_nms(rows, 0.5, 0.5, 0.001, 2)]
    kept.sort(key=lambda e: -e[0])
    kept = kept[:k]
    nv = len(kept)
    valid = np.asarray(got['valid'][i])
    np.testing.assert_array_equal(valid, np.arange(k) < nv)
    np.testing.assert_allclose(np.asarray(got['scores'][i, :nv]), [e[0] for e in kept],
                               rtol=2e-5)
    np.testing.assert_array_equal(np.asarray(got['scores'][i, nv:]), 0.0)
    np.testing.assert_array_equal(np.asarray(got['boxes'][i, :nv]), boxes[i, [e[1] for e in kept]])
    np.testing.assert_array_equal(np.asarray(got['classes'][i, :nv]),
                                  classes[i, [e[1] for e in kept]])


def _cython_soft_nms_merge(dets, sigma, nt, threshold, method, weight_exp):
  """Port of the Cython soft_nms_merge on [N, 8] rows (x1, y1, x2, y2, score, tl_score,
  br_score, index). Swaps and copies whole rows, where the Cython moves only columns 0-4
  (so its corner scores drift to other boxes): the intended algorithm."""
  boxes = dets.astype(np.float32).copy()
  n = boxes.shape[0]
  f32 = np.float32
  for i in range(boxes.shape[0]):
    if i >= n:
      break
    maxpos = i + int(np.argmax(boxes[i:n, 4]))
    boxes[[i, maxpos]] = boxes[[maxpos, i]]
    tx1, ty1, tx2, ty2 = boxes[i, :4]
    mx1, my1 = boxes[i, 0] * boxes[i, 5], boxes[i, 1] * boxes[i, 5]
    mx2, my2 = boxes[i, 2] * boxes[i, 6], boxes[i, 3] * boxes[i, 6]
    mts, mbs = boxes[i, 5], boxes[i, 6]
    pos = i + 1
    while pos < n:
      x1, y1, x2, y2 = boxes[pos, :4]
      area = (x2 - x1 + f32(1)) * (y2 - y1 + f32(1))
      iw = min(tx2, x2) - max(tx1, x1) + f32(1)
      if iw > 0:
        ih = min(ty2, y2) - max(ty1, y1) + f32(1)
        if ih > 0:
          ua = f32((tx2 - tx1 + f32(1)) * (ty2 - ty1 + f32(1)) + area - iw * ih)
          ov = f32(iw * ih / ua)
          if method == 1:
            weight = 1 - ov if ov > nt else 1
          elif method == 2:
            weight = np.exp(-(ov * ov) / sigma)
          else:
            weight = 0 if ov > nt else 1
          mw = (1 - weight) ** weight_exp
          mx1 += boxes[pos, 0] * boxes[pos, 5] * mw
          my1 += boxes[pos, 1] * boxes[pos, 5] * mw
          mx2 += boxes[pos, 2] * boxes[pos, 6] * mw
          my2 += boxes[pos, 3] * boxes[pos, 6] * mw
          mts += boxes[pos, 5] * mw
          mbs += boxes[pos, 6] * mw
          boxes[pos, 4] = f32(weight) * boxes[pos, 4]
          if boxes[pos, 4] < threshold:
            boxes[pos] = boxes[n - 1]
            n -= 1
            pos -= 1
      pos += 1
    boxes[i, :4] = mx1 / mts, my1 / mts, mx2 / mbs, my2 / mbs
  return boxes[:n]


def test_soft_nms_merge_matches_port():
  rng = np.random.default_rng(0)
  method, weight_exp = 'gaussian', 10.0  # the official multi-scale setting
  n, c = 30, 2
  boxes, scores, classes = _clustered_boxes(rng, n, c)
  # Near-duplicates (as across scales): IoU close to 1, where the merge weights matter.
  boxes[n // 2:] = boxes[:n // 2] + rng.normal(0, 0.7, (n // 2, 4)).astype(np.float32)
  classes[n // 2:] = classes[:n // 2]
  tl_s, br_s = rng.uniform(0.05, 1, (2, n)).astype(np.float32)
  got_boxes, got_scores = jax.jit(functools.partial(
      decode.soft_nms_merge, method=method, weight_exp=weight_exp))(boxes, scores, classes,
                                                                    tl_s, br_s)
  want_boxes, want_scores = boxes.copy(), np.zeros(n, np.float32)
  for cl in range(c):
    idx = np.nonzero(classes == cl)[0]
    rows = np.concatenate([boxes[idx], scores[idx, None], tl_s[idx, None], br_s[idx, None],
                           idx[:, None]], 1)
    for row in _cython_soft_nms_merge(rows, 0.5, 0.5, 0.001, _METHODS[method], weight_exp):
      want_boxes[int(row[7])] = row[:4]
      want_scores[int(row[7])] = row[4]
  np.testing.assert_allclose(np.asarray(got_scores), want_scores, rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(got_boxes), want_boxes, rtol=1e-5, atol=1e-4)
  assert np.abs(want_boxes - boxes).max() > 0.1  # some boxes were actually merged
