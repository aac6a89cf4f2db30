"""ResNet-DCN CenterNet (official ``resnet_dcn.py``: arch ``resdcn_18``, ``resdcn_101``).

torchvision ResNet -> 3 x [DCNv2 3x3 (bias) -> BN -> ReLU -> ConvTranspose2d(4, stride 2,
padding 1, no bias, bilinear ``fill_up_weights``) -> BN -> ReLU] with 256, 128, 64 channels ->
heads (head_conv 64, ``fill_fc_weights`` init) at stride 4.

Builders: arch 'resdcn' (``resdcn_{depth}``) and 'resdcn_tiny'.

Parameter tree (official key -> ours; conv OIHW -> HWIO, ConvTranspose (I, O, kh, kw) -> (kh, kw,
I, O), BN weight -> scale, running_mean/var -> batch_stats mean/var; rules at the end)::

    conv1, bn1, layerN.*                   -> backbone/conv1, backbone/bn1, backbone/layerN/...
    deconv_layers.{0,6,12}.{weight,bias}   -> deconv_layers/{0,6,12}/{kernel,bias}   (DeformConv)
    deconv_layers.{0,6,12}.conv_offset_mask -> deconv_layers/{0,6,12}/conv_offset_mask
    deconv_layers.{1,4,7,10,13,16}         -> deconv_layers/{1,4,...}/{scale,bias}  (BN)
    deconv_layers.{3,9,15}.weight          -> deconv_layers/{3,9,15}/kernel         (UpConv)
    hm.0 / hm.2 (wh, reg)                  -> hm/0, hm/2 (wh, reg)

mmdetection's CenterNet ResNet-18 is the same network with other options (mmdet.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from centernet_jax.models import resnet
from centernet_jax.models.heads import (
    HEAD_INIT_STYLES,
    make_head,
    official_heads,
    read_torch_heads,
)
from centernet_jax.models.layers import (
    DECONV_INITS,
    UPSAMPLE_IMPLS,
    Dtype,
    UpConv,
    batch_norm,
    check_option,
    conv,
)
from centernet_jax.models.torch_names import TorchCheckpoint, TorchNames
from centernet_jax.ops.deform_conv import DeformConv


class DCNNeck(nn.Module):
  """len(filters) x [DCN 3x3 -> BN -> ReLU -> UpConv 4x4/2 -> BN -> ReLU].

  Children are the official nn.Sequential indices: 6i DCN, 6i + 1 BN, 6i + 3 up-conv, 6i + 4 BN.

  Attributes:
    filters: channels of each stage (official 256, 128, 64).
    upsample: 'subpixel' or 'conv_transpose' (same parameter, same maths).
    deconv_init: 'bilinear' (official fill_up_weights) or 'normal' (N(0, 0.001)).
    dtype: compute dtype.
    dcn: DCNv2 3x3 convs (official); False: plain 3x3 convs (mmdet CTResNetNeck use_dcn=False).
    conv_bias: bias on the 3x3 convs (official True; mmdet's ConvModule has none).
  """

  filters: Sequence[int] = (256, 128, 64)
  upsample: str = 'subpixel'
  deconv_init: str = 'bilinear'
  dtype: Dtype = jnp.float32
  dcn: bool = True
  conv_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """[B, h, w, C] -> [B, h * 2**n, w * 2**n, filters[-1]]."""
    if self.deconv_init not in DECONV_INITS:
      raise ValueError(f'unknown deconv_init {self.deconv_init!r}; known: {sorted(DECONV_INITS)}')
    for i, features in enumerate(self.filters):
      if self.dcn:
        x = DeformConv(features, 3, use_bias=self.conv_bias, dtype=self.dtype,
                       name=str(6 * i))(x)
      else:
        x = conv(features, 3, use_bias=self.conv_bias, dtype=self.dtype, name=str(6 * i))(x)
      x = nn.relu(batch_norm(train, dtype=self.dtype, name=str(6 * i + 1))(x))
      x = UpConv(features, self.upsample, DECONV_INITS[self.deconv_init], self.dtype,
                 name=str(6 * i + 3))(x)
      x = nn.relu(batch_norm(train, dtype=self.dtype, name=str(6 * i + 4))(x))
    return x


class ResDCN(nn.Module):
  """Backbone -> DCNNeck on its last (stride 32) map -> heads.

  Attributes:
    backbone: module ``(images, train) -> list of feature maps`` (a :class:`resnet.ResNet`).
    heads: ((name, channels), ...).
    head_conv: hidden channels of each head (official 64; 0: a single 1x1 conv).
    neck_filters: channels of the three DCN up-sampling stages.
    upsample: 'subpixel' or 'conv_transpose'.
    deconv_init: 'bilinear' (official) or 'normal'.
    head_init: 'fill_fc' (official resnet_dcn) or 'msra'.
    dtype: compute dtype; params float32, outputs float32.
    neck_dcn, neck_bias: DCNNeck's dcn and conv_bias (mmdet variants: see the module docstring).
  """

  backbone: nn.Module
  heads: tuple[tuple[str, int], ...]
  head_conv: int = 64
  neck_filters: Sequence[int] = (256, 128, 64)
  upsample: str = 'subpixel'
  deconv_init: str = 'bilinear'
  head_init: str = 'fill_fc'
  dtype: Dtype = jnp.float32
  neck_dcn: bool = True
  neck_bias: bool = True

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> list[dict[str, jax.Array]]:
    """[B, H, W, 3] (H, W multiples of 32) -> [{name: [B, H/4, W/4, channels] float32}]."""
    x = self.backbone(images, train=train)[-1]
    x = DCNNeck(self.neck_filters, self.upsample, self.deconv_init, self.dtype, self.neck_dcn,
                self.neck_bias, name='deconv_layers')(x, train)
    out = {}
    for name, num_outputs in self.heads:
      head = make_head(name, num_outputs, self.head_conv, in_features=x.shape[-1],
                       init_style=self.head_init, dtype=self.dtype)
      out[name] = head(x).astype(jnp.float32)
    return [out]


def check_options(upsample: str, deconv_init: str, head_init: str) -> None:
  """Raises a ValueError naming the config.model key of an unknown value."""
  check_option('upsample', upsample, UPSAMPLE_IMPLS)
  check_option('deconv_init', deconv_init, DECONV_INITS)
  check_option('head_init', head_init, HEAD_INIT_STYLES)


def build_resdcn(
    *, heads: Sequence[tuple[str, int]], dtype: Dtype = jnp.float32, depth: int = 18,
    head_conv: int = 64, upsample: str = 'subpixel', deconv_init: str = 'bilinear',
    head_init: str = 'fill_fc',
) -> ResDCN:
  """Official ``resdcn_{depth}`` (arch 'resdcn'; 18, 101, ...).

  Args:
    heads: ((name, channels), ...).
    dtype: compute dtype.
    depth: ResNet depth (resnet.RESNET_SPECS).
    head_conv: hidden head channels (official 64; 0: one 1x1 conv).
    upsample: 'subpixel' or 'conv_transpose' formulation of the 4x4/2 up-convs.
    deconv_init: 'bilinear' (official) or 'normal'.
    head_init: 'fill_fc' (official), 'msra' or 'dla'.
  """
  check_options(upsample, deconv_init, head_init)
  return ResDCN(resnet.resnet(depth, dtype=dtype), tuple(heads), head_conv, (256, 128, 64),
                upsample, deconv_init, head_init, dtype)


def build_resdcn_tiny(
    *, heads: Sequence[tuple[str, int]], dtype: Dtype = jnp.float32, head_conv: int = 64,
    upsample: str = 'subpixel', deconv_init: str = 'bilinear', head_init: str = 'fill_fc',
) -> ResDCN:
  """TinyResNet + a 16-channel DCN neck (arch 'resdcn_tiny'), for tests and smoke runs."""
  check_options(upsample, deconv_init, head_init)
  return ResDCN(resnet.TinyResNet(dtype=dtype), tuple(heads), head_conv, (16, 16, 16),
                upsample, deconv_init, head_init, dtype)


# ----------------------------------------------------------------------------------------------
# PyTorch names (module docstring): as msra_resnet's, with the up-convs at 6i + 3.

_DEPTHS = tuple(resnet.RESNET_SPECS)


def is_torch_transposed(path: Sequence[str]) -> bool:
  """The neck's ConvTranspose2d weights: deconv_layers.{3, 9, 15} (6i + 3)."""
  return path[0] == 'deconv_layers' and int(path[1]) % 6 == 3


def _signature(keys: frozenset[str]) -> str | None:
  if any(k.startswith('deconv_layers.') and k.endswith('conv_offset_mask.weight') for k in keys):
    d = resnet.torch_depth(keys)
    return f'a CenterNet resdcn checkpoint (--format centernet --arch resdcn_{d})'
  return None


TORCH_NAMES = TorchNames(
    rename=resnet.torch_detector_name,
    transposed=is_torch_transposed,
    read_heads=lambda shapes: read_torch_heads(shapes, ('backbone', 'deconv_layers')),
    official_heads=official_heads,
    signature=_signature,
)
_OFFICIAL = (('head_conv', 64), ('deconv_init', 'bilinear'), ('head_init', 'fill_fc'))
# Official CenterNet zoo ``ctdet_coco_resdcnN`` files.
TORCH_CHECKPOINTS = {
    'centernet': {
        **{f'resdcn_{d}': TorchCheckpoint('resdcn', TORCH_NAMES, (('depth', d), *_OFFICIAL))
           for d in _DEPTHS},
        'resdcn_tiny': TorchCheckpoint('resdcn_tiny', TORCH_NAMES, _OFFICIAL),
    },
}
