"""Modulated deformable convolution (DCNv2) in pure jnp, NHWC.

Semantics of the official bundled DCNv2 (``dcn_v2.py``, ``dcn_v2_im2col_cuda.cu``; mmcv and
torchvision ``deform_conv2d`` agree). For output (ho, wo) and kernel tap k = i * kw + j::

    y = ho * stride - pad + i * dil + offsets[..., 2k]       # dy (height)
    x = wo * stride - pad + j * dil + offsets[..., 2k + 1]   # dx (width)
    col[ho, wo, k, :] = mask[ho, wo, k] * bilinear(input, y, x)
    out = col.reshape(Ho, Wo, K * Cin) @ kernel.reshape(K * Cin, Cout) + bias

``bilinear`` reads the four integer neighbours of (y, x); a neighbour outside
[0, H - 1] x [0, W - 1] contributes 0, and the whole sample is 0 unless -1 < y < H and -1 < x < W.

Two implementations of the same maths. ``deform_conv_reference`` (``deform_sample`` + a matmul,
differentiated by autodiff) gathers the four corners of all K = kh * kw taps at once: its
transient peak is [B, Ho, Wo, K, 4, Cin], 36x the input for 3x3, and ~90x with the backward pass.
``deform_conv2d`` (the default, used by ``DeformConv``) has a hand-written VJP and scans over
taps and chunks of output pixels, so only one [rows, Cin] sample lives at a time (temporaries
~10-20x the input with the backward pass, and ~3x the time of a plain conv on XLA:CPU; see
experiments/deform_conv.md). Tests hold the two to each other in float32 and bfloat16.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any

# Official DCN.reset_parameters: U(+-1/sqrt(Cin * k * k)) (= layers.torch_default_kernel_init;
# not imported from models/, which imports this module).
dcn_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def _out_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
  return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _gather_rows(x_flat: jax.Array, idx: jax.Array) -> jax.Array:
  """[B, N, C] rows picked by idx [B, M] (already in range) -> [B, M, C]."""
  return jax.vmap(lambda xf, i: xf.at[i].get(mode='promise_in_bounds'))(x_flat, idx)


def deform_sample(
    x: jax.Array,
    offsets: jax.Array,
    mask: jax.Array,
    kernel_size: tuple[int, int],
    *,
    stride: int = 1,
    padding: int = 1,
    dilation: int = 1,
) -> jax.Array:
  """The modulated bilinear samples (the DCNv2 im2col).

  Args:
    x: [B, H, W, Cin] any float dtype.
    offsets: [B, Ho, Wo, 2 * K], channel 2k = dy, 2k + 1 = dx of tap k = i * kw + j.
    mask: [B, Ho, Wo, K] modulation (already through the sigmoid).
    kernel_size: (kh, kw).

  Returns:
    [B, Ho, Wo, K, Cin] in x.dtype (positions and weights are computed in float32).
  """
  b, h, w, cin = x.shape
  kh, kw = kernel_size
  nk = kh * kw
  ho, wo = _out_size(h, kh, stride, padding, dilation), _out_size(w, kw, stride, padding, dilation)
  if offsets.shape != (b, ho, wo, 2 * nk):
    raise ValueError(f'offsets must be {(b, ho, wo, 2 * nk)}, got {offsets.shape}')
  if mask.shape != (b, ho, wo, nk):
    raise ValueError(f'mask must be {(b, ho, wo, nk)}, got {mask.shape}')
  offsets = offsets.astype(jnp.float32)
  mask = mask.astype(jnp.float32)
  # Integer grid positions [Ho, Wo, K] of every tap.
  ti, tj = jnp.meshgrid(jnp.arange(kh), jnp.arange(kw), indexing='ij')
  base_y = (jnp.arange(ho) * stride - padding)[:, None, None] + (ti.reshape(-1) * dilation)
  base_x = (jnp.arange(wo) * stride - padding)[None, :, None] + (tj.reshape(-1) * dilation)
  py = base_y[None].astype(jnp.float32) + offsets[..., 0::2]  # [B, Ho, Wo, K]
  px = base_x[None].astype(jnp.float32) + offsets[..., 1::2]
  valid = (py > -1) & (py < h) & (px > -1) & (px < w)
  weight = jnp.where(valid, mask, 0.0)
  # floor has zero gradient, so d(ly)/d(py) = 1 carries the offset gradient.
  y0, x0 = jnp.floor(py), jnp.floor(px)
  ly, lx = py - y0, px - x0
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  # One gather of all four corners (and so one scatter-add in the backward pass): on XLA:CPU
  # this was ~2-3x faster forward+backward than four separate gathers.
  idxs, weights = [], []
  for dy, wy in ((0, 1.0 - ly), (1, ly)):
    for dx, wx in ((0, 1.0 - lx), (1, lx)):
      yy, xx = y0 + dy, x0 + dx
      inside = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
      weights.append(jnp.where(inside, wy * wx * weight, 0.0))
      idxs.append(jnp.clip(yy, 0, h - 1) * w + jnp.clip(xx, 0, w - 1))
  idx = jnp.stack(idxs, axis=-1).reshape(b, -1)  # [B, Ho * Wo * K * 4]
  corners = _gather_rows(x.reshape(b, h * w, cin), idx).reshape(b, -1, 4, cin)
  col = jnp.einsum('bnqc,bnq->bnc', corners.astype(jnp.float32),
                   jnp.stack(weights, axis=-1).reshape(b, -1, 4))
  return col.astype(x.dtype).reshape(b, ho, wo, nk, cin)


def deform_conv_reference(
    x: jax.Array,
    offsets: jax.Array,
    mask: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    stride: int = 1,
    padding: int = 1,
    dilation: int = 1,
) -> jax.Array:
  """DCNv2 by plain autodiff of ``deform_sample``: the reference the fast path is tested against.

  Args:
    x: [B, H, W, Cin].
    offsets: [B, Ho, Wo, 2 * kh * kw]; channel 2k is dy, 2k + 1 is dx for tap k = i * kw + j.
    mask: [B, Ho, Wo, kh * kw] modulation scalars (post-sigmoid).
    kernel: [kh, kw, Cin, Cout] (HWIO).
    bias: [Cout] or None.
    stride, padding, dilation: as the conv (symmetric padding, same for both axes).

  Returns:
    [B, Ho, Wo, Cout] in x.dtype. Peak memory holds the sampled [B, Ho, Wo, kh * kw, Cin].
  """
  kh, kw, cin, cout = kernel.shape
  if x.shape[-1] != cin:
    raise ValueError(f'x has {x.shape[-1]} channels, kernel expects {cin}')
  col = deform_sample(x, offsets, mask, (kh, kw), stride=stride, padding=padding,
                      dilation=dilation)
  b, ho, wo = col.shape[:3]
  out = col.reshape(b, ho, wo, kh * kw * cin) @ kernel.astype(x.dtype).reshape(-1, cout)
  if bias is not None:
    out = out + bias.astype(out.dtype)
  return out.astype(x.dtype)


def _check_shapes(x, offsets, mask, kernel, stride, padding, dilation):
  """Raises ValueError naming the argument whose shape does not fit; returns (Ho, Wo)."""
  b, h, w, cin = x.shape
  kh, kw, kcin, _ = kernel.shape
  if kcin != cin:
    raise ValueError(f'x has {cin} channels, kernel expects {kcin}')
  ho, wo = _out_size(h, kh, stride, padding, dilation), _out_size(w, kw, stride, padding, dilation)
  if offsets.shape != (b, ho, wo, 2 * kh * kw):
    raise ValueError(f'offsets must be {(b, ho, wo, 2 * kh * kw)}, got {offsets.shape}')
  if mask.shape != (b, ho, wo, kh * kw):
    raise ValueError(f'mask must be {(b, ho, wo, kh * kw)}, got {mask.shape}')
  return ho, wo


def _geometry(x_shape, offsets, mask, kernel_size, stride, padding, dilation, taps_per_step,
              n_chunks):
  """Corner rows and weights of every sample, computed once (small: 4 x [K, R] each).

  R = B * Ho * Wo output pixels are padded to n_chunks * Rc (padding samples have weight 0) and
  cut into n_chunks chunks of Rc; the K taps into S = K / T steps of T = taps_per_step. Step
  j = s * n_chunks + c holds the samples (pixel r of chunk c, tap t), tap k = s * T + t, r-major:
  arrays are [S * n_chunks, 4, Rc * T] (per corner) or [S * n_chunks, Rc * T].

  Returns:
    dict: ``idx`` int32 flat rows of x.reshape(B * H * W, Cin), clipped into the image (their
    weight is 0 when outside), corners in the order (y0, x0), (y0, x0 + 1), (y0 + 1, x0),
    (y0 + 1, x0 + 1); ``wts`` mask * bilinear weight (0 outside the image); ``inside`` whether
    each corner is in the image; ``ly``, ``lx`` the fractional parts; ``m_valid`` the mask, 0
    unless -1 < y < H and -1 < x < W; ``valid`` that condition. float32 but idx, inside, valid.
  """
  b, h, w, _ = x_shape
  kh, kw = kernel_size
  nk = kh * kw
  _, ho, wo, _ = offsets.shape
  ti, tj = jnp.meshgrid(jnp.arange(kh), jnp.arange(kw), indexing='ij')
  base_y = (jnp.arange(ho) * stride - padding)[:, None, None] + (ti.reshape(-1) * dilation)
  base_x = (jnp.arange(wo) * stride - padding)[None, :, None] + (tj.reshape(-1) * dilation)
  offsets = offsets.astype(jnp.float32)
  py = base_y[None].astype(jnp.float32) + offsets[..., 0::2]  # [B, Ho, Wo, K]
  px = base_x[None].astype(jnp.float32) + offsets[..., 1::2]
  valid = (py > -1) & (py < h) & (px > -1) & (px < w)
  m_valid = jnp.where(valid, mask.astype(jnp.float32), 0.0)
  # Clipping keeps int32 sane for huge offsets; such samples are invalid (weight 0) anyway.
  py, px = jnp.clip(py, -2.0, h + 1.0), jnp.clip(px, -2.0, w + 1.0)
  y0f, x0f = jnp.floor(py), jnp.floor(px)
  ly, lx = py - y0f, px - x0f
  y0, x0 = y0f.astype(jnp.int32), x0f.astype(jnp.int32)
  row0 = (jnp.arange(b, dtype=jnp.int32) * (h * w))[:, None, None, None]
  idx, wts, inside = [], [], []
  for dy, wy in ((0, 1.0 - ly), (1, ly)):
    for dx, wx in ((0, 1.0 - lx), (1, lx)):
      yy, xx = y0 + dy, x0 + dx
      ins = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
      inside.append(ins)
      wts.append(jnp.where(ins, wy * wx * m_valid, 0.0))
      idx.append(row0 + jnp.clip(yy, 0, h - 1) * w + jnp.clip(xx, 0, w - 1))
  s, t = nk // taps_per_step, taps_per_step
  r = b * ho * wo
  rc = -(-r // n_chunks)

  def steps(a):  # [B, Ho, Wo, K] -> [S * n_chunks, Rc * T]
    a = jnp.pad(a.reshape(r, nk), ((0, rc * n_chunks - r), (0, 0)))
    return a.reshape(n_chunks, rc, s, t).transpose(2, 0, 1, 3).reshape(s * n_chunks, rc * t)

  corners = lambda qs: jnp.stack([steps(q) for q in qs], axis=1)
  return {'idx': corners(idx), 'wts': corners(wts), 'inside': corners(inside), 'ly': steps(ly),
          'lx': steps(lx), 'm_valid': steps(m_valid), 'valid': steps(valid)}


def _fast_forward(x, offsets, mask, kernel, stride, padding, dilation, taps_per_step, n_chunks):
  """Returns ([B, Ho, Wo, Cout] in x.dtype, the ``_geometry`` dict the backward reuses)."""
  b, h, w, cin = x.shape
  kh, kw, _, cout = kernel.shape
  _, ho, wo, _ = offsets.shape
  t = taps_per_step
  geo = _geometry(x.shape, offsets, mask, (kh, kw), stride, padding, dilation, t, n_chunks)
  rc = geo['ly'].shape[1] // t
  x_flat = x.reshape(b * h * w, cin)
  w_steps = kernel.reshape(-1, t * cin, cout)

  def step(acc, xs):
    j, idx, wts = xs
    # The gathers fuse into the weighted sum (a lone gather is several times slower on XLA:CPU).
    col = sum(x_flat.at[i].get(mode='promise_in_bounds').astype(jnp.float32) * wq[:, None]
              for i, wq in zip(idx, wts, strict=True))
    out = jnp.dot(col.astype(x.dtype).reshape(rc, t * cin), w_steps[j // n_chunks],
                  preferred_element_type=jnp.float32)
    start = (j % n_chunks) * rc
    return lax.dynamic_update_slice_in_dim(
        acc, lax.dynamic_slice_in_dim(acc, start, rc) + out, start, axis=0), None

  acc = jnp.zeros((n_chunks * rc, cout), jnp.float32)
  out, _ = lax.scan(step, acc, (jnp.arange(geo['ly'].shape[0]), geo['idx'], geo['wts']))
  return out[:b * ho * wo].astype(x.dtype).reshape(b, ho, wo, cout), geo


def _fast_backward(taps_per_step, n_chunks, res, g):
  """Cotangents [S * n_chunks, ...] per step for offsets (dy, dx) and mask, dx and dkernel."""
  x, kernel, geo = res
  b, h, w, cin = x.shape
  kh, kw, _, cout = kernel.shape
  t = taps_per_step
  rc = geo['ly'].shape[1] // t
  x_flat = x.reshape(b * h * w, cin)
  # The backward matmuls run in float32 whatever x.dtype (XLA:CPU has no bf16 x bf16 -> f32
  # dot for every layout, and the gradients keep the extra precision).
  g = g.reshape(-1, cout)
  g = jnp.pad(g, ((0, n_chunks * rc - g.shape[0]), (0, 0)))
  w_steps = kernel.astype(jnp.float32).reshape(-1, t * cin, cout)

  def step(dx, xs):
    j, gs = xs
    ly, lx, m_valid = gs['ly'], gs['lx'], gs['m_valid']
    start = (j % n_chunks) * rc
    g_c = lax.dynamic_slice_in_dim(g, start, rc, axis=0).astype(jnp.float32)
    # Corner rows, zero outside the image, in x.dtype (exact: a 0/1 factor): 4 x [N, Cin].
    corners = [x_flat.at[i].get(mode='promise_in_bounds') * ins[:, None].astype(x.dtype)
               for i, ins in zip(gs['idx'], gs['inside'], strict=True)]
    col = sum(c.astype(jnp.float32) * wq[:, None]
              for c, wq in zip(corners, gs['wts'], strict=True))
    # dW^T = g^T col with g^T materialised: XLA:CPU's dot with a transposed left operand
    # (col^T g) was ~2.5x slower.
    dw_s = jnp.dot(g_c.T, col.reshape(rc, t * cin)).T
    dcol = jnp.dot(g_c, w_steps[j // n_chunks].T).reshape(-1, cin)
    # Input gradient: a scatter-add of the weighted output gradient per corner.
    for i, wq in zip(gs['idx'], gs['wts'], strict=True):
      dx = dx.at[i].add(dcol * wq[:, None], mode='promise_in_bounds')
    # d loss / d corner q (before weighting) = <dcol, corner row q>; the rest is per sample.
    e00, e01, e10, e11 = (jnp.sum(c.astype(jnp.float32) * dcol, axis=-1) for c in corners)
    dly = m_valid * ((1 - lx) * (e10 - e00) + lx * (e11 - e01))
    dlx = m_valid * ((1 - ly) * (e01 - e00) + ly * (e11 - e10))
    dbil = (1 - ly) * ((1 - lx) * e00 + lx * e01) + ly * ((1 - lx) * e10 + lx * e11)
    dmask = jnp.where(gs['valid'], dbil, 0.0)
    return dx, (jnp.stack([dly, dlx], axis=-1), dmask, dw_s)

  dx0 = jnp.zeros((b * h * w, cin), jnp.float32)
  dx, (doff, dmask, dkernel) = lax.scan(step, dx0, (jnp.arange(geo['ly'].shape[0]), geo))
  dkernel = dkernel.reshape(-1, n_chunks, t * cin, cout).sum(axis=1)
  return dx.reshape(x.shape), doff, dmask, dkernel.reshape(kernel.shape)


_STATIC = (4, 5, 6, 7, 8)  # stride, padding, dilation, taps_per_step, n_chunks


@functools.partial(jax.custom_vjp, nondiff_argnums=_STATIC)
def _deform_conv_fast(x, offsets, mask, kernel, stride, padding, dilation, taps_per_step,
                      n_chunks):
  return _fast_forward(x, offsets, mask, kernel, stride, padding, dilation, taps_per_step,
                       n_chunks)[0]


def _fast_fwd(x, offsets, mask, kernel, stride, padding, dilation, taps_per_step, n_chunks):
  out, geo = _fast_forward(x, offsets, mask, kernel, stride, padding, dilation, taps_per_step,
                           n_chunks)
  return out, (x, kernel, geo, offsets, mask)


def _fast_bwd(stride, padding, dilation, taps_per_step, n_chunks, res, g):
  del stride, padding, dilation  # already in the saved geometry
  x, kernel, geo, offsets, mask = res
  b, ho, wo, nk2 = offsets.shape
  dx, doff, dmask, dkernel = _fast_backward(taps_per_step, n_chunks, (x, kernel, geo), g)

  def unsteps(a):  # [S * n_chunks, Rc * T, ...] -> [B, Ho, Wo, K * ...]
    s = nk2 // 2 // taps_per_step
    a = a.reshape(s, -1, taps_per_step, *a.shape[2:])[:, :b * ho * wo]
    return a.swapaxes(0, 1).reshape(b, ho, wo, -1)

  return (dx.astype(x.dtype), unsteps(doff).astype(offsets.dtype),
          unsteps(dmask).astype(mask.dtype), dkernel.astype(kernel.dtype))


_deform_conv_fast.defvjp(_fast_fwd, _fast_bwd)
# jit: eager callers (tests, notebooks) compile each shape once instead of tracing per call.
_deform_conv_fast_jit = jax.jit(_deform_conv_fast, static_argnums=_STATIC)


def deform_conv2d(
    x: jax.Array,
    offsets: jax.Array,
    mask: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    stride: int = 1,
    padding: int = 1,
    dilation: int = 1,
    taps_per_step: int = 1,
    rows_per_step: int = 2048,
) -> jax.Array:
  """Modulated deformable convolution (DCNv2), official semantics (see the module docstring).

  Same maths as ``deform_conv_reference``, with a hand-written VJP and a scan over the kernel
  taps (``taps_per_step`` at a time) and chunks of at most ``rows_per_step`` output pixels: one
  step samples [rows, Cin] per tap, the four bilinear corners gathered row-wise and fused into
  their weighted sum, and multiplies them into the output. The backward pass reuses the
  forward's corner indices and weights, re-gathers the corner rows, and scatter-adds the input
  gradient; no [.., K, 4, Cin] tensor is ever built, so temporaries stay a few times the input.

  Args:
    x: [B, H, W, Cin].
    offsets: [B, Ho, Wo, 2 * kh * kw]; channel 2k is dy, 2k + 1 is dx for tap k = i * kw + j.
    mask: [B, Ho, Wo, kh * kw] modulation scalars (post-sigmoid).
    kernel: [kh, kw, Cin, Cout] (HWIO).
    bias: [Cout] or None.
    stride, padding, dilation: as the conv (symmetric padding, same for both axes).
    taps_per_step: kernel taps sampled per scan step; must divide kh * kw.
    rows_per_step: most output pixels (B * Ho * Wo) per scan step; bounds the temporaries.

  Returns:
    [B, Ho, Wo, Cout] in x.dtype (sampling weights and matmul accumulation in float32).
  """
  x, offsets, mask, kernel = (jnp.asarray(a) for a in (x, offsets, mask, kernel))
  kh, kw = kernel.shape[:2]
  ho, wo = _check_shapes(x, offsets, mask, kernel, stride, padding, dilation)
  if (kh * kw) % taps_per_step:
    raise ValueError(f'taps_per_step {taps_per_step} does not divide {kh * kw} taps')
  n_chunks = -(-x.shape[0] * ho * wo // rows_per_step)
  out = _deform_conv_fast_jit(x, offsets, mask, kernel.astype(x.dtype), stride, padding,
                              dilation, taps_per_step, n_chunks)
  if bias is not None:
    out = out + bias.astype(out.dtype)
  return out


class DeformConv(nn.Module):
  """DCNv2 layer (official ``DCN``): offsets and mask predicted by a zero-initialised conv.

  ``conv_offset_mask`` outputs 3 * K channels split in three chunks o1, o2, m; offsets =
  concat(o1, o2) (channel 2k = dy, 2k + 1 = dx), mask = sigmoid(m). At init the offsets are 0
  and the mask 0.5, so a fresh layer is 0.5x a plain conv with the same kernel.

  Attributes:
    features: Cout.
    kernel_size, stride, padding, dilation: shared by the DCN and ``conv_offset_mask``.
    use_bias: bias of the main convolution (zeros at init).
    dtype: compute dtype (params are float32).
  """

  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: int = 1
  dilation: int = 1
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, Cin] -> [B, Ho, Wo, features]."""
    k, p, nk = self.kernel_size, self.padding, self.kernel_size ** 2
    om = nn.Conv(
        3 * nk, (k, k), strides=(self.stride, self.stride), padding=((p, p), (p, p)),
        kernel_dilation=(self.dilation, self.dilation), use_bias=True, dtype=self.dtype,
        param_dtype=jnp.float32, kernel_init=nn.initializers.zeros,
        bias_init=nn.initializers.zeros, name='conv_offset_mask')(x)
    o1, o2, m = jnp.split(om.astype(jnp.float32), 3, axis=-1)
    offsets = jnp.concatenate([o1, o2], axis=-1)
    mask = jax.nn.sigmoid(m)
    kernel = self.param('kernel', dcn_kernel_init,
                        (k, k, x.shape[-1], self.features), jnp.float32)
    bias = (self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
            if self.use_bias else None)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    return deform_conv2d(x, offsets, mask, kernel, bias, stride=self.stride, padding=p,
                         dilation=self.dilation)
