"""Tests for centernet_jax.ops.deform_conv against a loop oracle of the DCNv2 definition."""

import math
import zlib

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax import lax

from centernet_jax.ops import deform_conv

_DN = ('NHWC', 'HWIO', 'NHWC')


def _bilinear_oracle(img, y, x):
  """img [H, W, C] float64; official dcn_v2_im2col_bilinear with the -1 < y < H guard."""
  h, w, c = img.shape
  if not (-1 < y < h and -1 < x < w):
    return np.zeros(c)
  y0, x0 = math.floor(y), math.floor(x)
  ly, lx = y - y0, x - x0
  out = np.zeros(c)
  for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
    for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
      if 0 <= yy <= h - 1 and 0 <= xx <= w - 1:
        out += wy * wx * img[yy, xx]
  return out


def _dcn_oracle(x, offsets, mask, kernel, bias, stride, pad, dil):
  """Explicit loops over batch, output pixel, tap, in float64."""
  x, offsets, mask, kernel = (np.asarray(a, np.float64) for a in (x, offsets, mask, kernel))
  b, _, _, _ = x.shape
  kh, kw, _, cout = kernel.shape
  _, ho, wo, _ = offsets.shape
  out = np.zeros((b, ho, wo, cout))
  for n in range(b):
    for oy in range(ho):
      for ox in range(wo):
        for i in range(kh):
          for j in range(kw):
            k = i * kw + j
            y = oy * stride - pad + i * dil + offsets[n, oy, ox, 2 * k]
            xx = ox * stride - pad + j * dil + offsets[n, oy, ox, 2 * k + 1]
            v = mask[n, oy, ox, k] * _bilinear_oracle(x[n], y, xx)
            out[n, oy, ox] += v @ kernel[i, j]
  if bias is not None:
    out += np.asarray(bias, np.float64)
  return out


def _out_size(size, k, stride, pad, dil):
  return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _inputs(seed, b, h, w, cin, cout, k, stride, pad, dil, offset_range, frac_only=False):
  """Random inputs; frac_only keeps every sample position >= 0.2 away from an integer."""
  rng = np.random.default_rng(seed)
  ho, wo = _out_size(h, k, stride, pad, dil), _out_size(w, k, stride, pad, dil)
  x = rng.normal(size=(b, h, w, cin)).astype(np.float32)
  if frac_only:
    whole = rng.integers(-offset_range, offset_range + 1, size=(b, ho, wo, 2 * k * k))
    offsets = whole + rng.uniform(0.2, 0.8, size=whole.shape)
  else:
    offsets = rng.uniform(-offset_range, offset_range, size=(b, ho, wo, 2 * k * k))
  mask = rng.uniform(0.0, 1.0, size=(b, ho, wo, k * k)).astype(np.float32)
  kernel = rng.normal(size=(k, k, cin, cout)).astype(np.float32)
  bias = rng.normal(size=(cout,)).astype(np.float32)
  return x, offsets.astype(np.float32), mask, kernel, bias


# name, (b, h, w, cin, cout, k, stride, pad, dil), offset range
CASES = [
    ('fractional', (2, 5, 6, 3, 2, 3, 1, 1, 1), 1.5),
    ('leaves_image', (1, 6, 5, 2, 2, 3, 1, 1, 1), 9.0),
    ('near_border', (2, 4, 4, 2, 1, 3, 1, 1, 1), 2.5),
    ('stride2', (2, 7, 6, 3, 2, 3, 2, 1, 1), 1.5),
    ('dilation2', (1, 7, 7, 2, 2, 3, 1, 2, 2), 2.0),
    ('pad0', (2, 6, 5, 2, 2, 3, 1, 0, 1), 1.5),
    ('pad0_stride2_dil2', (1, 7, 7, 3, 2, 3, 2, 0, 2), 3.0),
    ('kernel1', (2, 4, 5, 3, 2, 1, 1, 0, 1), 2.0),
]


