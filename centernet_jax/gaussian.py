"""Gaussian radius and drawing, shared by every keypoint task (jnp, jit-able, static shapes).

Both official codes (CenterNet `utils/image.py`, CornerNet `sample/utils.py`; docs/parity.md
4.3 and 4.7) size each object's Gaussian by the radius r such that a box whose corners move by r
keeps an IoU of at least `min_overlap` with the original, solving three quadratics; CenterNet
keeps the published typo (no division by 2a), CornerNet divides. The targets use the integer
max(0, int(r)) of the ceil'd box sides, read from a float64 table (`centernet_radius_table`,
`corner_radius_table`) so the truncation is the official one bit for bit.

Instead of drawing one object at a time into a numpy canvas, `draw_gaussians` evaluates every
object's Gaussian densely on the whole output map as a separable product gy[y] * gx[x] (zero
outside the [-r, r] window, which also truncates at the borders) and merges objects per class
with a scatter-max. Padded or degenerate objects are masked, so shapes never depend on the data.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# The official gaussian2D zeroes values below finfo(float64).eps * max. With
# sigma = (2r + 1) / 6 the smallest in-window value is > exp(-9), so this never
# triggers; it is kept for fidelity.
_GAUSSIAN_EPS = float(np.finfo(np.float64).eps)


def _ratio(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den, 0 where den == 0 (a 0 / 0 root for h = w = 0), without a NaN gradient path."""
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def gaussian_radius(height: jax.Array, width: jax.Array, min_overlap: float = 0.7) -> jax.Array:
  """Official CenterNet Gaussian radius (the 'buggy' variant), elementwise, float32.

  All three quadratic cases take (b + sqrt(b^2 - 4ac)) / 2 (no division by 2a),
  exactly as the official `utils/image.py`; TF Model Garden keeps the same
  formula. The 0.7 overlap default is the official `min_overlap`.

  The third root has b3 < 0, so (b3 + sqrt(b3^2 - 4 a3 c3)) / 2 subtracts two
  nearly equal numbers for elongated boxes (5e-5 relative error in float32 on a
  3 x 1500 box); it is evaluated in the algebraically equal form
  -2 a3 c3 / (sqrt(b3^2 - 4 a3 c3) - b3), which adds positive numbers. The
  first two roots add positive numbers already. Every root is then within a few
  1e-7 relative of the float64 official value.

  Where the exact radius is an integer (e.g. h = 42, w = 65 gives 14), float32
  may land one ulp below it and truncate to one less than the official float64
  code; `centernet_radius_table` gives the official integer radius exactly and
  is what the targets use.

  Args:
    height: [...] box heights (any float/int dtype).
    width: [...] box widths, broadcastable with `height`.
    min_overlap: minimum IoU the shifted box must keep.

  Returns:
    [...] float32 radius (not truncated).
  """
  h = jnp.asarray(height, jnp.float32)
  w = jnp.asarray(width, jnp.float32)
  o = min_overlap

  b1 = h + w
  c1 = w * h * (1 - o) / (1 + o)
  r1 = (b1 + jnp.sqrt(b1**2 - 4 * c1)) / 2

  b2 = 2 * (h + w)
  c2 = (1 - o) * w * h
  r2 = (b2 + jnp.sqrt(b2**2 - 4 * 4 * c2)) / 2

  a3 = 4 * o
  b3 = -2 * o * (h + w)
  c3 = (o - 1) * w * h
  # (b3 + sqrt(D)) / 2 with b3 <= 0 and c3 <= 0, without cancellation (numerator and
  # denominator are >= 0).
  r3 = _ratio(-2 * a3 * c3, jnp.sqrt(b3**2 - 4 * a3 * c3) - b3)
  return jnp.minimum(jnp.minimum(r1, r2), r3)


