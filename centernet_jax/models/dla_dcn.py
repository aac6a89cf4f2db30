"""DLA-34 CenterNet ("Objects as Points", Zhou et al. 2019), official CenterNet
``pose_dla_dcn.py`` (``DLASeg``; arch 'dla', zoo ``dla_34``): the DLA backbone of dla.py, the
DLAUp / IDAUp neck and the heads.

DLA backbone (6 levels, strides 1, 2, 4, 8, 16, 32; dla.py) -> DLAUp (iterative deep aggregation of
levels 2..5 down to stride 4) -> IDAUp over the stride 4, 8, 16 maps -> heads on the stride-4,
64-channel map. Every projection and aggregation node of the neck is DCNv2 3x3 -> BN -> ReLU; up
sampling is a depthwise ConvTranspose2d(C, C, 2f, stride f, padding f / 2, groups C, no bias)
with the bilinear kernel on every channel (official ``fill_up_weights``).

Parameter tree (official key -> ours; conv OIHW -> HWIO, depthwise ConvTranspose (C, 1, k, k) ->
(k, k, 1, C), BN weight -> scale, running_mean/var -> batch_stats mean/var)::

    base.base_layer.{0,1}             -> backbone/base_layer/{0,1}
    base.level{0,1}.{0,1}             -> backbone/level{0,1}/{0,1}
    base.levelN.(treeK.)*{tree1,tree2}.{conv1,bn1,conv2,bn2}, .root.{conv,bn}, .project.{0,1}
                                      -> backbone/levelN/... (same names)
    dla_up.ida_I.proj_K.conv.*        -> dla_up/ida_I/proj_K/conv/{kernel,bias,conv_offset_mask}
    dla_up.ida_I.proj_K.actf.0        -> dla_up/ida_I/proj_K/actf/0        (node_K likewise)
    dla_up.ida_I.up_K.weight          -> dla_up/ida_I/up_K/kernel
    ida_up.{proj,up,node}_K.*         -> ida_up/{proj,up,node}_K/...
    hm.0 / hm.2 (wh, reg)             -> hm/0, hm/2 (wh, reg)
    base.fc.*                         -> (dropped: the ImageNet classifier is never used)

i.e. 'base.' becomes 'backbone/' and every other '.' a '/' (rules at the end of this file).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from centernet_jax.models.dla import DLA, DLA_SPECS, TINY_SPEC
from centernet_jax.models.heads import (
    HEAD_INIT_STYLES,
    make_head,
    official_heads,
    read_torch_heads,
)
from centernet_jax.models.layers import (
    Dtype,
    Initializer,
    batch_norm,
    bilinear_kernel,
    check_option,
    normal_init,
)
from centernet_jax.models.torch_names import TorchCheckpoint, TorchNames
from centernet_jax.ops.deform_conv import DeformConv

# ----------------------------------------------------------------------------------------------
# Neck.


def depthwise_conv_transpose(x: jax.Array, kernel: jax.Array, factor: int) -> jax.Array:
  """PyTorch ``ConvTranspose2d(C, C, 2f, stride f, padding f // 2, groups=C, bias=False)``.

  out[oy, ox, c] += x[iy, ix, c] * kernel[ky, kx, 0, c] for oy = f * iy - f // 2 + ky (same for
  x), computed as a conv over x dilated by f, padded by k - 1 - f // 2, with the flipped kernel.

  Args:
    x: [B, H, W, C].
    kernel: [2f, 2f, 1, C], ``kernel[ky, kx, 0, c] = torch_weight[c, 0, ky, kx]``.
    factor: f (even, or the output is not exactly f times the input).

  Returns:
    [B, f * H, f * W, C].
  """
  k = 2 * factor
  if kernel.shape != (k, k, 1, x.shape[-1]):
    raise ValueError(f'expected a {(k, k, 1, x.shape[-1])} kernel, got {kernel.shape}')
  pad = k - 1 - factor // 2
  return lax.conv_general_dilated(
      x, kernel[::-1, ::-1], window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
      lhs_dilation=(factor, factor), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=x.shape[-1])


def depthwise_bilinear_init(key, shape, dtype=jnp.float32):
  """Official ``fill_up_weights`` on a depthwise [k, k, 1, C] kernel: bilinear on every channel."""
  del key
  k = shape[0]
  return jnp.broadcast_to(jnp.asarray(bilinear_kernel(k), dtype)[:, :, None, None], shape)


DEPTHWISE_UP_INITS: dict[str, Initializer] = {
    'bilinear': depthwise_bilinear_init,  # official
    'normal': normal_init(0.001),
}


class DepthwiseUp(nn.Module):
  """Depthwise f-times up-sampling (:func:`depthwise_conv_transpose`); param 'kernel'."""

  factor: int
  kernel_init: Initializer = depthwise_bilinear_init
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = 2 * self.factor
    kernel = self.param('kernel', self.kernel_init, (k, k, 1, x.shape[-1]), jnp.float32)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    return depthwise_conv_transpose(x, kernel, self.factor)


class _ActF(nn.Module):
  """Official ``actf = nn.Sequential(BN, ReLU)``: the BN is child '0'."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return nn.relu(batch_norm(train, dtype=self.dtype, name='0')(x))