@pytest.mark.parametrize('name,shape,offset_range', CASES, ids=[c[0] for c in CASES])
def test_matches_loop_oracle(name, shape, offset_range):
  b, h, w, cin, cout, k, stride, pad, dil = shape
  x, offsets, mask, kernel, bias = _inputs(zlib.crc32(name.encode()), *shape, offset_range)
  got = deform_conv.deform_conv2d(jnp.asarray(x), jnp.asarray(offsets), jnp.asarray(mask),
                                  jnp.asarray(kernel), jnp.asarray(bias), stride=stride,
                                  padding=pad, dilation=dil)
  want = _dcn_oracle(x, offsets, mask, kernel, bias, stride, pad, dil)
  assert got.shape == want.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_offsets_far_outside_give_bias_only():
  x, offsets, mask, kernel, bias = _inputs(1, 1, 5, 5, 2, 2, 3, 1, 1, 1, 1.0)
  for far in (-50.0, 50.0):
    for channel in (0, 1):  # every dy, then every dx, pushed off one side
      o = offsets.copy()
      o[..., channel::2] = far
      got = deform_conv.deform_conv2d(x, o, mask, kernel, bias)
      np.testing.assert_allclose(np.asarray(got), np.broadcast_to(bias, got.shape), atol=1e-6)


@pytest.mark.parametrize('stride,pad,dil', [(1, 1, 1), (2, 1, 1), (1, 0, 1), (1, 2, 2), (2, 0, 2)])
def test_zero_offsets_full_mask_is_regular_conv(stride, pad, dil):
  x, offsets, mask, kernel, _ = _inputs(2, 2, 7, 6, 3, 2, 3, stride, pad, dil, 1.0)
  got = deform_conv.deform_conv2d(x, np.zeros_like(offsets), np.ones_like(mask), kernel, None,
                                  stride=stride, padding=pad, dilation=dil)
  want = lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                  rhs_dilation=(dil, dil), dimension_numbers=_DN)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('stride,dil', [(1, 1), (2, 1), (1, 2)])
def test_fresh_module_is_half_plain_conv(stride, dil):
  x = jax.random.normal(jax.random.key(3), (2, 7, 7, 3))
  layer = deform_conv.DeformConv(2, stride=stride, padding=dil, dilation=dil)
  variables = layer.init(jax.random.key(4), x)
  params = variables['params']
  assert set(params) == {'kernel', 'bias', 'conv_offset_mask'}
  assert params['kernel'].shape == (3, 3, 3, 2) and params['kernel'].dtype == jnp.float32
  assert params['conv_offset_mask']['kernel'].shape == (3, 3, 3, 27)
  assert not np.any(params['conv_offset_mask']['kernel']) and not np.any(params['bias'])
  assert not np.any(params['conv_offset_mask']['bias'])
  bound = 1 / math.sqrt(3 * 9)
  assert 0.5 * bound < np.abs(params['kernel']).max() <= bound
  got = layer.apply(variables, x)
  plain = lax.conv_general_dilated(x, params['kernel'], (stride, stride),
                                   ((dil, dil), (dil, dil)), rhs_dilation=(dil, dil),
                                   dimension_numbers=_DN)
  np.testing.assert_allclose(np.asarray(got), 0.5 * np.asarray(plain), rtol=1e-5, atol=1e-6)


def test_module_offset_channel_layout():
  """conv_offset_mask channels: [dy_0, dx_0, ..., dy_8, dx_8] over two chunks, then 9 mask."""
  x = jax.random.normal(jax.random.key(5), (1, 6, 6, 2))
  layer = deform_conv.DeformConv(2)
  variables = layer.init(jax.random.key(6), x)
  rng = np.random.default_rng(7)
  om_bias = rng.uniform(-1.5, 1.5, size=27).astype(np.float32)
  variables['params']['conv_offset_mask']['bias'] = jnp.asarray(om_bias)
  got = layer.apply(variables, x)
  offsets = np.broadcast_to(om_bias[:18], (1, 6, 6, 18))
  mask = np.broadcast_to(1 / (1 + np.exp(-om_bias[18:])), (1, 6, 6, 9))
  want = _dcn_oracle(x, offsets, mask, variables['params']['kernel'], None, 1, 1, 1)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


GRAD_ARGS = ['x', 'offsets', 'mask', 'kernel']


