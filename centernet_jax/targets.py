"""Training targets for keypoint detectors (jnp, jit-able, static shapes).

CenterNet `ctdet` targets follow the official `datasets/sample/ctdet.py`
(PARITY 4.3). Instead of drawing one object at a time into a numpy canvas,
every object's Gaussian is evaluated densely on the whole output map as a
separable product gy[y] * gx[x] (zero outside the [-r, r] window, which also
truncates at the borders), and objects are merged per class with a scatter-max.
Padded or degenerate objects are masked, so shapes never depend on the data.

CornerNet targets (`cornernet_targets`, PARITY 4.7) reuse `draw_gaussians`
with the corrected radius (`corner_gaussian_radius`) at the output / input ratio.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# The official gaussian2D zeroes values below finfo(float64).eps * max. With
# sigma = (2r + 1) / 6 the smallest in-window value is > exp(-9), so this never
# triggers; it is kept for fidelity.
_GAUSSIAN_EPS = float(np.finfo(np.float64).eps)


def gaussian_radius(height: jax.Array, width: jax.Array, min_overlap: float = 0.7) -> jax.Array:
  """Official CenterNet Gaussian radius (the 'buggy' variant), elementwise.

  All three quadratic cases take (b + sqrt(b^2 - 4ac)) / 2 (no division by 2a),
  exactly as the official `utils/image.py`; TF Model Garden keeps the same
  formula. The 0.7 overlap default is the official `min_overlap`.

  Computed in float32; truncating the result gives the same integer as the
  float64 official code for every integer h, w <= 600 (checked exhaustively).

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
  r3 = (b3 + jnp.sqrt(b3**2 - 4 * a3 * c3)) / 2
  return jnp.minimum(jnp.minimum(r1, r2), r3)


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


