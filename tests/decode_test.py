"""Tests for centernet_jax.decode against numpy loop oracles."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centernet_jax import decode, targets


def _peaks_oracle(heat):
  """Official _nms: keep pixels equal to the max of their clipped 3x3 window."""
  b, h, w, c = heat.shape
  out = np.zeros_like(heat)
  for i in range(b):
    for y in range(h):
      for x in range(w):
        for k in range(c):
          window = heat[i, max(0, y - 1):y + 2, max(0, x - 1):x + 2, k]
          if heat[i, y, x, k] == window.max():
            out[i, y, x, k] = heat[i, y, x, k]
  return out


def _decode_oracle(hm_prob, wh, reg, k):
  """Peaks, then sort all (score, class, y, x) entries, then boxes."""
  heat = _peaks_oracle(hm_prob)
  b, h, w, c = heat.shape
  boxes = np.zeros((b, k, 4))
  scores = np.zeros((b, k))
  classes = np.zeros((b, k), np.int64)
  for i in range(b):
    entries = [(heat[i, y, x, cl], cl, y, x) for y in range(h) for x in range(w)
               for cl in range(c)]
    entries.sort(key=lambda e: -e[0])
    for j, (s, cl, y, x) in enumerate(entries[:k]):
      ox, oy = (reg[i, y, x] if reg is not None else (0.5, 0.5))
      cx, cy = x + ox, y + oy
      bw, bh = wh[i, y, x]
      boxes[i, j] = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
      scores[i, j] = s
      classes[i, j] = cl
  return boxes, scores, classes


@pytest.mark.parametrize('seed, shape', [
    (0, (1, 8, 8, 1)),
    (1, (2, 16, 16, 3)),
    (2, (3, 7, 11, 2)),
])
def test_peaks_matches_oracle(seed, shape):
  rng = np.random.default_rng(seed)
  heat = rng.uniform(size=shape).astype(np.float32)
  heat[0, 2, 2:4, 0] = 0.9999  # horizontal tie: both kept if local max
  heat[0, 3, 2:4, 0] = 0.9999  # 2x2 plateau
  heat[-1, -1, -1, -1] = 0.99999  # corner
  got = np.asarray(jax.jit(decode.peaks)(heat))
  want = _peaks_oracle(heat)
  np.testing.assert_array_equal(got, want)
  assert (got[0, 2:4, 2:4, 0] == 0.9999).all()


def test_peaks_flat_map_keeps_everything():
  heat = np.full((1, 5, 5, 2), 0.25, np.float32)
  np.testing.assert_array_equal(np.asarray(decode.peaks(heat)), heat)


@pytest.mark.parametrize('seed, shape, k', [
    (0, (1, 8, 8, 1), 5),
    (1, (2, 16, 16, 3), 100),
    (2, (3, 12, 10, 4), 30),
])
def test_topk_matches_sorted_oracle(seed, shape, k):
  rng = np.random.default_rng(seed)
  scores = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float32)  # no ties
  scores /= scores.max()
  s, inds, cls, ys, xs = jax.jit(decode.topk, static_argnums=1)(scores, k)
  b, h, w, c = shape
  assert inds.dtype == jnp.int32 and cls.dtype == jnp.int32 and ys.dtype == jnp.float32
  for i in range(b):
    order = sorted(((scores[i, y, x, cl], y * w + x, cl, y, x) for y in range(h)
                    for x in range(w) for cl in range(c)), key=lambda e: -e[0])[:k]
    want = np.array([e[:3] for e in order], np.float64)
    np.testing.assert_array_equal(np.asarray(s[i]), want[:, 0].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(inds[i]), want[:, 1])
    np.testing.assert_array_equal(np.asarray(cls[i]), want[:, 2])
    np.testing.assert_array_equal(np.asarray(ys[i]), [e[3] for e in order])
    np.testing.assert_array_equal(np.asarray(xs[i]), [e[4] for e in order])


def test_topk_k_too_large_raises():
  with pytest.raises(ValueError):
    decode.topk(jnp.zeros((1, 2, 2, 1)), 5)


@pytest.mark.parametrize('seed, shape, k, with_reg', [
    (0, (1, 8, 8, 2), 10, True),
    (1, (2, 16, 16, 3), 100, True),
    (2, (2, 12, 9, 1), 20, False),
])
def test_ctdet_decode_matches_oracle(seed, shape, k, with_reg):
  rng = np.random.default_rng(seed)
  b, h, w, c = shape
  hm = rng.permutation(b * h * w * c).reshape(shape).astype(np.float32)
  hm = (hm + 1) / hm.size  # distinct scores so the order is defined
  wh = rng.uniform(0, 8, (b, h, w, 2)).astype(np.float32)
  reg = rng.uniform(0, 1, (b, h, w, 2)).astype(np.float32) if with_reg else None
  fn = jax.jit(functools.partial(decode.ctdet_decode, K=k))
  got = fn(hm, wh, reg)
  boxes, scores, classes = _decode_oracle(hm, wh, reg, k)
  assert got['boxes'].shape == (b, k, 4) and got['classes'].dtype == jnp.int32
  np.testing.assert_allclose(np.asarray(got['boxes']), boxes, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got['scores']), scores, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(got['classes']), classes)


def test_ctdet_decode_k_larger_than_num_peaks():
  hm = np.zeros((1, 8, 8, 2), np.float32)
  hm[0, 2, 3, 1] = 0.9
  hm[0, 6, 6, 0] = 0.4
  wh = np.full((1, 8, 8, 2), 2.0, np.float32)
  got = decode.ctdet_decode(hm, wh, None, K=20)
  scores = np.asarray(got['scores'][0])
  np.testing.assert_allclose(scores[:2], [0.9, 0.4])
  np.testing.assert_array_equal(scores[2:], 0.0)
  np.testing.assert_allclose(np.asarray(got['boxes'][0, 0]), [2.5, 1.5, 4.5, 3.5])
  np.testing.assert_array_equal(np.asarray(got['classes'][0, :2]), [1, 0])


@pytest.mark.parametrize('seed', range(3))
def test_targets_then_decode_recovers_boxes(seed):
  """Perfect predictions (target heatmap, wh and reg written at ind) decode to the
  clipped input boxes."""
  rng = np.random.default_rng(seed)
  h = w = 32
  m = 6
  cells = rng.choice(16, m, replace=False)  # distinct 8x8 cells -> distinct centres
  cx = (cells % 4) * 8 + rng.uniform(2, 6, m)
  cy = (cells // 4) * 8 + rng.uniform(2, 6, m)
  half = rng.uniform(1, 6, (m, 2))
  boxes = np.stack([cx - half[:, 0], cy - half[:, 1], cx + half[:, 0], cy + half[:, 1]], -1)
  labels = rng.integers(0, 3, m)
  t = targets.ctdet_targets(boxes[None].astype(np.float32), labels[None], np.ones((1, m)),
                            num_classes=3, output_hw=(h, w))
  wh_map = np.zeros((1, h, w, 2), np.float32)
  reg_map = np.zeros((1, h, w, 2), np.float32)
  ind = np.asarray(t['ind'][0])
  wh_map[0, ind // w, ind % w] = np.asarray(t['wh'][0])
  reg_map[0, ind // w, ind % w] = np.asarray(t['reg'][0])
  got = decode.ctdet_decode(t['hm'], wh_map, reg_map, K=m)
  np.testing.assert_array_equal(np.asarray(got['scores']), 1.0)
  clipped = np.clip(boxes, 0, w - 1)
  got_boxes = np.asarray(got['boxes'][0])
  centre_key = lambda bx: (bx[:, 1] + bx[:, 3]) * 1000 + (bx[:, 0] + bx[:, 2])
  got_order, want_order = np.argsort(centre_key(got_boxes)), np.argsort(centre_key(clipped))
  np.testing.assert_allclose(got_boxes[got_order], clipped[want_order], atol=1e-4)
  np.testing.assert_array_equal(np.asarray(got['classes'][0])[got_order], labels[want_order])


@pytest.mark.parametrize('seed, with_reg', [(0, True), (1, False), (2, True)])
def test_merge_flip_matches_loop(seed, with_reg):
  rng = np.random.default_rng(seed)
  b, h, w, c = 2, 6, 9, 3
  hm = rng.uniform(size=(2 * b, h, w, c)).astype(np.float32)
  wh = rng.uniform(0, 5, (2 * b, h, w, 2)).astype(np.float32)
  reg = rng.uniform(size=(2 * b, h, w, 2)).astype(np.float32) if with_reg else None
  got_hm, got_wh, got_reg = jax.jit(decode.merge_flip)(hm, wh, reg)
  want_hm = np.zeros((b, h, w, c), np.float32)
  want_wh = np.zeros((b, h, w, 2), np.float32)
  for i in range(b):
    for x in range(w):
      want_hm[i, :, x] = (hm[i, :, x] + hm[b + i, :, w - 1 - x]) / 2
      want_wh[i, :, x] = (wh[i, :, x] + wh[b + i, :, w - 1 - x]) / 2
  np.testing.assert_allclose(np.asarray(got_hm), want_hm, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(got_wh), want_wh, rtol=1e-6)
  if with_reg:
    np.testing.assert_array_equal(np.asarray(got_reg), reg[:b])
  else:
    assert got_reg is None


def test_merge_flip_of_mirrored_pass_is_identity():
  rng = np.random.default_rng(5)
  hm0 = rng.uniform(size=(1, 4, 6, 2)).astype(np.float32)
  wh0 = rng.uniform(size=(1, 4, 6, 2)).astype(np.float32)
  hm = np.concatenate([hm0, hm0[:, :, ::-1]])
  wh = np.concatenate([wh0, wh0[:, :, ::-1]])
  got_hm, got_wh, _ = decode.merge_flip(hm, wh, None)
  np.testing.assert_allclose(np.asarray(got_hm), hm0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(got_wh), wh0, rtol=1e-6)
  with pytest.raises(ValueError):
    decode.merge_flip(hm[:1], wh[:1], None)
