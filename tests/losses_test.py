"""Tests for centernet_jax.losses against float64 numpy loop oracles of the official CenterNet
`models/losses.py` (`_neg_loss`, `RegL1Loss`) and CornerNet `kp_utils.py` (`_ae_loss`,
`_regr_loss`)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centernet_jax import losses


def _focal_oracle(logits, target):
  """Official _neg_loss on clamped sigmoid, one pixel at a time, float64."""
  pos_sum = neg_sum = 0.0
  num_pos = 0
  for idx in np.ndindex(logits.shape):
    p = 1 / (1 + math.exp(-float(logits[idx])))
    p = min(max(p, 1e-4), 1 - 1e-4)
    t = float(target[idx])
    if t == 1:
      num_pos += 1
      pos_sum += math.log(p) * (1 - p)**2
    elif t < 1:
      neg_sum += math.log(1 - p) * p**2 * (1 - t)**4
  if num_pos == 0:
    return -neg_sum
  return -(pos_sum + neg_sum) / num_pos


def _reg_l1_oracle(pred, ind, mask, target):
  b, h, w, d = pred.shape
  total = denom = 0.0
  for i in range(b):
    for k in range(ind.shape[1]):
      y, x = divmod(int(ind[i, k]), w)
      for c in range(d):
        m = float(mask[i, k])
        total += abs(float(pred[i, y, x, c]) * m - float(target[i, k, c]) * m)
        denom += m
  return total / (denom + 1e-4)


def _random_heatmap(rng, shape, num_pos):
  """Gaussian-like targets in [0, 1) with `num_pos` exact 1.0 peaks."""
  t = rng.uniform(0, 1, shape) ** 3
  t[t > 0.999] = 0.5
  flat = t.reshape(-1)
  flat[rng.choice(flat.size, num_pos, replace=False)] = 1.0
  return t.astype(np.float32)


def _random_logits(rng, shape):
  x = rng.normal(0, 3, shape)
  x.reshape(-1)[:4] = [-30.0, 30.0, -9.5, 9.5]  # clamped at both ends
  return x.astype(np.float32)


@pytest.mark.parametrize('seed, shape, num_pos', [
    (0, (1, 8, 8, 1), 1),
    (1, (2, 16, 16, 3), 5),
    (2, (3, 12, 10, 2), 17),
    (3, (2, 16, 16, 3), 0),  # empty batch: -sum_neg, not normalised
    (4, (1, 4, 4, 1), 16),  # every pixel positive
])
def test_focal_loss_matches_oracle(seed, shape, num_pos):
  rng = np.random.default_rng(seed)
  logits = _random_logits(rng, shape)
  target = _random_heatmap(rng, shape, num_pos)
  got = jax.jit(losses.focal_loss)(logits, target)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(float(got), _focal_oracle(logits, target), rtol=2e-5)


@pytest.mark.parametrize('seed, num_pos', [(0, 0), (1, 3)])
def test_focal_loss_gradients(seed, num_pos):
  rng = np.random.default_rng(seed)
  shape = (2, 8, 8, 2)
  logits = _random_logits(rng, shape)
  target = _random_heatmap(rng, shape, num_pos)
  grad = np.asarray(jax.grad(losses.focal_loss)(logits, target))
  assert np.isfinite(grad).all()
  flat = grad.reshape(-1)
  np.testing.assert_array_equal(flat[:4], 0.0)  # clip passes no gradient
  # Central differences of the float64 oracle at a few unclamped pixels.
  for i in rng.choice(np.arange(4, flat.size), 6, replace=False):
    eps = 1e-3
    lo, hi = logits.astype(np.float64).copy(), logits.astype(np.float64).copy()
    lo.reshape(-1)[i] -= eps
    hi.reshape(-1)[i] += eps
    fd = (_focal_oracle(hi, target) - _focal_oracle(lo, target)) / (2 * eps)
    np.testing.assert_allclose(flat[i], fd, rtol=2e-3, atol=1e-5)


def test_focal_loss_bfloat16_logits_computed_in_float32():
  rng = np.random.default_rng(7)
  logits = jnp.asarray(_random_logits(rng, (2, 8, 8, 2)), jnp.bfloat16)
  target = _random_heatmap(rng, (2, 8, 8, 2), 3)
  got = losses.focal_loss(logits, target)
  assert got.dtype == jnp.float32
  want = _focal_oracle(np.asarray(logits.astype(jnp.float32)), target)
  np.testing.assert_allclose(float(got), want, rtol=2e-5)


@pytest.mark.parametrize('seed, b, h, w, d, m', [
    (0, 1, 4, 4, 1, 1),
    (1, 2, 8, 6, 2, 5),
    (2, 3, 5, 7, 3, 8),
])
def test_gather_feat_matches_loop(seed, b, h, w, d, m):
  rng = np.random.default_rng(seed)
  feat = rng.normal(size=(b, h, w, d)).astype(np.float32)
  ind = rng.integers(0, h * w, (b, m)).astype(np.int32)
  got = np.asarray(losses.gather_feat(feat, ind))
  assert got.shape == (b, m, d)
  for i in range(b):
    for k in range(m):
      np.testing.assert_array_equal(got[i, k], feat[i, ind[i, k] // w, ind[i, k] % w])


@pytest.mark.parametrize('seed, b, h, w, d, m, mask_p', [
    (0, 1, 8, 8, 2, 4, 1.0),
    (1, 2, 16, 12, 2, 8, 0.6),
    (2, 3, 6, 6, 3, 5, 0.5),
    (3, 2, 8, 8, 2, 6, 0.0),  # no objects: 0 / 1e-4 = 0
])
def test_reg_l1_loss_matches_oracle(seed, b, h, w, d, m, mask_p):
  rng = np.random.default_rng(seed)
  pred = rng.normal(size=(b, h, w, d)).astype(np.float32)
  ind = rng.integers(0, h * w, (b, m)).astype(np.int32)
  ind[:, -1] = ind[:, 0]  # duplicate index
  mask = (rng.uniform(size=(b, m)) < mask_p).astype(np.float32)
  target = rng.normal(size=(b, m, d)).astype(np.float32)
  got = jax.jit(losses.reg_l1_loss)(pred, ind, mask, target)
  np.testing.assert_allclose(float(got), _reg_l1_oracle(pred, ind, mask, target), rtol=1e-5,
                             atol=1e-7)
  grad = jax.grad(losses.reg_l1_loss)(pred, ind, mask, target)
  assert np.isfinite(np.asarray(grad)).all()


def _ae_oracle(tl, br, mask):
  """Official _ae_loss per image (eps 1e-4, diagonal pairs included), summed over images."""
  pull = push = 0.0
  for i in range(tl.shape[0]):
    idx = [k for k in range(tl.shape[1]) if mask[i, k]]
    n = len(idx)
    mean = {k: (float(tl[i, k]) + float(br[i, k])) / 2 for k in idx}
    for k in idx:
      pull += ((float(tl[i, k]) - mean[k])**2 + (float(br[i, k]) - mean[k])**2) / (n + 1e-4)
    # Push entries in float32 with torch's order of operations: for N = 1 the official
    # value (1 - 1 / 1.0001) / 1e-4 amplifies float32 rounding ~1e4 times (1.00017, not 0.9999).
    f32 = np.float32
    n32 = f32(n)
    for j in idx:
      for k in idx:
        gap = f32(abs(f32(mean[j]) - f32(mean[k])))
        d = f32(max(f32(0), f32(1) - gap)) - f32(1) / (n32 + f32(1e-4))
        push += float(f32(d / ((n32 - f32(1)) * n32 + f32(1e-4))))
  return pull, push


def _published_push(tl, br, mask):
  """The paper's push: sum over j != k of max(0, 1 - |e_j - e_k|) / (N (N - 1))."""
  push = 0.0
  for i in range(tl.shape[0]):
    e = [(float(tl[i, k]) + float(br[i, k])) / 2 for k in range(tl.shape[1]) if mask[i, k]]
    n = len(e)
    if n > 1:
      push += sum(max(0.0, 1 - abs(a - b)) for j, a in enumerate(e) for k, b in enumerate(e)
                  if j != k) / (n * (n - 1))
  return push