@pytest.mark.parametrize('stride,pad,dil', [(1, 1, 1), (2, 0, 2)])
def test_gradients_match_oracle_finite_differences(stride, pad, dil):
  """Directional derivatives: jax reverse mode (float32) vs central differences of the float64
  oracle. Every sample sits >= 0.2 from an integer coordinate, so a step of 1e-4 crosses no
  bilinear kink or border."""
  shape = (1, 5, 6, 2, 2, 3, stride, pad, dil)
  args = dict(zip(GRAD_ARGS + ['bias'], _inputs(11 + stride, *shape, 3, frac_only=True),
                  strict=True))
  proj = np.random.default_rng(12).normal(
      size=(1, _out_size(5, 3, stride, pad, dil), _out_size(6, 3, stride, pad, dil), 2))

  def loss_jax(x, offsets, mask, kernel):
    out = deform_conv.deform_conv2d(x, offsets, mask, kernel, args['bias'], stride=stride,
                                    padding=pad, dilation=dil)
    return jnp.sum(out * proj)

  def loss_np(**kw):
    full = {**args, **kw}
    return np.sum(_dcn_oracle(full['x'], full['offsets'], full['mask'], full['kernel'],
                              full['bias'], stride, pad, dil) * proj)

  grads = jax.grad(loss_jax, argnums=(0, 1, 2, 3))(*(jnp.asarray(args[a]) for a in GRAD_ARGS))
  rng = np.random.default_rng(13)
  eps = 1e-4
  for name, g in zip(GRAD_ARGS, grads, strict=True):
    assert np.all(np.isfinite(g))
    for _ in range(2):
      d = rng.normal(size=args[name].shape)
      base = np.asarray(args[name], np.float64)
      fd = (loss_np(**{name: base + eps * d}) - loss_np(**{name: base - eps * d})) / (2 * eps)
      np.testing.assert_allclose(np.sum(np.asarray(g, np.float64) * d), fd, rtol=2e-4,
                                 atol=1e-3, err_msg=name)


def test_gradients_float32_check_grads():
  """jax's own numerical check in float32 (bilinear maps are quadratic at most between kinks,
  so central differences with eps 1e-2 are exact up to rounding)."""
  x, offsets, mask, kernel, bias = _inputs(21, 1, 5, 5, 2, 2, 3, 1, 1, 1, 2, frac_only=True)
  f = lambda x, o, m, k: deform_conv.deform_conv2d(x, o, m, k, bias)
  jax.test_util.check_grads(f, (x, offsets, mask, kernel), order=1, modes=('rev',), eps=1e-2,
                            atol=2e-2, rtol=2e-2)


def test_jit_and_bfloat16_close_to_float32():
  x = jax.random.normal(jax.random.key(8), (2, 7, 7, 3))
  layer32 = deform_conv.DeformConv(2)
  variables = layer32.init(jax.random.key(9), x)
  rng = np.random.default_rng(10)
  variables['params']['conv_offset_mask']['kernel'] = jnp.asarray(
      rng.normal(scale=0.3, size=(3, 3, 3, 27)), jnp.float32)
  out32 = jax.jit(layer32.apply)(variables, x)
  out16 = jax.jit(deform_conv.DeformConv(2, dtype=jnp.bfloat16).apply)(
      variables, x.astype(jnp.bfloat16))
  assert out16.dtype == jnp.bfloat16
  scale = np.abs(np.asarray(out32)).max()
  np.testing.assert_allclose(np.asarray(out16, np.float32), np.asarray(out32),
                             atol=3e-2 * scale)
  g = jax.grad(lambda v: jnp.sum(deform_conv.DeformConv(2, dtype=jnp.bfloat16).apply(
      v, x.astype(jnp.bfloat16)).astype(jnp.float32)))(variables)
  assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(g))


def test_shape_errors():
  x, offsets, mask, kernel, bias = _inputs(0, 1, 5, 5, 2, 2, 3, 1, 1, 1, 1.0)
  with pytest.raises(ValueError, match='offsets'):
    deform_conv.deform_conv2d(x, offsets[..., :9], mask, kernel, bias)
  with pytest.raises(ValueError, match='mask'):
    deform_conv.deform_conv2d(x, offsets, mask[..., :4], kernel, bias)
  with pytest.raises(ValueError, match='channels'):
    deform_conv.deform_conv2d(x[..., :1], offsets, mask, kernel, bias)


# Fast path (custom VJP, scan over taps and row chunks) against deform_conv_reference (autodiff of
# the 4-corner gather): outputs and the gradients with respect to every input.
# name, (b, h, w, cin, cout, k, stride, pad, dil), offset range, taps_per_step, rows_per_step,
# integer offsets. rows_per_step 16 cuts 70 output pixels into 5 chunks (the last one padded).
PARITY_CASES = [
    ('leaves_image_nonsquare_chunks', (2, 7, 5, 3, 4, 3, 1, 1, 1), 6.0, 1, 16, False),
    ('stride2_dil2_pad0', (1, 9, 8, 2, 3, 3, 2, 0, 2), 2.5, 1, 2048, False),
    ('integer_offsets_taps3_chunks', (2, 6, 7, 3, 2, 3, 1, 1, 1), 2.0, 3, 20, True),
    ('all_taps_one_step', (1, 5, 6, 2, 3, 3, 1, 2, 2), 3.0, 9, 2048, False),
]
PARITY_IDS = [c[0] for c in PARITY_CASES]


