"""Shared layers: PyTorch-matching convolutions, BatchNorm, initialisers, the 2x up-convolution.

Layout is NHWC. Conv kernels are HWIO (PyTorch OIHW -> ``w.transpose(2, 3, 1, 0)``). Params are
float32; ``dtype`` is the compute dtype handed to every layer.

The up-convolution is PyTorch ``ConvTranspose2d(Cin, Cout, kernel_size=4, stride=2, padding=1,
output_padding=0, bias=False)``, whose output is exactly 2x the input. Its parameter is stored as
``kernel [4, 4, Cin, Cout]`` with::

    kernel[ky, kx, ci, co] == torch_weight[ci, co, ky, kx]   # kernel = w.transpose(2, 3, 0, 1)

(no spatial flip), so that ``out[oy, ox, co] += x[iy, ix, ci] * kernel[ky, kx, ci, co]`` for
``oy = 2 * iy - 1 + ky`` and ``ox = 2 * ix - 1 + kx``. Two formulations of the same maths read
this one parameter (see :func:`conv_transpose_4x4_s2`).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Dtype = Any
Initializer = Any

# Official BN_MOMENTUM = 0.1 is PyTorch's convention (weight of the new batch); flax weighs the
# running average instead.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
UPSAMPLE_IMPLS = ('subpixel', 'conv_transpose')
_DN = ('NHWC', 'HWIO', 'NHWC')


def resolve_dtype(name: str | Dtype) -> Dtype:
  """Maps a config string ('float32' | 'bfloat16') to a jnp dtype; dtypes pass through."""
  if isinstance(name, str):
    if name not in DTYPES:
      raise ValueError(f'unknown dtype {name!r}; known: {sorted(DTYPES)}')
    return DTYPES[name]
  return name


def check_option(key: str, value: Any, known: Any) -> None:
  """Raises a ValueError naming ``config.model.<key>`` unless ``value`` is one of ``known``."""
  if value not in known:
    raise ValueError(f'unknown config.model.{key} {value!r}; known: {sorted(known)}')


# ----------------------------------------------------------------------------------------------
# Initialisers.

# torchvision ResNet: kaiming_normal_(mode='fan_out', nonlinearity='relu'), fan_out = Cout*kh*kw.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# PyTorch nn.Conv2d.reset_parameters: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
# PyTorch nn.ConvTranspose2d: the same formula, but torch takes fan_in from weight.size(1) = Cout,
# i.e. U(+-1/sqrt(Cout*kh*kw)), which is fan_out for our [kh, kw, Cin, Cout] kernel.
torch_default_transpose_kernel_init = nn.initializers.variance_scaling(
    1.0 / 3.0, 'fan_out', 'uniform')


def torch_default_bias_init(fan_in: int) -> Initializer:
  """PyTorch conv bias default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = Cin*kh*kw."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def normal_init(std: float) -> Initializer:
  """Normal(0, std), as ``torch.nn.init.normal_(w, std=std)``."""
  return nn.initializers.normal(stddev=std)


def bilinear_kernel(size: int) -> np.ndarray:
  """The bilinear up-sampling kernel of official ``fill_up_weights``.

  f = ceil(size / 2), c = (2f - 1 - f % 2) / (2f), w[i, j] = (1 - |i/f - c|) * (1 - |j/f - c|).

  Returns:
    [size, size] float32 (symmetric, so flips and transposes leave it unchanged).
  """
  f = math.ceil(size / 2)
  c = (2 * f - 1 - f % 2) / (2.0 * f)
  r = 1 - np.abs(np.arange(size) / f - c)
  return np.outer(r, r).astype(np.float32)


def fill_up_init(key, shape, dtype=jnp.float32):
  """Faithful official ``fill_up_weights`` for a (non-grouped) ConvTranspose2d.

  The official loop writes the bilinear kernel to ``w[c, 0, :, :]`` for every input channel c:
  only OUTPUT channel 0 becomes bilinear; every other (c, o > 0) pair keeps PyTorch's default
  ConvTranspose2d init. (For the depthwise up-convs of DLA, weight [C, 1, k, k], that fills every
  channel.) Our kernel is [kh, kw, Cin, Cout], so the bilinear slice is ``kernel[:, :, :, 0]``.
  """
  kh, kw, _, _ = shape
  if kh != kw:
    raise ValueError(f'bilinear init needs a square kernel, got {shape}')
  w = torch_default_transpose_kernel_init(key, shape, dtype)
  return w.at[:, :, :, 0].set(jnp.asarray(bilinear_kernel(kh), dtype)[:, :, None])


# official msra_resnet.init_weights: nn.init.normal_(deconv.weight, std=0.001).
deconv_normal_init = normal_init(0.001)
DECONV_INITS = {'normal': deconv_normal_init, 'bilinear': fill_up_init}


# ----------------------------------------------------------------------------------------------
# Convolutions and normalisation.