def _regr_oracle(pred, target, mask):
  total = 0.0
  for i, k in np.ndindex(mask.shape):
    if mask[i, k]:
      for c in range(2):
        x = float(pred[i, k, c]) - float(target[i, k, c])
        total += 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5
  return total / (mask.sum() + 1e-4)


def _tags(rng, b, m, counts):
  tl = rng.normal(0, 1, (b, m)).astype(np.float32)
  br = (tl + rng.normal(0, 0.3, (b, m))).astype(np.float32)
  mask = np.zeros((b, m), np.float32)
  for i, n in enumerate(counts):
    mask[i, rng.choice(m, n, replace=False)] = 1
  tl[mask == 0] = np.nan  # padded rows must not leak into the loss or its gradient
  return tl, br, mask


@jax.jit
def _ae_with_grads(tl, br, mask):
  """ae_loss and the gradients of pull + push and of pull alone (one compile per shape)."""
  pull, push = losses.ae_loss(tl, br, mask)
  both = jax.grad(lambda a, b: sum(losses.ae_loss(a, b, mask)), argnums=(0, 1))(tl, br)
  pull_only = jax.grad(lambda a, b: losses.ae_loss(a, b, mask)[0], argnums=(0, 1))(tl, br)
  return pull, push, both + pull_only