def corner_gaussian_radius(height: jax.Array, width: jax.Array,
                           min_overlap: float = 0.3) -> jax.Array:
  """CornerNet Gaussian radius (the corrected roots), elementwise.

  Official `sample/utils.py: gaussian_radius`: the smallest of the three
  quadratic roots, each now divided by 2a:
  r1 = (b1 - sqrt(b1^2 - 4 c1)) / 2, r2 = (b2 - sqrt(b2^2 - 16 c2)) / 8,
  r3 = (b3 + sqrt(b3^2 - 16 o c3)) / (8 o), with b and c as in `gaussian_radius`.
  The shipped `CornerNet.json` sets gaussian_iou = 0.3 (the code default is 0.7).

  `cornernet_targets` looks the truncated radius up in `corner_radius_table`
  instead, which reproduces the official float64 truncation exactly.

  Args:
    height: [...] box heights in output pixels (the official code ceils them first).
    width: [...] box widths, broadcastable with `height`.
    min_overlap: minimum IoU a box with shifted corners must keep.

  Returns:
    [...] float32 radius (not truncated).
  """
  h = jnp.asarray(height, jnp.float32)
  w = jnp.asarray(width, jnp.float32)
  o = min_overlap

  # Each root is evaluated in the algebraically equal form without cancellation,
  # (b - sqrt(b^2 - 4ac)) / 2a = 2c / (b + sqrt(b^2 - 4ac)), so float32 truncates to
  # the same integer as the official float64 code; a 0 / 0 (h = w = 0) gives 0.
  b1 = h + w
  c1 = w * h * (1 - o) / (1 + o)
  r1 = _ratio(2 * c1, b1 + jnp.sqrt(b1**2 - 4 * c1))

  b2 = 2 * (h + w)
  c2 = (1 - o) * w * h
  r2 = _ratio(2 * c2, b2 + jnp.sqrt(b2**2 - 4 * 4 * c2))

  a3 = 4 * o
  b3 = -2 * o * (h + w)
  c3 = (o - 1) * w * h
  # (b3 + sqrt(b3^2 - 4 a3 c3)) / 2a3 with b3 <= 0, c3 <= 0.
  r3 = _ratio(-2 * c3, jnp.sqrt(b3**2 - 4 * a3 * c3) - b3)
  return jnp.minimum(jnp.minimum(r1, r2), r3)


