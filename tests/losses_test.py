"""Tests for centernet_jax.losses against float64 numpy loop oracles."""

import functools
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


def _random_batch(rng, b, h, w, c, m, num_stacks, with_reg=True):
  outputs = []
  for _ in range(num_stacks):
    out = {'hm': rng.normal(0, 2, (b, h, w, c)).astype(np.float32),
           'wh': rng.uniform(0, 10, (b, h, w, 2)).astype(np.float32)}
    if with_reg:
      out['reg'] = rng.uniform(0, 1, (b, h, w, 2)).astype(np.float32)
    outputs.append(out)
  tgt = {'hm': _random_heatmap(rng, (b, h, w, c), 3),
         'ind': rng.integers(0, h * w, (b, m)).astype(np.int32),
         'wh': rng.uniform(0, 10, (b, m, 2)).astype(np.float32),
         'reg': rng.uniform(0, 1, (b, m, 2)).astype(np.float32),
         'reg_mask': (rng.uniform(size=(b, m)) < 0.7).astype(np.float32)}
  return outputs, tgt


@pytest.mark.parametrize('seed, num_stacks, with_reg, weights', [
    (0, 1, True, (1.0, 0.1, 1.0)),
    (1, 2, True, (1.0, 0.1, 1.0)),
    (2, 2, True, (0.5, 0.2, 2.0)),
    (3, 1, False, (1.0, 0.1, 1.0)),  # no reg head: off_loss 0
])
def test_ctdet_loss_matches_oracle(seed, num_stacks, with_reg, weights):
  rng = np.random.default_rng(seed)
  outputs, tgt = _random_batch(rng, 2, 8, 8, 3, 6, num_stacks, with_reg)
  hm_w, wh_w, off_w = weights
  fn = jax.jit(functools.partial(losses.ctdet_loss, hm_weight=hm_w, wh_weight=wh_w,
                                 off_weight=off_w))
  total, parts = fn(outputs, tgt)
  hm = sum(_focal_oracle(o['hm'], tgt['hm']) for o in outputs) / num_stacks
  wh = sum(_reg_l1_oracle(o['wh'], tgt['ind'], tgt['reg_mask'], tgt['wh'])
           for o in outputs) / num_stacks
  off = sum(_reg_l1_oracle(o['reg'], tgt['ind'], tgt['reg_mask'], tgt['reg'])
            for o in outputs) / num_stacks if with_reg else 0.0
  assert set(parts) == {'hm_loss', 'wh_loss', 'off_loss', 'loss'}
  np.testing.assert_allclose(float(parts['hm_loss']), hm, rtol=2e-5)
  np.testing.assert_allclose(float(parts['wh_loss']), wh, rtol=2e-5)
  np.testing.assert_allclose(float(parts['off_loss']), off, rtol=2e-5, atol=1e-7)
  want = hm_w * hm + wh_w * wh + off_w * off
  np.testing.assert_allclose(float(total), want, rtol=2e-5)
  assert float(parts['loss']) == float(total)


def test_ctdet_loss_empty_batch_finite_grads():
  rng = np.random.default_rng(11)
  outputs, tgt = _random_batch(rng, 2, 8, 8, 2, 4, 1)
  tgt['hm'] = np.zeros_like(tgt['hm'])
  tgt['reg_mask'] = np.zeros_like(tgt['reg_mask'])
  loss_fn = lambda outs: losses.ctdet_loss(outs, tgt)[0]
  total, grads = jax.value_and_grad(loss_fn)(outputs)
  assert np.isfinite(float(total))
  for g in jax.tree_util.tree_leaves(grads):
    assert np.isfinite(np.asarray(g)).all()
  np.testing.assert_allclose(float(total), _focal_oracle(outputs[0]['hm'], tgt['hm']), rtol=2e-5)
