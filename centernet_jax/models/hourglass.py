"""Stacked Hourglass backbone (Newell et al. 2016) as in CornerNet and CenterNet ("Hourglass-104"),
and the per-stack heads both detectors put on it (centernet_hourglass.py, cornernet.py).

Official code: CenterNet ``src/lib/models/networks/large_hourglass.py`` (``exkp``, ``kp_module``)
and CornerNet ``models/py_utils/kp.py`` + ``models/CornerNet.py`` (the same topology)::

    pre   = convolution(7, 3 -> 128, stride 2) -> residual(128 -> 256, stride 2)   # stride 4
    per stack i:
      kp  = kp_module(n=5, dims [256, 256, 384, 384, 384, 512], modules [2, 2, 2, 2, 2, 4])
      cnv = convolution(3, 256 -> 256)                                              # heads read it
      if i < nstack - 1:
        inter = residual(ReLU(BN(conv1x1(inter)) + BN(conv1x1(cnv))))               # inters_, cnvs_

    kp_module(n, dims, modules):  (curr = dims[0], next = dims[1], mod = modules[0])
      up1  = mod x residual(curr -> curr)
      low1 = residual(curr -> next, stride 2) + (mod - 1) x residual(next -> next)  # no max-pool
      low2 = kp_module(n - 1, dims[1:], modules[1:])  or, for n == 1, modules[1] x residual(next)
      low3 = (mod - 1) x residual(next -> next) + residual(next -> curr)
      out  = up1 + nearest_upsample_2x(low3)

``convolution(k, in, out)`` is conv k x k (padding (k - 1) // 2, bias only without BN) -> BN ->
ReLU; ``residual`` is conv3x3(stride) - BN - ReLU - conv3x3 - BN + skip (1x1 conv(stride) + BN when
the stride or the channels change), then ReLU. Every layer keeps PyTorch's default init (no
init loop in the official code). Convolutions pad explicitly as PyTorch does (flax 'SAME' pads a
stride-2 conv on even inputs asymmetrically), so an H x W input gives a ceil(H/4) x ceil(W/4)
map (511 -> 128); the recursion needs that map divisible by 2**n (the official test pads inputs
to a multiple of 128).

Parameter tree: nested dicts along the official module path, one level per dotted name (stack
indices included); conv ``weight`` (O, I, kh, kw) -> ``kernel`` (kh, kw, I, O); BN ``weight`` ->
``scale``, ``bias`` -> ``bias``, ``running_mean/var`` -> 'batch_stats' ``mean/var``::

    pre.0.conv.weight                      -> params/pre/0/conv/kernel
    pre.1.skip.1.running_var               -> batch_stats/pre/1/skip/1/var
    kps.0.low2.low2.low1.0.conv1.weight    -> params/kps/0/low2/low2/low1/0/conv1/kernel
    cnvs.1.bn.weight                       -> params/cnvs/1/bn/scale
    inters_.0.1.bias, cnvs_.0.0.weight     -> params/inters_/0/1/bias, params/cnvs_/0/0/kernel
    hm.0.0.conv.weight, hm.0.1.bias        -> params/hm/0/0/conv/kernel, params/hm/0/1/bias
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from centernet_jax.models.heads import HM_BIAS_INIT
from centernet_jax.models.layers import (
    Dtype,
    batch_norm,
    conv,
    torch_default_bias_init,
    torch_default_kernel_init,
)
from centernet_jax.models.torch_names import order_heads


@dataclasses.dataclass(frozen=True)
class HourglassSpec:
  """Topology of a stacked hourglass.

  Attributes:
    n: recursion depth of each kp_module (number of stride-2 levels).
    dims: channels per level (len n + 1); dims[0] is the stack width (curr_dim).
    modules: residual blocks per level (len n + 1); modules[n] blocks form the innermost layer.
    num_stacks: number of hourglasses (each one's features are returned).
    pre_dim: channels of the 7x7 stem conv (official 128).
    cnv_dim: channels of each stack's output ``cnv`` (official 256).
  """

  n: int
  dims: tuple[int, ...]
  modules: tuple[int, ...]
  num_stacks: int = 2
  pre_dim: int = 128
  cnv_dim: int = 256

  def __post_init__(self):
    if self.n < 1 or len(self.dims) != self.n + 1 or len(self.modules) != self.n + 1:
      raise ValueError(f'HourglassSpec: dims {self.dims} and modules {self.modules} must both '
                       f'have n + 1 = {self.n + 1} entries')
    if min(self.modules) < 1 or self.num_stacks < 1:
      raise ValueError(f'HourglassSpec: modules {self.modules} and num_stacks '
                       f'{self.num_stacks} must be >= 1')


# Official Hourglass-104 (CornerNet / CenterNet "large_hourglass").
HOURGLASS_104 = HourglassSpec(n=5, dims=(256, 256, 384, 384, 384, 512),
                              modules=(2, 2, 2, 2, 2, 4), num_stacks=2, pre_dim=128, cnv_dim=256)
HOURGLASS_SPECS = {104: HOURGLASS_104}
# A small variant that trains on a CPU (64-128 px inputs, ~0.2 M parameters with ctdet heads).
HOURGLASS_TINY = HourglassSpec(n=3, dims=(16, 16, 24, 32), modules=(1, 1, 1, 1), num_stacks=2,
                               pre_dim=8, cnv_dim=16)


def tiny_spec(width: int = 1) -> HourglassSpec:
  """HOURGLASS_TINY with every channel count times ``width`` (``config.model.width``)."""
  if isinstance(width, bool) or not isinstance(width, int) or width < 1:
    raise ValueError(f'config.model.width must be an integer >= 1, got {width!r}')
  t = HOURGLASS_TINY
  return dataclasses.replace(t, dims=tuple(d * width for d in t.dims), pre_dim=t.pre_dim * width,
                             cnv_dim=t.cnv_dim * width)


def torch_conv(features: int, kernel_size: int, fan_in_channels: int, *, stride: int = 1,
               use_bias: bool = False, dtype: Dtype = jnp.float32,
               bias_init: Callable | None = None, name: str | None = None) -> nn.Conv:
  """nn.Conv2d(padding=(k - 1) // 2) with PyTorch's default init (kernel and bias)."""
  if bias_init is None:
    bias_init = torch_default_bias_init(fan_in_channels * kernel_size * kernel_size)
  return conv(features, kernel_size, stride=stride, padding=(kernel_size - 1) // 2,
              use_bias=use_bias, dtype=dtype, kernel_init=torch_default_kernel_init,
              bias_init=bias_init, name=name)


def check_input_size(height: int, width: int, n: int) -> None:
  """Raises ValueError unless the stride-4 map, ceil(size / 4), is divisible by 2**n."""
  multiple = 2**n
  for axis, unit, size in (('height', 'rows', height), ('width', 'columns', width)):
    if math.ceil(size / 4) % multiple:
      padded = 4 * multiple * max(1, math.ceil(size / (4 * multiple)))
      raise ValueError(
          f'Hourglass input {axis} {size}: the stride-4 map has ceil({size} / 4) = '
          f'{math.ceil(size / 4)} {unit}, which the {n}-level hourglass needs divisible by '
          f'2**{n} = {multiple}; pad inputs to a multiple of {4 * multiple} (e.g. {padded}'
          f'{", or 511 as the official training" if n == 5 else ""})')


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
  """nn.Upsample(scale_factor=2) (nearest): [B, H, W, C] -> [B, 2H, 2W, C]."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


class Convolution(nn.Module):
  """Official ``convolution(k, inp, out, stride, with_bn)``: conv ('conv') -> BN ('bn') -> ReLU.

  Without BN the conv has a bias (a head's first layer).
  """

  features: int
  kernel_size: int = 3
  stride: int = 1
  with_bn: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """[B, H, W, Cin] -> [B, ceil(H / stride), ceil(W / stride), features]."""
    x = torch_conv(self.features, self.kernel_size, x.shape[-1], stride=self.stride,
                   use_bias=not self.with_bn, dtype=self.dtype, name='conv')(x)
    if self.with_bn:
      x = batch_norm(train, dtype=self.dtype, name='bn')(x)
    return nn.relu(x)


class ConvBN(nn.Module):
  """nn.Sequential(Conv2d(k, stride, no bias) '0', BatchNorm2d '1') (skips, inters_, cnvs_)."""

  features: int
  kernel_size: int = 1
  stride: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = torch_conv(self.features, self.kernel_size, x.shape[-1], stride=self.stride,
                   dtype=self.dtype, name='0')(x)
    return batch_norm(train, dtype=self.dtype, name='1')(x)


class Residual(nn.Module):
  """Official ``residual``: conv1 (3x3, stride) bn1 ReLU conv2 bn2, + skip (ConvBN), ReLU."""

  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """[B, H, W, Cin] -> [B, ceil(H / stride), ceil(W / stride), features]."""
    y = torch_conv(self.features, 3, x.shape[-1], stride=self.stride, dtype=self.dtype,
                   name='conv1')(x)
    y = nn.relu(batch_norm(train, dtype=self.dtype, name='bn1')(y))
    y = torch_conv(self.features, 3, self.features, dtype=self.dtype, name='conv2')(y)
    y = batch_norm(train, dtype=self.dtype, name='bn2')(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = ConvBN(self.features, 1, self.stride, self.dtype, name='skip')(x, train)
    return nn.relu(y + x)


class Residuals(nn.Module):
  """nn.Sequential of residuals '0', '1', ...: ``features[i]`` channels, ``strides[i]``."""

  features: tuple[int, ...]
  strides: tuple[int, ...]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i, (features, stride) in enumerate(zip(self.features, self.strides, strict=True)):
      x = Residual(features, stride, self.dtype, name=str(i))(x, train)
    return x


class KpModule(nn.Module):
  """Official recursive ``kp_module`` (module docstring): children up1, low1, low2, low3."""

  n: int
  dims: tuple[int, ...]
  modules: tuple[int, ...]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """[B, H, W, dims[0]] -> [B, H, W, dims[0]] (H and W divisible by 2**n)."""
    curr, nxt = self.dims[0], self.dims[1]
    mod = self.modules[0]
    up1 = Residuals((curr,) * mod, (1,) * mod, self.dtype, name='up1')(x, train)
    low1 = Residuals((nxt,) * mod, (2,) + (1,) * (mod - 1), self.dtype, name='low1')(x, train)
    if self.n > 1:
      low2 = KpModule(self.n - 1, self.dims[1:], self.modules[1:], self.dtype,
                      name='low2')(low1, train)
    else:
      inner = self.modules[1]
      low2 = Residuals((nxt,) * inner, (1,) * inner, self.dtype, name='low2')(low1, train)
    low3 = Residuals((nxt,) * (mod - 1) + (curr,), (1,) * mod, self.dtype,
                     name='low3')(low2, train)
    return up1 + upsample_nearest_2x(low3)


class PerStack(nn.Module):
  """A container whose children '0', '1', ... are one module per stack (nn.ModuleList).

  Attributes:
    make: ``make(index, name) -> module``; called inside this container, so the child's
      parameters live under ``<container>/<index>``.
  """

  make: Callable[[int, str], nn.Module]

  @nn.compact
  def __call__(self, index: int, *args, **kwargs):
    return self.make(index, str(index))(*args, **kwargs)


class Pre(nn.Module):
  """Official ``pre``: '0' convolution(7, 3 -> pre_dim, stride 2), '1' residual(-> dim, s2)."""

  pre_dim: int
  dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    """[B, H, W, 3] -> [B, ceil(H / 4), ceil(W / 4), dim]."""
    x = Convolution(self.pre_dim, 7, 2, True, self.dtype, name='0')(images, train)
    return Residual(self.dim, 2, self.dtype, name='1')(x, train)


def hourglass_features(spec: HourglassSpec, images: jax.Array, train: bool,
                       dtype: Dtype = jnp.float32) -> list[jax.Array]:
  """Builds and runs the hourglass stacks inside the calling module's compact method.

  The children pre, kps, cnvs, inters, inters_, cnvs_ are created in the caller's scope, so the
  parameter tree starts at the official top-level names.

  Args:
    spec: the topology.
    images: [B, H, W, 3] float; ceil(H / 4) and ceil(W / 4) must be divisible by 2**spec.n.
    train: BatchNorm mode.
    dtype: compute dtype.

  Returns:
    One ``cnv`` map per stack, [B, ceil(H / 4), ceil(W / 4), spec.cnv_dim] in ``dtype``.
  """
  if images.ndim != 4:
    raise ValueError(f'Hourglass expects images [B, H, W, 3], got shape {images.shape}')
  check_input_size(images.shape[1], images.shape[2], spec.n)
  curr = spec.dims[0]
  kps = PerStack(lambda i, name: KpModule(spec.n, spec.dims, spec.modules, dtype, name=name),
                 name='kps')
  cnvs = PerStack(lambda i, name: Convolution(spec.cnv_dim, 3, 1, True, dtype, name=name),
                  name='cnvs')
  inters = PerStack(lambda i, name: Residual(curr, 1, dtype, name=name), name='inters')
  inters_ = PerStack(lambda i, name: ConvBN(curr, 1, 1, dtype, name=name), name='inters_')
  cnvs_ = PerStack(lambda i, name: ConvBN(curr, 1, 1, dtype, name=name), name='cnvs_')

  inter = Pre(spec.pre_dim, curr, dtype, name='pre')(images, train)
  features = []
  for i in range(spec.num_stacks):
    kp = kps(i, inter, train)
    cnv = cnvs(i, kp, train)
    features.append(cnv)
    if i < spec.num_stacks - 1:
      inter = nn.relu(inters_(i, inter, train) + cnvs_(i, cnv, train))
      inter = inters(i, inter, train)
  return features


class Hourglass(nn.Module):
  """The stacked hourglass alone: images -> one ``cnv`` feature map per stack.

  Attributes:
    spec: topology (HOURGLASS_104 or HOURGLASS_TINY).
    dtype: compute dtype (params float32).
  """

  spec: HourglassSpec = HOURGLASS_104
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> list[jax.Array]:
    """[B, H, W, 3] -> num_stacks x [B, ceil(H / 4), ceil(W / 4), cnv_dim]."""
    return hourglass_features(self.spec, images, train, self.dtype)


class KpHead(nn.Module):
  """Official ``make_kp_layer``: '0' convolution(3, -> hidden, no BN, bias) -> '1' conv1x1.

  Attributes:
    num_outputs: output channels.
    hidden: channels of the 3x3 conv (config.model.head_conv; official curr_dim, 256).
    is_heatmap: the final bias starts at -2.19 (official); other layers keep PyTorch's init.
    dtype: compute dtype.
  """

  num_outputs: int
  hidden: int
  is_heatmap: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, h, w, Cin] -> [B, h, w, num_outputs] float32."""
    x = Convolution(self.hidden, 3, 1, False, self.dtype, name='0')(x, False)
    bias_init = nn.initializers.constant(HM_BIAS_INIT) if self.is_heatmap else None
    x = torch_conv(self.num_outputs, 1, self.hidden, use_bias=True, dtype=self.dtype,
                   bias_init=bias_init, name='1')(x)
    return x.astype(jnp.float32)


def head_stacks(name: str, num_outputs: int, hidden: int, is_heatmap: bool,
                dtype: Dtype) -> PerStack:
  """The per-stack heads called ``name`` (official nn.ModuleList of make_kp_layer)."""
  return PerStack(lambda i, child: KpHead(num_outputs, hidden, is_heatmap, dtype, name=child),
                  name=name)


def hourglass_spec(depth: int) -> HourglassSpec:
  """The published topology called ``depth`` (104: HOURGLASS_104)."""
  if depth not in HOURGLASS_SPECS:
    raise ValueError(f'unknown Hourglass depth {depth} (config.model.depth); known: '
                     f'{sorted(HOURGLASS_SPECS)}')
  return HOURGLASS_SPECS[depth]


def check_head_conv(head_conv: int) -> int:
  """Hourglass heads always have their 3x3 conv (official make_kp_layer): head_conv > 0."""
  if head_conv <= 0:
    raise ValueError(f'config.model.head_conv={head_conv}: hourglass heads need a hidden 3x3 '
                     'conv (> 0; official 256, the stack width)')
  return head_conv


# ----------------------------------------------------------------------------------------------
# PyTorch names: ours are the official ones (module docstring); a head module holds one
# make_kp_layer per stack: '{head}.{stack}.0.conv' (3x3, bias) and '{head}.{stack}.1' (1x1).

# Top-level official modules of the stacked hourglass (everything else is a head).
TORCH_BODY = ('pre', 'kps', 'cnvs', 'inters', 'inters_', 'cnvs_')


def read_torch_heads(shapes: Mapping[str, Sequence[int]], body: Sequence[str],
                     official: Sequence[str], suffix: str = ''
                     ) -> tuple[tuple[tuple[str, int], ...], int] | None:
  """(heads, head_conv) of a stacked-hourglass state_dict.

  Args:
    shapes: official names -> shapes.
    body: top-level modules that are not heads.
    official: head names in the order configs list them.
    suffix: module name = head name + suffix (CornerNet's ``tl_heats`` holds ``tl_heat``).

  Returns:
    The heads (official order first) and their hidden width, or None when the file has none.

  Raises:
    ValueError: heads of different hidden widths.
  """
  found, widths = {}, {}
  for key in shapes:
    top = key.split('.')[0]
    final, hidden = f'{top}.0.1.weight', f'{top}.0.0.conv.weight'
    if top in body or not top.endswith(suffix) or final not in shapes or hidden not in shapes:
      continue
    name = top[:len(top) - len(suffix)]
    found[name], widths[name] = int(shapes[final][0]), int(shapes[hidden][0])
  if not found:
    return None
  if len(set(widths.values())) > 1:
    raise ValueError(f'heads of different hidden widths {widths}: one head_conv cannot build them')
  return order_heads(found, official), next(iter(widths.values()))
