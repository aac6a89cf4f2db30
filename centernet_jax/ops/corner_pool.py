"""Corner pooling (CornerNet, Law & Deng 2018): directional running maxima over NHWC maps.

Official semantics (the C++ ``_cpools`` extension of princeton-vl/CornerNet), for x [B, H, W, C]::

    top_pool(x)[:, y]    = max_{y' >= y} x[:, y']   (running max scanned from the bottom up)
    left_pool(x)[:, :, j] = max_{j' >= j} x[:, :, j']  (scanned from the right)
    bottom_pool(x)[:, y] = max_{y' <= y} x[:, y']   (scanned from the top down)
    right_pool(x)[:, :, j] = max_{j' <= j} x[:, :, j']  (scanned from the left)

The top-left corner module pools with (top, left), the bottom-right one with (bottom, right).

Two formulations of the same maths (``impl``): 'associative_scan' (``jax.lax.associative_scan``
with ``jnp.maximum``, log-depth, the default) and 'cummax' (``jax.lax.cummax``). Both are
differentiable by autodiff; the gradient of each output goes to the position of its maximum.
Where several positions tie for the maximum, the official backward gives the whole gradient to
the first one in scan order, while autodiff of ``jnp.maximum`` splits it between the tied
positions; the sum over the tied positions is the same. Any float dtype (bfloat16 included) is
kept.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

POOL_IMPLS = ('associative_scan', 'cummax')


def _running_max(x: jax.Array, axis: int, reverse: bool, impl: str) -> jax.Array:
  """Running maximum of ``x`` along ``axis``; ``reverse`` scans from the end."""
  if x.ndim != 4:
    raise ValueError(f'corner pooling expects an NHWC array [B, H, W, C], got shape {x.shape}')
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f'corner pooling expects a float array, got dtype {x.dtype}')
  if impl == 'associative_scan':
    return jax.lax.associative_scan(jnp.maximum, x, reverse=reverse, axis=axis)
  if impl == 'cummax':
    return jax.lax.cummax(x, axis=axis, reverse=reverse)
  raise ValueError(f'unknown corner pool impl {impl!r}; known: {POOL_IMPLS}')


def top_pool(x: jax.Array, impl: str = 'associative_scan') -> jax.Array:
  """Official TopPool: out[:, y] = max over rows y' >= y. [B, H, W, C] -> [B, H, W, C]."""
  return _running_max(x, 1, True, impl)


def left_pool(x: jax.Array, impl: str = 'associative_scan') -> jax.Array:
  """Official LeftPool: out[:, :, j] = max over columns j' >= j. [B, H, W, C] -> same."""
  return _running_max(x, 2, True, impl)


def bottom_pool(x: jax.Array, impl: str = 'associative_scan') -> jax.Array:
  """Official BottomPool: out[:, y] = max over rows y' <= y. [B, H, W, C] -> same."""
  return _running_max(x, 1, False, impl)


def right_pool(x: jax.Array, impl: str = 'associative_scan') -> jax.Array:
  """Official RightPool: out[:, :, j] = max over columns j' <= j. [B, H, W, C] -> same."""
  return _running_max(x, 2, False, impl)


POOLS = {'top': top_pool, 'left': left_pool, 'bottom': bottom_pool, 'right': right_pool}
