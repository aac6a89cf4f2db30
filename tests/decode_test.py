"""Tests for centernet_jax.decode (peaks, top-K, flips) against numpy loop oracles of the
official CenterNet `models/decode.py`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centernet_jax import decode


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


def test_flip_lr_mirrors_the_width_axis():
  x = np.arange(2 * 3 * 4 * 2, dtype=np.float32).reshape(2, 3, 4, 2)
  got = np.asarray(decode.flip_lr(x))
  for col in range(4):
    np.testing.assert_array_equal(got[:, :, col], x[:, :, 3 - col])
  np.testing.assert_array_equal(np.asarray(decode.flip_lr(got)), x)
