"""CenterNet ``large_hourglass.py`` (``exkp``, ctdet heads on every stack) and the stacked
hourglass it shares with CornerNet (``models/py_utils/kp.py``)."""

from __future__ import annotations

import torch
from torch import nn


class HGConvolution(nn.Module):
  """Official ``convolution(k, inp, out, stride, with_bn)``: conv (bias iff no BN) - BN - ReLU."""

  def __init__(self, k, cin, cout, stride=1, with_bn=True):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=not with_bn)
    self.bn = nn.BatchNorm2d(cout) if with_bn else nn.Sequential()

  def forward(self, x):
    return torch.relu(self.bn(self.conv(x)))


class HGResidual(nn.Module):
  """Official ``residual(k, inp, out, stride)`` (k ignored: 3x3 convs)."""

  def __init__(self, cin, cout, stride=1):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                 if stride != 1 or cin != cout else nn.Sequential())

  def forward(self, x):
    y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
    return torch.relu(y + self.skip(x))


class KpModule(nn.Module):
  """Official ``kp_module`` with make_hg_layer (stride-2 first residual), identity max1 and
  nearest up2."""

  def __init__(self, n, dims, modules):
    super().__init__()
    curr, nxt, mod = dims[0], dims[1], modules[0]
    self.up1 = nn.Sequential(*[HGResidual(curr, curr) for _ in range(mod)])
    self.max1 = nn.Sequential()
    self.low1 = nn.Sequential(HGResidual(curr, nxt, 2), *[HGResidual(nxt, nxt)
                                                          for _ in range(mod - 1)])
    self.low2 = (KpModule(n - 1, dims[1:], modules[1:]) if n > 1 else
                 nn.Sequential(*[HGResidual(nxt, nxt) for _ in range(modules[1])]))
    self.low3 = nn.Sequential(*[HGResidual(nxt, nxt) for _ in range(mod - 1)],
                              HGResidual(nxt, curr))
    self.up2 = nn.Upsample(scale_factor=2)

  def forward(self, x):
    return self.up1(x) + self.up2(self.low3(self.low2(self.low1(self.max1(x)))))


def kp_layer(cnv_dim, curr_dim, out_dim):
  return nn.Sequential(HGConvolution(3, cnv_dim, curr_dim, with_bn=False),
                       nn.Conv2d(curr_dim, out_dim, 1))


class StackedHourglass(nn.Module):

  def __init__(self, n, nstack, dims, modules, pre_dim, cnv_dim):
    super().__init__()
    curr = dims[0]
    self.nstack = nstack
    self.pre = nn.Sequential(HGConvolution(7, 3, pre_dim, stride=2), HGResidual(pre_dim, curr, 2))
    self.kps = nn.ModuleList([KpModule(n, dims, modules) for _ in range(nstack)])
    self.cnvs = nn.ModuleList([HGConvolution(3, curr, cnv_dim) for _ in range(nstack)])
    self.inters = nn.ModuleList([HGResidual(curr, curr) for _ in range(nstack - 1)])
    self.inters_ = nn.ModuleList([nn.Sequential(nn.Conv2d(curr, curr, 1, bias=False),
                                                nn.BatchNorm2d(curr)) for _ in range(nstack - 1)])
    self.cnvs_ = nn.ModuleList([nn.Sequential(nn.Conv2d(cnv_dim, curr, 1, bias=False),
                                              nn.BatchNorm2d(curr)) for _ in range(nstack - 1)])

  def stacks(self, image):
    """Yields each stack's ``cnv`` map."""
    inter = self.pre(image)
    for i in range(self.nstack):
      cnv = self.cnvs[i](self.kps[i](inter))
      yield i, cnv
      if i < self.nstack - 1:
        inter = self.inters[i](torch.relu(self.inters_[i](inter) + self.cnvs_[i](cnv)))


class ExKp(StackedHourglass):
  """CenterNet ``exkp`` (ctdet heads on every stack, keyed 'hm', 'wh', 'reg')."""

  def __init__(self, n, nstack, dims, modules, heads, pre_dim=128, cnv_dim=256):
    super().__init__(n, nstack, dims, modules, pre_dim, cnv_dim)
    self.heads = dict(heads)
    for name, out in heads:
      setattr(self, name, nn.ModuleList([kp_layer(cnv_dim, dims[0], out)
                                         for _ in range(nstack)]))

  def forward(self, image):
    return [{name: getattr(self, name)[i](cnv) for name in self.heads}
            for i, cnv in self.stacks(image)]
