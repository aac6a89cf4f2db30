"""Tests for centernet_jax.nms against a line-by-line numpy port of the official Cython
`external/nms.pyx` (`soft_nms`, `soft_nms_merge`) and the official per-class test loop."""

import functools

import jax
import numpy as np
import pytest

from centernet_jax import config_lib, nms


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
  fn = jax.jit(functools.partial(nms.soft_nms, method=method))
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
  got = np.asarray(nms.soft_nms(boxes, scores, None))
  np.testing.assert_allclose(got, [0.9, 0.8 * np.exp(-0.25 / 0.5), 0.0005], rtol=1e-6)
  got = np.asarray(nms.soft_nms(boxes, scores, None, method='linear'))
  np.testing.assert_allclose(got, [0.9, 0.8, 0.0005], rtol=1e-6)  # 0.5 is not > Nt
  with pytest.raises(ValueError, match='method'):
    nms.soft_nms(boxes, scores, None, method='soft')


def test_nms_top_k_matches_per_class_reference():
  rng = np.random.default_rng(0)
  b, c, n, k = 2, 3, 40, 10
  data = [_clustered_boxes(rng, n, c) for _ in range(b)]
  boxes, scores, classes = (np.stack(x) for x in zip(*data, strict=True))
  scores[:, 0] = -1.0
  scores[1, 7:] = -1.0  # fewer than K left: the tail is marked invalid
  got = jax.jit(functools.partial(nms.nms_top_k, K=k))(boxes, scores, classes)
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
      nms.soft_nms_merge, method=method, weight_exp=weight_exp))(boxes, scores, classes,
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


def test_make_nms_binds_the_eval_section_and_scales_boxes():
  rng = np.random.default_rng(3)
  boxes, scores, classes = (x[None] for x in _clustered_boxes(rng, 30, 2))
  e = config_lib.base_config().eval
  e.K = 12
  e.nms_method = 'linear'
  e.nms_iou = 0.3
  got = nms.make_nms(e, box_scale=4.0)(
      {'boxes': boxes / 4, 'scores': scores, 'classes': classes})
  want = nms.nms_top_k(boxes, scores, classes, K=12, iou_threshold=0.3, method='linear')
  np.testing.assert_allclose(np.asarray(got['boxes']), np.asarray(want['boxes']) / 4, rtol=1e-6)
  for key in ('scores', 'classes', 'valid'):
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))


def test_make_nms_names_a_bad_method():
  e = config_lib.base_config().eval
  e.nms_method = 'greedy'
  with pytest.raises(ValueError, match='config.eval.nms_method'):
    nms.make_nms(e)