class DeformConvBlock(nn.Module):
  """Official ``DeformConv(chi, cho)``: 'conv' = DCNv2 3x3 (bias) -> 'actf' = BN -> ReLU."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = DeformConv(self.features, 3, dtype=self.dtype, name='conv')(x)
    return _ActF(self.dtype, name='actf')(x, train)


class IDAUp(nn.Module):
  """Iterative deep aggregation, official ``IDAUp(o, channels, up_f)``.

  For i in (startp, endp): layers[i] = node_k(up_k(proj_k(layers[i])) + layers[i - 1]),
  k = i - startp; proj_k maps to ``features`` channels, up_k up-samples by up_factors[k].

  Attributes:
    features: o, output channels of every projection and node.
    up_factors: up-sampling factor of each input (index 0 unused, official ``up_f``).
    up_init: 'bilinear' (official) or 'normal'.
    dtype: compute dtype.
  """

  features: int
  up_factors: Sequence[int]
  up_init: str = 'bilinear'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, layers: Sequence[jax.Array], startp: int, endp: int,
               train: bool) -> list[jax.Array]:
    """Returns a copy of ``layers`` with entries startp + 1 .. endp - 1 replaced."""
    layers = list(layers)
    for i in range(startp + 1, endp):
      k = i - startp
      x = DeformConvBlock(self.features, self.dtype, name=f'proj_{k}')(layers[i], train)
      x = DepthwiseUp(self.up_factors[k], DEPTHWISE_UP_INITS[self.up_init], self.dtype,
                      name=f'up_{k}')(x)
      layers[i] = DeformConvBlock(self.features, self.dtype, name=f'node_{k}')(
          x + layers[i - 1], train)
    return layers


class DLAUp(nn.Module):
  """Official ``DLAUp(startp, channels, scales)``: ida_0 .. ida_{n-2}, deepest first.

  Attributes:
    startp: index of the first level used (first_level = 2 for output stride 4).
    channels: channels of levels startp.. (DLA-34: 64, 128, 256, 512).
    up_init, dtype: as IDAUp.
  """

  startp: int
  channels: Sequence[int]
  up_init: str = 'bilinear'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, layers: Sequence[jax.Array], train: bool) -> list[jax.Array]:
    """All backbone levels -> [stride 2**startp map, ..., deepest map] (len(channels) maps)."""
    layers = list(layers)
    channels = list(self.channels)
    scales = 2 ** np.arange(len(channels))
    out = [layers[-1]]
    for i in range(len(channels) - 1):
      j = -i - 2
      up_f = tuple(int(s) for s in scales[j:] // scales[j])
      scales[j + 1:] = scales[j]
      ida = IDAUp(channels[j], up_f, self.up_init, self.dtype, name=f'ida_{i}')
      layers = ida(layers, len(layers) - i - 2, len(layers), train)
      out.insert(0, layers[-1])
    return out


# ----------------------------------------------------------------------------------------------
# Detector.


class DLASeg(nn.Module):
  """Official ``DLASeg``: DLA -> DLAUp -> IDAUp -> heads (first_level 2, last_level 5).

  Attributes:
    backbone: a :class:`DLA` (its ``channels`` size the neck).
    heads: ((name, channels), ...).
    head_conv: hidden channels of each head (official 256 for DLA; 0: a single 1x1 conv).
    head_init: 'dla' (official pose_dla_dcn), 'fill_fc' or 'msra'; see heads.py.
    up_init: 'bilinear' (official) or 'normal' init of the depthwise up-convs.
    dtype: compute dtype; params are float32, outputs are cast to float32.
  """

  backbone: DLA
  heads: tuple[tuple[str, int], ...]
  head_conv: int = 256
  head_init: str = 'dla'
  up_init: str = 'bilinear'
  dtype: Dtype = jnp.float32
  first_level = 2  # log2(down_ratio = 4)
  last_level = 5

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> list[dict[str, jax.Array]]:
    """[B, H, W, 3] (H, W multiples of 32) -> [{name: [B, H/4, W/4, channels] float32}]."""
    first, last = self.first_level, self.last_level
    channels = tuple(self.backbone.channels)
    x = self.backbone(images, train=train)
    x = DLAUp(first, channels[first:], self.up_init, self.dtype, name='dla_up')(x, train)
    n = last - first
    y = IDAUp(channels[first], tuple(2**i for i in range(n)), self.up_init, self.dtype,
              name='ida_up')(x[:n], 0, n, train)[-1]
    out = {}
    for name, num_outputs in self.heads:
      head = make_head(name, num_outputs, self.head_conv, in_features=y.shape[-1],
                       init_style=self.head_init, dtype=self.dtype)
      out[name] = head(y).astype(jnp.float32)
    return [out]


def _build(spec, heads, dtype, head_conv, deconv_init, head_init) -> DLASeg:
  check_option('deconv_init', deconv_init, DEPTHWISE_UP_INITS)
  check_option('head_init', head_init, HEAD_INIT_STYLES)
  levels, channels = spec
  return DLASeg(DLA(levels, channels, dtype=dtype), tuple(heads), head_conv, head_init,
                deconv_init, dtype)


def build_dla(
    *, heads: Sequence[tuple[str, int]], dtype: Dtype = jnp.float32, depth: int = 34,
    head_conv: int = 256, deconv_init: str = 'bilinear', head_init: str = 'dla',
) -> DLASeg:
  """Official ctdet ``dla_34`` (arch 'dla').

  No ``upsample`` (the depthwise up-convs have one formulation) and no ``neck_skips`` (the
  DLA neck already aggregates every level).

  Args:
    heads: ((name, channels), ...).
    dtype: compute dtype.
    depth: 34 (the only DLA in DLA_SPECS).
    head_conv: hidden head channels (official 256 for DLA; 0: one 1x1 conv).
    deconv_init: 'bilinear' (official) or 'normal' for the depthwise up-convs.
    head_init: 'dla' (official), 'fill_fc' or 'msra'.
  """
  if depth not in DLA_SPECS:
    raise ValueError(f'unknown DLA depth {depth} (config.model.depth); known: '
                     f'{sorted(DLA_SPECS)}')
  return _build(DLA_SPECS[depth], heads, dtype, head_conv, deconv_init, head_init)


def build_dla_tiny(
    *, heads: Sequence[tuple[str, int]], dtype: Dtype = jnp.float32, head_conv: int = 256,
    deconv_init: str = 'bilinear', head_init: str = 'dla',
) -> DLASeg:
  """A small DLA CenterNet (TINY_SPEC, stride-4 map of 8 channels; arch 'dla_tiny') for tests."""
  return _build(TINY_SPEC, heads, dtype, head_conv, deconv_init, head_init)


# ----------------------------------------------------------------------------------------------
# PyTorch names (module docstring): 'base.' becomes 'backbone.', the unused 'base.fc' is dropped.


def _centernet_name(key: str) -> str | None:
  if key.startswith('base.fc.'):
    return None
  return 'backbone.' + key[len('base.'):] if key.startswith('base.') else key


def _centernet_signature(keys: frozenset[str]) -> str | None:
  if any(k.startswith('base.base_layer.') for k in keys):
    return 'a CenterNet dla_34 checkpoint (--format centernet --arch dla_34)'
  return None


TORCH_NAMES = TorchNames(
    rename=_centernet_name,
    read_heads=lambda shapes: read_torch_heads(shapes, ('backbone', 'dla_up', 'ida_up')),
    official_heads=official_heads,
    signature=_centernet_signature,
)
_OFFICIAL = (('head_conv', 256), ('deconv_init', 'bilinear'), ('head_init', 'dla'))
# Official CenterNet zoo ``ctdet_coco_dla_2x``.
TORCH_CHECKPOINTS = {
    'centernet': {
        'dla_34': TorchCheckpoint('dla', TORCH_NAMES, (('depth', 34), *_OFFICIAL)),
        'dla_tiny': TorchCheckpoint('dla_tiny', TORCH_NAMES, _OFFICIAL),
    },
}
