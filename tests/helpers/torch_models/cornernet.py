"""Official CornerNet ``models/CornerNet.py`` + ``kp.py``: corner pools and the six heads."""

from __future__ import annotations

import torch
from torch import nn

from tests.helpers.torch_models.hourglass import HGConvolution, StackedHourglass, kp_layer


def top(x):
  return torch.flip(torch.cummax(torch.flip(x, [2]), 2)[0], [2])


def left(x):
  return torch.flip(torch.cummax(torch.flip(x, [3]), 3)[0], [3])


def bottom(x):
  return torch.cummax(x, 2)[0]


def right(x):
  return torch.cummax(x, 3)[0]


class CornerPoolModule(nn.Module):
  """Official CornerNet ``pool(dim, pool1, pool2)`` (TopPool: out[y] = max over y' >= y, ...)."""

  def __init__(self, dim, pool1, pool2, pool_dim=128):
    super().__init__()
    self.p1_conv1 = HGConvolution(3, dim, pool_dim)
    self.p2_conv1 = HGConvolution(3, dim, pool_dim)
    self.p_conv1 = nn.Conv2d(pool_dim, dim, 3, padding=1, bias=False)
    self.p_bn1 = nn.BatchNorm2d(dim)
    self.conv1 = nn.Conv2d(dim, dim, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(dim)
    self.conv2 = HGConvolution(3, dim, dim)
    self.pool1, self.pool2 = pool1, pool2

  def forward(self, x):
    p = self.p_bn1(self.p_conv1(self.pool1(self.p1_conv1(x)) + self.pool2(self.p2_conv1(x))))
    return self.conv2(torch.relu(p + self.bn1(self.conv1(x))))


class CornerNetKp(StackedHourglass):
  """CornerNet ``kp`` with tl/br corner pools and the six heads (outputs named as ours)."""

  def __init__(self, n, nstack, dims, modules, num_classes, pre_dim=128, cnv_dim=256,
               pool_dim=128):
    super().__init__(n, nstack, dims, modules, pre_dim, cnv_dim)
    curr = dims[0]
    self.tl_cnvs = nn.ModuleList([CornerPoolModule(cnv_dim, top, left, pool_dim)
                                  for _ in range(nstack)])
    self.br_cnvs = nn.ModuleList([CornerPoolModule(cnv_dim, bottom, right, pool_dim)
                                  for _ in range(nstack)])
    self.outputs = {'tl_heat': num_classes, 'br_heat': num_classes, 'tl_tag': 1, 'br_tag': 1,
                    'tl_regr': 2, 'br_regr': 2}
    for name, out in self.outputs.items():
      setattr(self, name + 's', nn.ModuleList([kp_layer(cnv_dim, curr, out)
                                               for _ in range(nstack)]))

  def forward(self, image):
    outs = []
    for i, cnv in self.stacks(image):
      pooled = {'tl': self.tl_cnvs[i](cnv), 'br': self.br_cnvs[i](cnv)}
      outs.append({name: getattr(self, name + 's')[i](pooled[name[:2]])
                   for name in self.outputs})
    return outs