# Convolutions whose output has at least this many pixels per image take their kernel gradient
# from matmuls on XLA:CPU (conv_matmul_grad). Measured on one core (experiments/cpu_benchmarks.md,
# "Side by side with PyTorch"): at 128 x 128 outputs XLA's kernel gradient of a 3x3 conv took
# 3.7 s (256 -> 64) and 0.93 s (64 -> 64) per batch of 8, the matmuls 2.0 s and 0.53 s; at
# 32 x 32 XLA's was as fast or faster. Other backends always use XLA's.
MATMUL_GRAD_MIN_PIXELS = 128 * 128


def _tap_kernel_grad(xp: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...],
                     strides: tuple[int, int], dtype) -> jax.Array:
  """dL/dkernel of a VALID conv of the padded ``xp``: one matmul per tap, float32 sums."""
  kh, kw, cin, cout = kernel_shape
  b, oh, ow, _ = g.shape
  sh, sw = strides
  g2 = g.reshape(-1, cout)
  taps = []
  for i in range(kh):
    for j in range(kw):
      xs = lax.slice(xp, (0, i, j, 0), (b, i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1, cin),
                     (1, sh, sw, 1))
      taps.append(lax.dot_general(xs.reshape(-1, cin), g2, (((0,), (0,)), ((), ())),
                                  preferred_element_type=jnp.float32))
  return jnp.stack(taps).reshape(kh, kw, cin, cout).astype(dtype)


def _conv_nhwc(x, kernel, strides, padding):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_matmul_grad(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                     padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """An NHWC / HWIO conv (explicit padding) whose kernel gradient is one matmul per tap.

  The value and the input gradient are XLA's (``lax.conv_general_dilated``); the kernel
  gradient ``dk[i, j] = xpad[:, i::s, j::s][:OH, :OW].reshape(-1, Cin)^T @ g.reshape(-1,
  Cout)`` is summed in float32. Same maths as autodiff (tests/models_test.py).
  """
  return _conv_nhwc(x, kernel, strides, padding)


def _conv_matmul_grad_fwd(x, kernel, strides, padding):
  return _conv_nhwc(x, kernel, strides, padding), (x, kernel)


def _conv_matmul_grad_bwd(strides, padding, res, g):
  x, kernel = res
  dx = jax.vjp(lambda x_: _conv_nhwc(x_, kernel, strides, padding), x)[1](g)[0]
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  return dx, _tap_kernel_grad(xp, g, kernel.shape, strides, kernel.dtype)


conv_matmul_grad.defvjp(_conv_matmul_grad_fwd, _conv_matmul_grad_bwd)


def conv_general_dilated_auto(lhs, rhs, window_strides, padding, lhs_dilation=None,
                              rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                              precision=None, **kwargs):
  """``lax.conv_general_dilated`` for ``nn.Conv``, with :func:`conv_matmul_grad` where it pays.

  That is: on CPU, for a plain NHWC / HWIO conv (no dilation, one group, explicit padding)
  whose output has at least :data:`MATMUL_GRAD_MIN_PIXELS` pixels per image. Everything else,
  and every other backend, is ``lax.conv_general_dilated`` unchanged.
  """
  args = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
              dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
              precision=precision, **kwargs)
  plain = (jax.default_backend() == 'cpu' and not kwargs and precision is None
           and feature_group_count == 1 and lhs.ndim == 4
           and all(d in (None, 1) for d in (lhs_dilation or ()) + (rhs_dilation or ()))
           and not isinstance(padding, str)
           and dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DN))
  if plain:
    out_hw = [(n + lo + hi - k) // s + 1 for n, k, s, (lo, hi)
              in zip(lhs.shape[1:3], rhs.shape[:2], window_strides, padding, strict=True)]
    if out_hw[0] * out_hw[1] >= MATMUL_GRAD_MIN_PIXELS:
      return conv_matmul_grad(lhs, rhs, tuple(window_strides),
                              tuple(tuple(p) for p in padding))
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **args)


def conv(
    features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int | None = None,
    use_bias: bool = False,
    dtype: Dtype = jnp.float32,
    kernel_init: Initializer = kaiming_normal_fan_out,
    bias_init: Initializer = nn.initializers.zeros,
    name: str | None = None,
) -> nn.Conv:
  """A PyTorch-style Conv2d: symmetric explicit padding (default kernel_size // 2).

  Explicit padding matters for stride 2: flax's 'SAME' pads (0, 1) on even inputs where PyTorch
  pads (1, 1).
  """
  p = kernel_size // 2 if padding is None else padding
  return nn.Conv(
      features,
      (kernel_size, kernel_size),
      strides=(stride, stride),
      padding=((p, p), (p, p)),
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=kernel_init,
      bias_init=bias_init,
      conv_general_dilated=conv_general_dilated_auto,
      name=name,
  )


def batch_norm(train: bool, *, dtype: Dtype = jnp.float32, name: str | None = None) -> nn.BatchNorm:
  """BatchNorm2d with PyTorch defaults (momentum 0.1 there = 0.9 here, eps 1e-5, scale 1, bias 0).

  Difference left in: flax updates the running variance with the biased batch variance, PyTorch
  with the unbiased one (factor n / (n - 1), n = B*H*W per channel; negligible at detection sizes).
  """
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=BN_MOMENTUM,
      epsilon=BN_EPSILON,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


