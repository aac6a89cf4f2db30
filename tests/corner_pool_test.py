"""Tests of centernet_jax.ops.corner_pool against numpy loops written from the official definition.

TopPool: out[y] = max_{y' >= y} in[y']; LeftPool: out[x] = max_{x' >= x} in[x'];
BottomPool: out[y] = max_{y' <= y} in[y']; RightPool: out[x] = max_{x' <= x} in[x'] (NHWC).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centernet_jax.ops import corner_pool

# pool -> (axis in NHWC, True when the window is [i, end), False when it is [0, i]).
DIRECTIONS = {'top': (1, True), 'left': (2, True), 'bottom': (1, False), 'right': (2, False)}
# (shape, impl): every direction on a general shape with both formulations, height 1, width 1.
CASES = [((2, 5, 7, 3), 'associative_scan'), ((2, 5, 7, 3), 'cummax'),
         ((1, 1, 6, 2), 'associative_scan'), ((1, 6, 1, 2), 'associative_scan')]


def _window(i: int, n: int, from_i_to_end: bool) -> slice:
  return slice(i, n) if from_i_to_end else slice(0, i + 1)


def _numpy_pool(x: np.ndarray, name: str) -> np.ndarray:
  """out[..., i, ...] = max over the window of i along the pooled axis (plain loops)."""
  axis, to_end = DIRECTIONS[name]
  xm = np.moveaxis(x, axis, 0)
  out = np.empty_like(xm)
  n = xm.shape[0]
  for i in range(n):
    out[i] = xm[_window(i, n, to_end)].max(axis=0)
  return np.moveaxis(out, 0, axis)


def _numpy_grad(x: np.ndarray, g: np.ndarray, name: str) -> np.ndarray:
  """Gradient of sum(pool(x) * g) when maxima are unique: g[i] goes to the window's argmax."""
  axis, to_end = DIRECTIONS[name]
  xm, gm = np.moveaxis(x, axis, -1), np.moveaxis(g, axis, -1)
  grad = np.zeros_like(xm)
  n = xm.shape[-1]
  for idx in np.ndindex(*xm.shape[:-1]):
    for i in range(n):
      w = _window(i, n, to_end)
      grad[idx + (w.start + int(np.argmax(xm[idx][w])),)] += gm[idx + (i,)]
  return np.moveaxis(grad, -1, axis)


NAMES = sorted(DIRECTIONS)


@functools.partial(jax.jit, static_argnames='impl')
def _all_pools(x, impl='associative_scan'):
  """{name: pool(x)} for the four directions, in one compiled call."""
  return {name: corner_pool.POOLS[name](x, impl) for name in NAMES}


@functools.partial(jax.jit, static_argnames='impl')
def _all_grads(xs, gs, impl='associative_scan'):
  """{name: d/dx sum(pool_name(x) * g)} for per-direction inputs xs[name] and weights gs[name]."""
  return jax.grad(lambda xs: sum(jnp.sum(corner_pool.POOLS[n](xs[n], impl) * gs[n])
                                 for n in NAMES))(xs)


@pytest.mark.parametrize('shape,impl', CASES)
def test_pools_match_numpy_loops(shape, impl):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(shape).astype(np.float32)
  ties = rng.integers(0, 3, shape).astype(np.float32)  # many equal values
  for inp in (x, ties):
    out = _all_pools(inp, impl)
    for name in NAMES:
      np.testing.assert_array_equal(out[name], _numpy_pool(inp, name), err_msg=name)


def test_associative_scan_equals_lax_cummax():
  x = np.random.default_rng(1).standard_normal((2, 9, 11, 4)).astype(np.float32)
  scan, cummax = _all_pools(x), _all_pools(x, 'cummax')
  for name in NAMES:
    axis, to_end = DIRECTIONS[name]
    np.testing.assert_array_equal(cummax[name], np.asarray(
        jax.lax.cummax(jnp.asarray(x), axis=axis, reverse=to_end)), err_msg=name)
    np.testing.assert_array_equal(scan[name], cummax[name], err_msg=name)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_pools_keep_low_precision_dtypes(dtype):
  x = np.random.default_rng(2).standard_normal((1, 4, 5, 3)).astype(np.float32)
  out = _all_pools(jnp.asarray(x, dtype))
  x = np.asarray(jnp.asarray(x, dtype), np.float32)
  for name in NAMES:
    assert out[name].dtype == dtype
    np.testing.assert_array_equal(np.asarray(out[name], np.float32), _numpy_pool(x, name))


def test_gradient_goes_to_the_argmax():
  rng = np.random.default_rng(3)
  shape = (2, 4, 5, 3)
  xs = {n: rng.permutation(np.prod(shape)).reshape(shape).astype(np.float32) / 7  # tie-free
        for n in NAMES}
  gs = {n: rng.standard_normal(shape).astype(np.float32) for n in NAMES}
  grads = _all_grads(xs, gs)
  for name in NAMES:
    np.testing.assert_allclose(grads[name], _numpy_grad(xs[name], gs[name], name), rtol=1e-6,
                               atol=1e-6, err_msg=name)


def test_gradient_with_ties_stays_on_the_maxima_and_keeps_its_sum():
  """Official backward gives a tied maximum's gradient to one position; autodiff may split it."""
  rng = np.random.default_rng(5)
  shape = (2, 5, 6, 2)
  xs = {n: rng.integers(0, 3, shape).astype(np.float32) for n in NAMES}
  gs = {n: rng.uniform(0.5, 1.5, shape).astype(np.float32) for n in NAMES}
  grads = _all_grads(xs, gs)
  for name in NAMES:
    x, g, grad = xs[name], gs[name], np.asarray(grads[name])
    axis, to_end = DIRECTIONS[name]
    # Total gradient per line along the pooled axis is preserved.
    np.testing.assert_allclose(grad.sum(axis), g.sum(axis), rtol=1e-5, err_msg=name)
    # Only positions holding the maximum of some window that contains them receive gradient.
    xm, gradm = np.moveaxis(x, axis, -1), np.moveaxis(grad, axis, -1)
    outm = np.moveaxis(_numpy_pool(x, name), axis, -1)
    n = xm.shape[-1]
    for idx in np.ndindex(*xm.shape[:-1]):
      for j in range(n):
        windows_with_j = [i for i in range(n) if j in range(n)[_window(i, n, to_end)]]
        if not any(xm[idx + (j,)] == outm[idx + (i,)] for i in windows_with_j):
          assert gradm[idx + (j,)] == 0, name


@pytest.mark.parametrize('x,match', [
    (np.zeros((4, 5, 3), np.float32), 'NHWC'),
    (np.zeros((1, 4, 5, 3), np.int32), 'float'),
])
def test_bad_inputs_are_rejected(x, match):
  with pytest.raises(ValueError, match=match):
    corner_pool.top_pool(x)


def test_unknown_impl_is_rejected():
  with pytest.raises(ValueError, match='unknown corner pool impl'):
    corner_pool.left_pool(jnp.zeros((1, 2, 2, 1)), impl='loop')