@pytest.mark.parametrize('seed, counts', [
    (0, [0]),  # batch of one empty image
    (1, [1]),  # batch of one image with one object
    (2, [5]),  # batch of one image (the official squeeze() breaks here)
    (3, [0, 1, 2, 6]),
    (4, [3, 3, 6, 1]),
])
def test_ae_loss_matches_oracle_with_finite_gradients(seed, counts):
  rng = np.random.default_rng(seed)
  tl, br, mask = _tags(rng, len(counts), 6, counts)
  pull, push, grads = _ae_with_grads(tl, br, mask)
  want_pull, want_push = _ae_oracle(tl, br, mask)
  np.testing.assert_allclose(float(pull), want_pull, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(float(push), want_push, rtol=1e-5, atol=1e-6)
  # The official eps only adds a constant: ~1e-4 / (N (N - 1)) for N >= 2, ~1 for N = 1.
  ones = sum(1 for n in counts if n == 1)
  np.testing.assert_allclose(float(push), _published_push(tl, br, mask) + ones, atol=1e-3)
  for g in grads:
    assert np.isfinite(np.asarray(g)).all()
    np.testing.assert_array_equal(np.asarray(g)[mask == 0], 0.0)


def test_ae_loss_gradient_matches_finite_differences():
  rng = np.random.default_rng(5)
  tl, br, mask = _tags(rng, 4, 6, [4, 2, 0, 3])
  tl = np.where(mask > 0, tl, 0.0).astype(np.float32)
  g_tl = np.asarray(_ae_with_grads(tl, br, mask)[2][0])
  for i, k in zip(*np.nonzero(mask), strict=True):
    hi, lo = tl.astype(np.float64).copy(), tl.astype(np.float64).copy()
    hi[i, k] += 1e-3
    lo[i, k] -= 1e-3
    fd = (sum(_ae_oracle(hi, br, mask)) - sum(_ae_oracle(lo, br, mask))) / 2e-3
    np.testing.assert_allclose(g_tl[i, k], fd, rtol=1e-2, atol=1e-3)


def test_ae_loss_hand_values():
  tl = np.array([[-0.5, 0.0]], np.float32)
  br = np.array([[0.5, 0.5]], np.float32)
  pull, push = jax.jit(losses.ae_loss)(tl, br, np.ones((1, 2)))
  # means 0 and 0.25; pull = (0.25 + 0.25 + 0.0625 + 0.0625) / 2.0001
  assert float(pull) == pytest.approx(0.625 / 2.0001, rel=1e-6)
  # push = (2 * 0.75 + 2 * (1 - 2 / 2.0001)) / 2.0001
  assert float(push) == pytest.approx((1.5 + 2 * (1 - 2 / 2.0001)) / 2.0001, rel=1e-5)


_regr_value_and_grad = jax.jit(jax.value_and_grad(losses.masked_smooth_l1_loss))


@pytest.mark.parametrize('seed, mask_p', [(0, 1.0), (1, 0.5), (2, 0.0)])
def test_masked_smooth_l1_loss_matches_oracle(seed, mask_p):
  rng = np.random.default_rng(seed)
  pred = rng.normal(0, 1.5, (2, 7, 2)).astype(np.float32)  # both smooth-L1 branches
  target = rng.uniform(0, 1, (2, 7, 2)).astype(np.float32)
  mask = (rng.uniform(size=(2, 7)) < mask_p).astype(np.float32)
  pred[mask == 0] = np.nan
  got, grad = _regr_value_and_grad(pred, target, mask)
  np.testing.assert_allclose(float(got), _regr_oracle(pred, target, mask), rtol=1e-5, atol=1e-7)
  assert np.isfinite(np.asarray(grad)).all()


def test_single_object_push_is_a_constant_without_gradient():
  tl = jnp.array([[0.3, 9.0]])
  br = jnp.array([[-0.2, 9.0]])
  mask = jnp.array([[1.0, 0.0]])
  push, grad = jax.jit(jax.value_and_grad(lambda a: losses.ae_loss(a, br, mask)[1]))(tl)
  # The official float64 value would be 0.9999; float32 (as torch) gives 1.00017.
  assert float(push) == pytest.approx((1 - 1 / 1.0001) / 1e-4, rel=5e-4)
  np.testing.assert_array_equal(np.asarray(grad), 0.0)