def ctdet_targets(
    boxes: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    *,
    num_classes: int,
    output_hw: Sequence[int],
    min_overlap: float = 0.7,
    objects_per_chunk: int | None = None,
) -> dict[str, jax.Array]:
  """CenterNet object-as-point targets (official `ctdet.py`).

  Per object: clip corners to [0, out - 1]; drop it unless h > 0 and w > 0
  after clipping; radius = max(0, int(gaussian_radius(ceil h, ceil w)));
  ct = box centre (float), ct_int = trunc(ct); Gaussian drawn at ct_int in its
  class channel; ind = ct_int_y * w_out + ct_int_x; wh = (w, h) in output
  pixels; reg = ct - ct_int. Dropped and padded objects get ind 0, wh 0, reg 0,
  reg_mask 0.

  Args:
    boxes: [B, M, 4] float32 xyxy in output-map pixels (input / down_ratio), unclipped.
    labels: [B, M] int32 class ids in [0, num_classes).
    mask: [B, M] bool or float; nonzero marks a real object.
    num_classes: C.
    output_hw: (h_out, w_out) of the output map.
    min_overlap: overlap for `gaussian_radius` (official 0.7).
    objects_per_chunk: see `draw_gaussians` (memory bound; same result).

  Returns:
    dict with hm [B, h, w, C] float32, ind [B, M] int32, wh [B, M, 2] float32,
    reg [B, M, 2] float32, reg_mask [B, M] float32.
  """
  out_h, out_w = int(output_hw[0]), int(output_hw[1])
  boxes = jnp.asarray(boxes, jnp.float32)
  x1 = jnp.clip(boxes[..., 0], 0, out_w - 1)
  y1 = jnp.clip(boxes[..., 1], 0, out_h - 1)
  x2 = jnp.clip(boxes[..., 2], 0, out_w - 1)
  y2 = jnp.clip(boxes[..., 3], 0, out_h - 1)
  bw = x2 - x1
  bh = y2 - y1
  valid = (jnp.asarray(mask) != 0) & (bh > 0) & (bw > 0)

  radius = gaussian_radius(jnp.ceil(bh), jnp.ceil(bw), min_overlap)
  radius = jnp.maximum(0, jnp.trunc(radius)).astype(jnp.int32)
  ct = jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2], axis=-1)  # [B, M, 2]
  ct_int = ct.astype(jnp.int32)  # trunc; ct >= 0 after clipping

  hm = draw_gaussians(ct_int, radius, labels, valid, num_classes=num_classes,
                      output_hw=(out_h, out_w), objects_per_chunk=objects_per_chunk)
  # jnp.where (not a product) so garbage in padded rows, even NaN, cannot leak.
  ind = jnp.where(valid, ct_int[..., 1] * out_w + ct_int[..., 0], 0).astype(jnp.int32)
  wh = jnp.where(valid[..., None], jnp.stack([bw, bh], axis=-1), 0.0)
  reg = jnp.where(valid[..., None], ct - ct_int.astype(jnp.float32), 0.0)
  return {'hm': hm, 'ind': ind, 'wh': wh, 'reg': reg, 'reg_mask': valid.astype(jnp.float32)}


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
  def root(num, den):
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)

  b1 = h + w
  c1 = w * h * (1 - o) / (1 + o)
  r1 = root(2 * c1, b1 + jnp.sqrt(b1**2 - 4 * c1))

  b2 = 2 * (h + w)
  c2 = (1 - o) * w * h
  r2 = root(2 * c2, b2 + jnp.sqrt(b2**2 - 4 * 4 * c2))

  a3 = 4 * o
  b3 = -2 * o * (h + w)
  c3 = (o - 1) * w * h
  # (b3 + sqrt(b3^2 - 4 a3 c3)) / 2a3 with b3 <= 0, c3 <= 0.
  r3 = root(-2 * c3, jnp.sqrt(b3**2 - 4 * a3 * c3) - b3)
  return jnp.minimum(jnp.minimum(r1, r2), r3)


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
  height, width = np.meshgrid(np.arange(max_h + 1, dtype=np.int64),
                              np.arange(max_w + 1, dtype=np.int64), indexing='ij')
  a1 = 1
  b1 = (height + width)
  c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
  r1 = (b1 - np.sqrt(b1 ** 2 - 4 * a1 * c1)) / (2 * a1)
  a2 = 4
  b2 = 2 * (height + width)
  c2 = (1 - min_overlap) * width * height
  r2 = (b2 - np.sqrt(b2 ** 2 - 4 * a2 * c2)) / (2 * a2)
  a3 = 4 * min_overlap
  b3 = -2 * min_overlap * (height + width)
  c3 = (min_overlap - 1) * width * height
  r3 = (b3 + np.sqrt(b3 ** 2 - 4 * a3 * c3)) / (2 * a3)
  r = np.minimum(np.minimum(r1, r2), r3)
  return np.maximum(0, np.trunc(r)).astype(np.int32)


