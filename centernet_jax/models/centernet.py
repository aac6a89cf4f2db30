"""CenterNet ("Objects as Points", Zhou et al. 2019): backbone + up-sampling neck + heads.

The ResNet model is official ``msra_resnet.py`` (res_18 etc., no DCN; the SimpleBaseline neck of
Xiao et al. 2018): ResNet -> 3 x [ConvTranspose 4x4/2 (no bias) -> BN -> ReLU] at 256 channels
-> one head per output map, all at stride 4.

Builders: arch 'resnet' (``res_{depth}``) and 'resnet_tiny'. The neck also serves the
not-official ``neck_skips`` variant (lateral connections from the backbone).

Parameter tree (official key -> ours; conv OIHW -> HWIO, ConvTranspose (I, O, kh, kw) -> (kh, kw,
I, O), BN weight -> scale, running_mean/var -> batch_stats mean/var; the rules are at the end of
this file)::

    conv1, bn1, layerN.*       -> backbone/conv1, backbone/bn1, backbone/layerN/...
    deconv_layers.{0,3,6}      -> deconv_layers/{0,3,6}/kernel   (UpConv)
    deconv_layers.{1,4,7}      -> deconv_layers/{1,4,7}/{scale,bias}
    hm.0 / hm.2 (wh, reg)      -> hm/0, hm/2 (wh, reg)
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


class DeconvNeck(nn.Module):
  """len(filters) x [ConvTranspose2d(4, stride 2, padding 1, no bias) -> BN -> ReLU].

  Children are named as the official nn.Sequential indices: '0' up-conv, '1' BN ('2' is the
  ReLU), '3', '4', ...

  Attributes:
    filters: output channels of each stage (official [256, 256, 256]).
    upsample: 'subpixel' or 'conv_transpose' (identical maths and parameters).
    deconv_init: 'normal' (official msra_resnet: N(0, 0.001)) or 'bilinear' (official
      fill_up_weights, used by resnet_dcn / DLA).
    dtype: compute dtype.
  """

  filters: Sequence[int] = (256, 256, 256)
  upsample: str = 'subpixel'
  deconv_init: str = 'normal'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool,
               skips: Sequence[jax.Array] | None = None) -> jax.Array:
    """[B, h, w, C] -> [B, h * 2**n, w * 2**n, filters[-1]].

    Args:
      x: the backbone's last (stride 32) feature map.
      train: BatchNorm mode.
      skips: optional backbone maps at the resolution of each stage's output (strides 16, 8,
        4). When given (not official: ``config.model.neck_skips``), each stage adds
        BN(conv1x1(skip)) before its ReLU, a lateral connection as in FPN-style CenterNets
        (TF ODAPI ResNet-FPN), so small inputs keep their spatial detail.
    """
    if self.deconv_init not in DECONV_INITS:
      raise ValueError(f'unknown deconv_init {self.deconv_init!r}; known: {sorted(DECONV_INITS)}')
    for i, features in enumerate(self.filters):
      x = UpConv(features, self.upsample, DECONV_INITS[self.deconv_init], self.dtype,
                 name=str(3 * i))(x)
      x = batch_norm(train, dtype=self.dtype, name=str(3 * i + 1))(x)
      if skips is not None:
        lateral = conv(features, 1, dtype=self.dtype, name=f'skip{i}')(skips[i])
        x = x + batch_norm(train, dtype=self.dtype, name=f'skip{i}_bn')(lateral)
      x = nn.relu(x)
    return x


class CenterNet(nn.Module):
  """Backbone -> DeconvNeck on its last feature map -> heads.

  Attributes:
    backbone: module ``(images, train) -> list of feature maps``; the last one (stride 32) is used.
    heads: ((name, channels), ...), e.g. (('hm', 80), ('wh', 2), ('reg', 2)).
    head_conv: hidden channels of each head (0: a single 1x1 conv).
    neck_filters: channels of the up-sampling stages (3 stages: stride 32 -> 4).
    upsample: 'subpixel' or 'conv_transpose'.
    deconv_init: 'normal' (official msra_resnet) or 'bilinear'.
    head_init: 'msra' (official msra_resnet) or 'fill_fc' (resnet_dcn / DLA); see heads.py.
    neck_skips: add lateral 1x1 conv-BN connections from the backbone (not official).
    dtype: compute dtype; params are float32 and the outputs are cast to float32.
  """

  backbone: nn.Module
  heads: tuple[tuple[str, int], ...]
  head_conv: int = 64
  neck_filters: Sequence[int] = (256, 256, 256)
  upsample: str = 'subpixel'
  deconv_init: str = 'normal'
  head_init: str = 'msra'
  neck_skips: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> list[dict[str, jax.Array]]:
    """Runs the detector.

    Args:
      images: [B, H, W, 3] float (normalised).
      train: BatchNorm in training mode (uses and updates 'batch_stats') when True.

    Returns:
      One dict per stack (one here): {name: [B, H/4, W/4, channels] float32}, e.g. hm logits
      [B, h, w, C], wh [B, h, w, 2], reg [B, h, w, 2].
    """
    features = self.backbone(images, train=train)
    skips = features[-2::-1][:len(self.neck_filters)] if self.neck_skips else None
    x = DeconvNeck(self.neck_filters, self.upsample, self.deconv_init, self.dtype,
                   name='deconv_layers')(features[-1], train, skips)
    out = {}
    for name, channels in self.heads:
      head = make_head(name, channels, self.head_conv, in_features=x.shape[-1],
                       init_style=self.head_init, dtype=self.dtype)
      out[name] = head(x).astype(jnp.float32)
    return [out]


def _check_options(upsample: str, deconv_init: str, head_init: str) -> None:
  check_option('upsample', upsample, UPSAMPLE_IMPLS)
  check_option('deconv_init', deconv_init, DECONV_INITS)
  check_option('head_init', head_init, HEAD_INIT_STYLES)


def build_resnet(
    *, heads: Sequence[tuple[str, int]], dtype: Dtype = jnp.float32, depth: int = 18,
    head_conv: int = 64, upsample: str = 'subpixel', deconv_init: str = 'normal',
    head_init: str = 'msra', neck_skips: bool = False,
) -> CenterNet:
  """Official msra_resnet ``res_{depth}`` (arch 'resnet'): ResNet + 3 up-convs of 256.

  Args:
    heads: ((name, channels), ...).
    dtype: compute dtype.
    depth: ResNet depth (resnet.RESNET_SPECS).
    head_conv: hidden head channels (official 64; 0: one 1x1 conv).
    upsample: 'subpixel' or 'conv_transpose' formulation of the up-convs (same parameters).
    deconv_init: 'normal' (official) or 'bilinear'.
    head_init: 'msra' (official), 'fill_fc' or 'dla' (heads.py).
    neck_skips: lateral connections from the backbone into the neck (not official).
  """
  _check_options(upsample, deconv_init, head_init)
  return CenterNet(resnet.resnet(depth, dtype=dtype), tuple(heads), head_conv, (256, 256, 256),
                   upsample, deconv_init, head_init, neck_skips, dtype)


def build_resnet_tiny(
    *, heads: Sequence[tuple[str, int]], dtype: Dtype = jnp.float32, head_conv: int = 64,
    upsample: str = 'subpixel', deconv_init: str = 'normal', head_init: str = 'msra',
    neck_skips: bool = False,
) -> CenterNet:
  """TinyResNet + a 16-channel neck (arch 'resnet_tiny', ~10^4-10^5 parameters), for tests.

  Args as :func:`build_resnet` (no depth: the tiny backbone has one).
  """
  _check_options(upsample, deconv_init, head_init)
  return CenterNet(resnet.TinyResNet(dtype=dtype), tuple(heads), head_conv, (16, 16, 16),
                   upsample, deconv_init, head_init, neck_skips, dtype)


# ----------------------------------------------------------------------------------------------
# PyTorch names (module docstring): torchvision's for the backbone, 'deconv_layers' for the
# neck (ConvTranspose2d at 0, 3, 6), one module per head.

_DEPTHS = tuple(resnet.RESNET_SPECS)


def _signature(keys: frozenset[str]) -> str | None:
  if (any(k.startswith('deconv_layers.') for k in keys)
      and not any(k.endswith('conv_offset_mask.weight') for k in keys)):
    d = resnet.torch_depth(keys)
    return f'a CenterNet msra_resnet checkpoint (--format centernet --arch res_{d})'
  return None


TORCH_NAMES = TorchNames(
    rename=resnet.torch_detector_name,
    transposed=lambda path: path[0] == 'deconv_layers',
    read_heads=lambda shapes: read_torch_heads(shapes, ('backbone', 'deconv_layers')),
    official_heads=official_heads,
    signature=_signature,
)
# Official CenterNet zoo ``ctdet_coco_resN`` files (msra_resnet).
TORCH_CHECKPOINTS = {
    'centernet': {
        **{f'res_{d}': TorchCheckpoint('resnet', TORCH_NAMES, (('depth', d), ('head_conv', 64)))
           for d in _DEPTHS},
        'res_tiny': TorchCheckpoint('resnet_tiny', TORCH_NAMES, (('head_conv', 64),)),
    },
}