def _out_and_grads(fn, args, proj, **kw):
  """fn(*args) and the gradients of sum(fn(*args) * proj) w.r.t. all five args, in one jit."""

  def f(*a):
    out, vjp = jax.vjp(lambda *a: fn(*a, **kw), *a)
    return out, vjp(jnp.asarray(proj, out.dtype))

  return jax.jit(f)(*args)


def _parity_args(name, shape, offset_range, integer, dtype):
  b, h, w, cin, cout, k, stride, pad, dil = shape
  x, offsets, mask, kernel, bias = _inputs(zlib.crc32(name.encode()), *shape, offset_range)
  if integer:  # every sample on the pixel grid: the bilinear kinks, both sides floor alike
    offsets = np.round(offsets)
  ho, wo = _out_size(h, k, stride, pad, dil), _out_size(w, k, stride, pad, dil)
  proj = np.random.default_rng(1).normal(size=(b, ho, wo, cout)).astype(np.float32)
  return (jnp.asarray(x, dtype), jnp.asarray(offsets), jnp.asarray(mask),
          jnp.asarray(kernel, dtype), jnp.asarray(bias, dtype)), proj


def _assert_close(got, want, rel, err_msg):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  scale = max(np.abs(want).max(), 1e-6)
  np.testing.assert_allclose(got, want, atol=rel * scale, rtol=0, err_msg=err_msg)


@pytest.mark.parametrize('name,shape,offset_range,taps,rows,integer', PARITY_CASES,
                         ids=PARITY_IDS)
def test_fast_matches_reference_float32(name, shape, offset_range, taps, rows, integer):
  stride, pad, dil = shape[6:]
  args, proj = _parity_args(name, shape, offset_range, integer, jnp.float32)
  conv = dict(stride=stride, padding=pad, dilation=dil)
  out_want, want = _out_and_grads(deform_conv.deform_conv_reference, args, proj, **conv)
  out_got, got = _out_and_grads(deform_conv.deform_conv2d, args, proj, taps_per_step=taps,
                                rows_per_step=rows, **conv)
  assert out_got.dtype == jnp.float32 and out_got.shape == out_want.shape
  _assert_close(out_got, out_want, 1e-5, 'output')
  for arg, g, g_ref in zip(['x', 'offsets', 'mask', 'kernel', 'bias'], got, want, strict=True):
    assert g.dtype == g_ref.dtype and g.shape == g_ref.shape, arg
    _assert_close(g, g_ref, 1e-5, arg)


@pytest.mark.parametrize('name,shape,offset_range,taps,rows,integer', PARITY_CASES[:1],
                         ids=PARITY_IDS[:1])
def test_fast_matches_reference_bfloat16(name, shape, offset_range, taps, rows, integer):
  """bfloat16 x and kernel: both round the samples to bfloat16 before the matmul, so they agree
  to bfloat16 precision (the fast path's gradients are accumulated in float32)."""
  stride, pad, dil = shape[6:]
  args, proj = _parity_args(name, shape, offset_range, integer, jnp.bfloat16)
  conv = dict(stride=stride, padding=pad, dilation=dil)
  out_want, want = _out_and_grads(deform_conv.deform_conv_reference, args, proj, **conv)
  out_got, got = _out_and_grads(deform_conv.deform_conv2d, args, proj, taps_per_step=taps,
                                rows_per_step=rows, **conv)
  assert out_got.dtype == jnp.bfloat16
  _assert_close(out_got, out_want, 2e-2, 'output')
  for arg, g, g_ref in zip(['x', 'offsets', 'mask', 'kernel', 'bias'], got, want, strict=True):
    assert g.dtype == g_ref.dtype, arg
    _assert_close(g, g_ref, 3e-2, arg)


def test_fast_rejects_taps_per_step_not_dividing_taps():
  x, offsets, mask, kernel, bias = _inputs(0, 1, 5, 5, 2, 2, 3, 1, 1, 1, 1.0)
  with pytest.raises(ValueError, match='taps_per_step'):
    deform_conv.deform_conv2d(x, offsets, mask, kernel, bias, taps_per_step=2)