# ----------------------------------------------------------------------------------------------
# ConvTranspose2d(k=4, s=2, p=1).


def _conv_transpose_lax(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Transposed conv as an input-dilated conv with the spatially flipped kernel.

  PyTorch ConvTranspose2d(k, s, p) = conv over x dilated by s, padded by k - 1 - p = 2 per side,
  with the kernel flipped. Fast forward, but XLA:CPU's weight gradient of this is very slow.
  """
  return lax.conv_general_dilated(
      x, kernel[::-1, ::-1], window_strides=(1, 1), padding=((2, 2), (2, 2)),
      lhs_dilation=(2, 2), dimension_numbers=_DN)


def valid_conv_tap_grad(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A stride-1 'VALID' conv whose kernel gradient is one matmul per tap (:func:`conv_matmul_grad`).

  XLA:CPU's own kernel gradient of the sub-pixel up-sampling conv (2x2, Cin 256 -> 4 * 256)
  was the most expensive op of the ResNet-18 train step, 321 ms of 1.9 s on one core at
  128 px, 21 s when compiled alone; these 4 matmuls take 66 ms (experiments/cpu_benchmarks.md,
  "Side by side with PyTorch"). Used on every backend: 4 plain matmuls.
  """
  return conv_matmul_grad(x, kernel, (1, 1), ((0, 0), (0, 0)))


def _conv_transpose_subpixel(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The same maths as one 2x2 conv with 4*Cout outputs (one group per output phase).

  Output row oy = 2m + a (phase a in {0, 1}) receives input rows iy = m + a + u - 1, u in {0, 1},
  through tap ky = 3 - a - 2u. So with x zero-padded by 1 and kf = kernel flipped, a VALID 2x2 conv
  with K2[u, v, ci, (a, b, co)] = kf[2u + a, 2v + b, ci, co] gives y[q, r, (a, b, co)] for
  q, r in [0, H] / [0, W], and out[2m + a, 2n + b] = y[m + a, n + b, (a, b)]. Every tap of the
  4x4 kernel is used exactly once (no zero taps, same FLOPs as the transposed conv).

  The kernel gradient is :func:`valid_conv_tap_grad`'s 4 matmuls (XLA:CPU's own was the
  slowest op of the step); the value and the input gradient are XLA's conv of the explicitly
  padded input.
  """
  b, h, w, cin = x.shape
  cout = kernel.shape[-1]
  kf = kernel[::-1, ::-1].reshape(2, 2, 2, 2, cin, cout)  # [u, a, v, b, Cin, Cout]
  k2 = kf.transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, cin, 4 * cout)
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = valid_conv_tap_grad(xp, k2)
  y = y.reshape(b, h + 1, w + 1, 2, 2, cout)
  rows = [jnp.stack([y[:, a:a + h, c:c + w, a, c] for c in range(2)], axis=3) for a in range(2)]
  out = jnp.stack(rows, axis=2)  # [B, H, 2 (a), W, 2 (b), Cout]
  return out.reshape(b, 2 * h, 2 * w, cout)


def conv_transpose_4x4_s2(x: jax.Array, kernel: jax.Array, impl: str = 'subpixel') -> jax.Array:
  """PyTorch ``ConvTranspose2d(k=4, stride=2, padding=1, bias=False)`` in NHWC.

  Args:
    x: [B, H, W, Cin].
    kernel: [4, 4, Cin, Cout], ``kernel[ky, kx, ci, co] = torch_weight[ci, co, ky, kx]``.
    impl: 'subpixel' (2x2 conv + phase interleave; fast gradients everywhere) or
      'conv_transpose' (input-dilated conv). Same result up to float rounding.

  Returns:
    [B, 2H, 2W, Cout] in the dtype of x and kernel.
  """
  if kernel.shape[:2] != (4, 4):
    raise ValueError(f'expected a [4, 4, Cin, Cout] kernel, got {kernel.shape}')
  if impl == 'subpixel':
    return _conv_transpose_subpixel(x, kernel)
  if impl == 'conv_transpose':
    return _conv_transpose_lax(x, kernel)
  raise ValueError(f'unknown upsample {impl!r}; known: {UPSAMPLE_IMPLS}')


class UpConv(nn.Module):
  """2x up-sampling ConvTranspose2d(Cin, features, 4, stride 2, padding 1, bias False).

  Attributes:
    features: Cout.
    upsample: formulation, 'subpixel' or 'conv_transpose' (same parameter, same tree).
    kernel_init: init of the [4, 4, Cin, Cout] kernel (default: official msra_resnet N(0, 0.001)).
    dtype: compute dtype.
  """

  features: int
  upsample: str = 'subpixel'
  kernel_init: Initializer = deconv_normal_init
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, Cin] -> [B, 2H, 2W, features]."""
    kernel = self.param('kernel', self.kernel_init, (4, 4, x.shape[-1], self.features),
                        jnp.float32)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    return conv_transpose_4x4_s2(x, kernel, self.upsample)
