"""CenterNet ("Objects as Points", Zhou et al. 2019): backbone + up-sampling neck + heads.

The ResNet model is official ``msra_resnet.py`` (res_18 etc., no DCN; the SimpleBaseline neck of
Xiao et al. 2018): ResNet -> 3 x [ConvTranspose 4x4/2 (no bias) -> BN -> ReLU] at 256 channels
-> one head per output map, all at stride 4.

Parameter tree (official key -> ours; conv OIHW -> HWIO, ConvTranspose (I, O, kh, kw) -> (kh, kw,
I, O), BN weight -> scale, running_mean/var -> batch_stats mean/var)::

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

from centernet_jax.models.heads import make_head
from centernet_jax.models.layers import DECONV_INITS, Dtype, UpConv, batch_norm, conv


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
