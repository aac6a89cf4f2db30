"""Tests for the CornerNet losses against float64 numpy loop oracles of the official
`kp_utils.py` (`_ae_loss`, `_regr_loss`, `_neg_loss`) and `kp.py: AELoss`."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centernet_jax import losses


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


def _focal_oracle(logits, target):
  """_neg_loss on the clamped sigmoid, float64."""
  p = np.clip(1 / (1 + np.exp(-logits.astype(np.float64))), 1e-4, 1 - 1e-4)
  pos = target == 1
  pos_loss = np.sum(np.log(p[pos]) * (1 - p[pos])**2)
  neg = target < 1
  neg_loss = np.sum(np.log(1 - p[neg]) * p[neg]**2 * (1 - target[neg])**4)
  return -neg_loss if pos.sum() == 0 else -(pos_loss + neg_loss) / pos.sum()


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


_regr_value_and_grad = jax.jit(jax.value_and_grad(losses.corner_regr_loss))


@pytest.mark.parametrize('seed, mask_p', [(0, 1.0), (1, 0.5), (2, 0.0)])
def test_corner_regr_loss_matches_oracle(seed, mask_p):
  rng = np.random.default_rng(seed)
  pred = rng.normal(0, 1.5, (2, 7, 2)).astype(np.float32)  # both smooth-L1 branches
  target = rng.uniform(0, 1, (2, 7, 2)).astype(np.float32)
  mask = (rng.uniform(size=(2, 7)) < mask_p).astype(np.float32)
  pred[mask == 0] = np.nan
  got, grad = _regr_value_and_grad(pred, target, mask)
  np.testing.assert_allclose(float(got), _regr_oracle(pred, target, mask), rtol=1e-5, atol=1e-7)
  assert np.isfinite(np.asarray(grad)).all()


def _random_outputs(rng, b, h, w, c, num_stacks):
  return [{'tl_heat': rng.normal(-2, 2, (b, h, w, c)).astype(np.float32),
           'br_heat': rng.normal(-2, 2, (b, h, w, c)).astype(np.float32),
           'tl_tag': rng.normal(0, 1, (b, h, w, 1)).astype(np.float32),
           'br_tag': rng.normal(0, 1, (b, h, w, 1)).astype(np.float32),
           'tl_regr': rng.normal(0.5, 0.8, (b, h, w, 2)).astype(np.float32),
           'br_regr': rng.normal(0.5, 0.8, (b, h, w, 2)).astype(np.float32)}
          for _ in range(num_stacks)]


def _random_targets(rng, b, h, w, c, m, counts):
  def heat():
    t = (rng.uniform(0, 1, (b, h, w, c))**4).astype(np.float32)
    t.reshape(-1)[rng.choice(t.size, 3, replace=False)] = 1.0
    return t
  mask = np.zeros((b, m), np.float32)
  for i, n in enumerate(counts):
    mask[i, :n] = 1
  return {'tl_heat': heat(), 'br_heat': heat(),
          'tl_tag': rng.integers(0, h * w, (b, m)).astype(np.int32),
          'br_tag': rng.integers(0, h * w, (b, m)).astype(np.int32),
          'tl_regr': rng.uniform(0, 1, (b, m, 2)).astype(np.float32),
          'br_regr': rng.uniform(0, 1, (b, m, 2)).astype(np.float32),
          'tag_mask': mask}


def _gather(x, ind):
  """x [B, h, w, D] at flat indices ind [B, M] -> [B, M, D]."""
  w = x.shape[2]
  return np.stack([[x[i, j // w, j % w] for j in row] for i, row in enumerate(ind)])


def _aeloss_oracle(outputs, tgt, weights, images_per_chunk):
  """Official AELoss: sums over stacks and corner types, total / num_stacks."""
  pw, qw, rw = weights
  b, m = tgt['tag_mask'].shape
  scale = 1.0 if images_per_chunk is None else images_per_chunk / b
  focal = pull = push = regr = 0.0
  for out in outputs:
    focal += _focal_oracle(out['tl_heat'], tgt['tl_heat'])
    focal += _focal_oracle(out['br_heat'], tgt['br_heat'])
    p, q = _ae_oracle(_gather(out['tl_tag'], tgt['tl_tag'])[..., 0],
                      _gather(out['br_tag'], tgt['br_tag'])[..., 0], tgt['tag_mask'])
    pull += p * scale
    push += q * scale
    regr += _regr_oracle(_gather(out['tl_regr'], tgt['tl_tag']), tgt['tl_regr'], tgt['tag_mask'])
    regr += _regr_oracle(_gather(out['br_regr'], tgt['br_tag']), tgt['br_regr'], tgt['tag_mask'])
  s = len(outputs)
  return (focal + pw * pull + qw * push + rw * regr) / s, focal / s, pull / s, push / s, regr / s


@pytest.mark.parametrize('seed, num_stacks, counts, weights, images_per_chunk', [
    (0, 1, [2], (0.1, 0.1, 1.0), None),  # batch of one
    (1, 2, [0, 1, 4], (0.1, 0.1, 1.0), None),
    (2, 2, [3, 5], (0.5, 0.2, 2.0), 4.9),
])
def test_cornernet_loss_matches_official_aeloss(seed, num_stacks, counts, weights,
                                                images_per_chunk):
  rng = np.random.default_rng(seed)
  b, h, w, c, m = len(counts), 8, 8, 2, 6
  outputs = _random_outputs(rng, b, h, w, c, num_stacks)
  tgt = _random_targets(rng, b, h, w, c, m, counts)
  pw, qw, rw = weights
  fn = jax.jit(functools.partial(losses.cornernet_loss, pull_weight=pw, push_weight=qw,
                                 regr_weight=rw, images_per_chunk=images_per_chunk))
  total, parts = fn(outputs, tgt)
  want = _aeloss_oracle(outputs, tgt, weights, images_per_chunk)
  assert set(parts) == {'focal_loss', 'pull_loss', 'push_loss', 'regr_loss', 'loss'}
  got = [float(total)] + [float(parts[k]) for k in
                          ('focal_loss', 'pull_loss', 'push_loss', 'regr_loss')]
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
  assert float(parts['loss']) == float(total)
  assert math.isfinite(float(total))


_loss_value_and_grad = jax.jit(jax.value_and_grad(lambda o, t: losses.cornernet_loss(o, t)[0]))


@pytest.mark.parametrize('counts', [[0, 0], [0, 1], [1, 1]])
def test_cornernet_loss_gradients_finite_without_pairs(counts):
  rng = np.random.default_rng(sum(counts))
  b = len(counts)
  outputs = _random_outputs(rng, b, 6, 6, 2, 1)
  tgt = _random_targets(rng, b, 6, 6, 2, 4, counts)
  total, grads = _loss_value_and_grad(outputs, tgt)
  assert np.isfinite(float(total))
  for g in jax.tree_util.tree_leaves(grads):
    assert np.isfinite(np.asarray(g)).all()
  if sum(counts) == 0:  # no objects: the tags get no gradient at all
    for out in grads:
      np.testing.assert_array_equal(np.asarray(out['tl_tag']), 0.0)
      np.testing.assert_array_equal(np.asarray(out['br_tag']), 0.0)


def test_single_object_push_is_a_constant_without_gradient():
  tl = jnp.array([[0.3, 9.0]])
  br = jnp.array([[-0.2, 9.0]])
  mask = jnp.array([[1.0, 0.0]])
  push, grad = jax.jit(jax.value_and_grad(lambda a: losses.ae_loss(a, br, mask)[1]))(tl)
  # The official float64 value would be 0.9999; float32 (as torch) gives 1.00017.
  assert float(push) == pytest.approx((1 - 1 / 1.0001) / 1e-4, rel=5e-4)
  np.testing.assert_array_equal(np.asarray(grad), 0.0)
