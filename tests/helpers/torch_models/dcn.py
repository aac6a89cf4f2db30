"""DCNv2 in plain PyTorch (no torchvision op, no CUDA extension), for the reference models.

Written from the official ``dcn_v2_im2col_bilinear`` semantics: offset channel 2k is dy, 2k + 1
is dx of tap k = i * kw + j; a sample outside -1 < y < H, -1 < x < W is 0, out-of-range corners
are 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _bilinear(x: torch.Tensor, py: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
  """x [B, C, H, W] sampled at float positions py, px [B, Ho, Wo] -> [B, C, Ho, Wo]."""
  b, c, h, w = x.shape
  valid = (py > -1) & (py < h) & (px > -1) & (px < w)
  y0, x0 = torch.floor(py), torch.floor(px)
  out = torch.zeros(b, c, *py.shape[1:], dtype=x.dtype)
  flat = x.reshape(b, c, h * w)
  for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
    for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
      inside = valid & (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
      idx = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).long().reshape(b, 1, -1)
      vals = torch.gather(flat, 2, idx.expand(b, c, -1)).reshape(b, c, *py.shape[1:])
      out = out + vals * (wy * wx * inside)[:, None]
  return out


def modulated_deform_conv(x, offset, mask, weight, bias, stride=1, padding=1, dilation=1):
  """DCNv2: x [B, C, H, W], offset [B, 2K, Ho, Wo], mask [B, K, Ho, Wo], weight [O, C, kh, kw]."""
  b, c, h, w = x.shape
  o, _, kh, kw = weight.shape
  ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
  wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
  cols = []
  for i in range(kh):
    for j in range(kw):
      k = i * kw + j
      base_y = (torch.arange(ho) * stride - padding + i * dilation).to(x.dtype)
      base_x = (torch.arange(wo) * stride - padding + j * dilation).to(x.dtype)
      py = base_y[:, None] + offset[:, 2 * k]
      px = base_x[None, :] + offset[:, 2 * k + 1]
      cols.append(_bilinear(x, py, px) * mask[:, k:k + 1])
  col = torch.stack(cols, 2)  # [B, C, K, Ho, Wo]
  out = torch.einsum('bckhw,ock->bohw', col, weight.reshape(o, c, kh * kw))
  return out if bias is None else out + bias[None, :, None, None]


class DCN(nn.Module):
  """Official bundled ``DCN`` (offset/mask conv ``conv_offset_mask``, bias) or mmcv
  ``ModulatedDeformConv2dPack`` (``conv_offset``, no bias under a ConvModule with BN)."""

  def __init__(self, cin, cout, k=3, stride=1, padding=1, *, bias=True,
               offset_name='conv_offset_mask'):
    super().__init__()
    self.stride, self.padding = stride, padding
    self.weight = nn.Parameter(torch.empty(cout, cin, k, k))
    nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
    self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
    self.offset_name = offset_name
    setattr(self, offset_name, nn.Conv2d(cin, 3 * k * k, k, stride, padding, bias=True))

  def forward(self, x):
    o1, o2, m = torch.chunk(getattr(self, self.offset_name)(x), 3, dim=1)
    return modulated_deform_conv(x, torch.cat((o1, o2), 1), torch.sigmoid(m), self.weight,
                                 self.bias, self.stride, self.padding)