def _official_radius_table(max_h: int, max_w: int, min_overlap: float,
                           corrected: bool) -> np.ndarray:
  """max(0, int(r)) of the official float64 expressions (same operations, same order)."""
  height, width = np.meshgrid(np.arange(max_h + 1, dtype=np.int64),
                              np.arange(max_w + 1, dtype=np.int64), indexing='ij')
  a1 = 1
  b1 = (height + width)
  c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
  a2 = 4
  b2 = 2 * (height + width)
  c2 = (1 - min_overlap) * width * height
  a3 = 4 * min_overlap
  b3 = -2 * min_overlap * (height + width)
  c3 = (min_overlap - 1) * width * height
  if corrected:  # CornerNet
    r1 = (b1 - np.sqrt(b1 ** 2 - 4 * a1 * c1)) / (2 * a1)
    r2 = (b2 - np.sqrt(b2 ** 2 - 4 * a2 * c2)) / (2 * a2)
    r3 = (b3 + np.sqrt(b3 ** 2 - 4 * a3 * c3)) / (2 * a3)
  else:  # CenterNet
    r1 = (b1 + np.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    r2 = (b2 + np.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    r3 = (b3 + np.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
  r = np.minimum(np.minimum(r1, r2), r3)
  return np.maximum(0, np.trunc(r)).astype(np.int32)


def centernet_radius_table(max_h: int, max_w: int, min_overlap: float = 0.7) -> np.ndarray:
  """Official CenterNet radius max(0, int(r)) for every integer (h, w), float64.

  The ceil'd box sides are integers, so a table evaluated with the official
  float64 expressions reproduces the official truncation bit for bit, including
  the boxes whose exact radius is an integer, where no float32 evaluation is
  reliable (see `gaussian_radius`).

  Args:
    max_h: largest height (the output map height).
    max_w: largest width.
    min_overlap: the official `min_overlap`.

  Returns:
    [max_h + 1, max_w + 1] int32, entry [h, w].
  """
  return _official_radius_table(max_h, max_w, min_overlap, corrected=False)


def corner_radius_table(max_h: int, max_w: int, min_overlap: float = 0.3) -> np.ndarray:
  """Official CornerNet radius max(0, int(r)) for every integer (h, w), float64.

  The ceil'd box sides are integers, so a table evaluated with the official
  float64 expressions (same operations in the same order) reproduces the
  official truncation bit for bit. That matters: with overlap 0.3 many boxes
  have an exactly integer r2 (e.g. h = 10, w = 24 gives r = 3) that float64
  rounds to 2.999999999999999 and the official code truncates to 2, which no
  float32 evaluation reproduces.

  Args:
    max_h: largest height (the output map height).
    max_w: largest width.
    min_overlap: `gaussian_iou`.

  Returns:
    [max_h + 1, max_w + 1] int32, entry [h, w].
  """
  return _official_radius_table(max_h, max_w, min_overlap, corrected=True)


def lookup_radius(table: np.ndarray, height: jax.Array, width: jax.Array) -> jax.Array:
  """The table's radius of ceil(height) x ceil(width) (sides clipped to the table).

  Args:
    table: [H + 1, W + 1] int32 from `centernet_radius_table` or `corner_radius_table`.
    height: [...] float box heights in [0, H] (anything else, e.g. NaN padding, is clipped).
    width: [...] float box widths in [0, W].

  Returns:
    [...] int32 radius.
  """
  max_h, max_w = table.shape[0] - 1, table.shape[1] - 1
  hi = jnp.clip(jnp.ceil(height).astype(jnp.int32), 0, max_h)
  wi = jnp.clip(jnp.ceil(width).astype(jnp.int32), 0, max_w)
  return jnp.asarray(table)[hi, wi]


def _gaussian_1d(size: int, center: jax.Array, radius: jax.Array) -> jax.Array:
  """1-D factor of the umich Gaussian on the integer grid 0..size-1.

  Args:
    size: grid length.
    center: [N] int32 centre pixel.
    radius: [N] int32 radius r >= 0 (window [c - r, c + r], sigma = (2r + 1) / 6).

  Returns:
    [N, size] float32, zero outside the window.
  """
  d = (jnp.arange(size, dtype=jnp.int32)[None, :] - center[:, None]).astype(jnp.float32)
  sigma = (2 * radius.astype(jnp.float32) + 1) / 6
  g = jnp.exp(-(d * d) / (2 * sigma * sigma)[:, None])
  return jnp.where(jnp.abs(d) <= radius[:, None].astype(jnp.float32), g, 0.0)


def draw_gaussians(
    centers: jax.Array,
    radius: jax.Array,
    labels: jax.Array,
    valid: jax.Array,
    *,
    num_classes: int,
    output_hw: Sequence[int],
    objects_per_chunk: int | None = None,
) -> jax.Array:
  """Batched `draw_umich_gaussian`: max-merges object Gaussians per class.

  Each object contributes exp(-(dx^2 + dy^2) / (2 sigma^2)), sigma = (2r + 1)/6,
  on the (2r + 1)^2 window around its centre clipped to the map; the peak is
  exactly 1.0 at the centre. Invalid objects draw nothing.

  Memory: the dense per-object maps are a [B, chunk, h, w] float32 temporary
  (chunk = M by default, i.e. 4 * B * M * h * w bytes, 268 MB for B=32, M=128,
  128x128). Pass `objects_per_chunk` to bound it; the chunks are then merged
  sequentially with `lax.scan` (same result).

  Args:
    centers: [B, M, 2] int32 (x, y) centre pixels inside the map.
    radius: [B, M] int32 radii >= 0.
    labels: [B, M] int32 class ids in [0, num_classes).
    valid: [B, M] bool; False objects are not drawn.
    num_classes: C.
    output_hw: (h, w) of the heatmap.
    objects_per_chunk: objects per merge step (None: all at once).

  Returns:
    hm: [B, h, w, C] float32 in [0, 1].
  """
  h, w = int(output_hw[0]), int(output_hw[1])
  b, m = labels.shape
  chunk = m if objects_per_chunk is None else max(1, min(int(objects_per_chunk), m))
  n_chunks = -(-m // chunk)
  pad = n_chunks * chunk - m

  def chunked(x):  # [B, M, ...] -> [n_chunks, B, chunk, ...] (padding is invalid)
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape((b, n_chunks, chunk) + x.shape[2:])
    return jnp.moveaxis(x, 1, 0)

  cls = jnp.clip(labels.astype(jnp.int32), 0, num_classes - 1)
  xs = (chunked(centers[..., 0].astype(jnp.int32)), chunked(centers[..., 1].astype(jnp.int32)),
        chunked(radius.astype(jnp.int32)), chunked(cls), chunked(valid.astype(bool)))

  def merge_one(hm_b, cx, cy, r, c, ok):  # one image: hm_b [C, h, w], objects [chunk]
    g = _gaussian_1d(h, cy, r)[:, :, None] * _gaussian_1d(w, cx, r)[:, None, :]  # [chunk, h, w]
    g = jnp.where((g < _GAUSSIAN_EPS) | ~ok[:, None, None], 0.0, g)
    return hm_b.at[c].max(g)

  def merge(hm, x):
    # vmap over images keeps the batch a scatter batching dimension, so a batch sharded over
    # devices stays sharded (no cross-device scatter).
    return jax.vmap(merge_one)(hm, *x), None

  hm = jnp.zeros((b, num_classes, h, w), jnp.float32)
  hm, _ = jax.lax.scan(merge, hm, xs)
  return hm.transpose(0, 2, 3, 1)