def cornernet_targets(
    boxes: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    *,
    num_classes: int,
    output_hw: Sequence[int],
    input_hw: Sequence[int],
    min_overlap: float = 0.3,
    gaussian: bool = True,
    objects_per_chunk: int | None = None,
) -> dict[str, jax.Array]:
  """CornerNet corner targets (official `sample/coco.py: kp_detection`).

  Per object, as the official sampler: clip the box to the input image
  ([0, in_w - 1] x [0, in_h - 1]) and drop it unless its width and height stay
  > 0 (`_clip_detections`); scale corners by the per-axis ratio out / in (128 /
  511 for the official input, not 1 / 4); integer corner = trunc(corner * ratio);
  offset = corner * ratio - integer corner; radius = max(0, int(r)) with r the
  corrected radius of (ceil(h * ratio_h), ceil(w * ratio_w)) (both sides ceil'd,
  looked up in `corner_radius_table`), the same radius for both corners; the umich Gaussian (sigma =
  (2r + 1) / 6) max-merged into the class channel of the top-left and of the
  bottom-right heatmap (a single 1.0 at the corner with `gaussian=False`);
  tag = y * w_out + x.

  Unlike the official sampler (which packs the kept objects into the first n
  rows), rows stay aligned with the input objects and `tag_mask` marks the kept
  ones; the losses are sums over objects and pairs, so the order is irrelevant.
  Dropped and padded rows get tag 0, offset 0, tag_mask 0.

  Args:
    boxes: [B, M, 4] float xyxy in input pixels (after augmentation, unclipped).
    labels: [B, M] int32 class ids in [0, num_classes).
    mask: [B, M] bool or float; nonzero marks a real object.
    num_classes: C.
    output_hw: (h_out, w_out) of the output maps (128, 128 officially).
    input_hw: (h_in, w_in) of the network input (511, 511 officially).
    min_overlap: `gaussian_iou` of the radius (official config 0.3).
    gaussian: draw Gaussian bumps (official `gaussian_bump` True) or single pixels.
    objects_per_chunk: see `draw_gaussians` (memory bound; same result). Each
      heatmap's temporary is 4 * B * chunk * h * w bytes (411 MB for 49 images of
      128 objects at 128 x 128 with chunk = M).

  Returns:
    dict with tl_heat, br_heat [B, h, w, C] float32; tl_regr, br_regr [B, M, 2]
    float32 (x, y) offsets; tl_tag, br_tag [B, M] int32 flat indices y * w + x;
    tag_mask [B, M] float32.
  """
  out_h, out_w = int(output_hw[0]), int(output_hw[1])
  in_h, in_w = int(input_hw[0]), int(input_hw[1])
  ratio_h = out_h / in_h
  ratio_w = out_w / in_w
  boxes = jnp.asarray(boxes, jnp.float32)
  x1 = jnp.clip(boxes[..., 0], 0, in_w - 1)
  y1 = jnp.clip(boxes[..., 1], 0, in_h - 1)
  x2 = jnp.clip(boxes[..., 2], 0, in_w - 1)
  y2 = jnp.clip(boxes[..., 3], 0, in_h - 1)
  valid = (jnp.asarray(mask) != 0) & (x2 - x1 > 0) & (y2 - y1 > 0)

  f_tl = jnp.stack([x1 * ratio_w, y1 * ratio_h], axis=-1)  # [B, M, 2] (x, y)
  f_br = jnp.stack([x2 * ratio_w, y2 * ratio_h], axis=-1)
  i_tl = f_tl.astype(jnp.int32)  # trunc; >= 0 after clipping
  i_br = f_br.astype(jnp.int32)

  if gaussian:
    # ceil(h * ratio) <= out_h after clipping, so the radius is a table lookup.
    table = jnp.asarray(corner_radius_table(out_h, out_w, min_overlap))
    hi = jnp.clip(jnp.ceil((y2 - y1) * ratio_h).astype(jnp.int32), 0, out_h)
    wi = jnp.clip(jnp.ceil((x2 - x1) * ratio_w).astype(jnp.int32), 0, out_w)
    radius = table[hi, wi]
  else:
    radius = jnp.zeros(valid.shape, jnp.int32)  # a radius-0 bump is the single 1.0 pixel
  draw = functools.partial(draw_gaussians, num_classes=num_classes, output_hw=(out_h, out_w),
                           objects_per_chunk=objects_per_chunk)
  tl_heat = draw(i_tl, radius, labels, valid)
  br_heat = draw(i_br, radius, labels, valid)

  def tag(i):
    return jnp.where(valid, i[..., 1] * out_w + i[..., 0], 0).astype(jnp.int32)

  def regr(f, i):  # jnp.where, not a product: NaN in padded rows cannot leak
    return jnp.where(valid[..., None], f - i.astype(jnp.float32), 0.0)

  return {'tl_heat': tl_heat, 'br_heat': br_heat,
          'tl_regr': regr(f_tl, i_tl), 'br_regr': regr(f_br, i_br),
          'tl_tag': tag(i_tl), 'br_tag': tag(i_br), 'tag_mask': valid.astype(jnp.float32)}
