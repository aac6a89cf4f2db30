"""Tests for tasks.cornernet.cornernet_loss against a float64 oracle of the official CornerNet
`kp.py: AELoss` built from the `kp_utils.py` oracles of tests/losses_test.py."""

import functools
import math

import jax
import numpy as np
import pytest

from centernet_jax.tasks import cornernet
from tests.losses_test import _ae_oracle, _regr_oracle


def _focal_oracle(logits, target):
  """_neg_loss on the clamped sigmoid, float64."""
  p = np.clip(1 / (1 + np.exp(-logits.astype(np.float64))), 1e-4, 1 - 1e-4)
  pos = target == 1
  pos_loss = np.sum(np.log(p[pos]) * (1 - p[pos])**2)
  neg = target < 1
  neg_loss = np.sum(np.log(1 - p[neg]) * p[neg]**2 * (1 - target[neg])**4)
  return -neg_loss if pos.sum() == 0 else -(pos_loss + neg_loss) / pos.sum()


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
  fn = jax.jit(functools.partial(cornernet.cornernet_loss, pull_weight=pw, push_weight=qw,
                                 regr_weight=rw, images_per_chunk=images_per_chunk))
  total, parts = fn(outputs, tgt)
  want = _aeloss_oracle(outputs, tgt, weights, images_per_chunk)
  assert set(parts) == {'focal_loss', 'pull_loss', 'push_loss', 'regr_loss', 'loss'}
  got = [float(total)] + [float(parts[k]) for k in
                          ('focal_loss', 'pull_loss', 'push_loss', 'regr_loss')]
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
  assert float(parts['loss']) == float(total)
  assert math.isfinite(float(total))


_loss_value_and_grad = jax.jit(jax.value_and_grad(lambda o, t: cornernet.cornernet_loss(o, t)[0]))


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
