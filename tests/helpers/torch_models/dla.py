"""Official CenterNet ``pose_dla_dcn.py`` (dla_34; ``base.*`` = the DLA with its ImageNet
``fc``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tests.helpers.torch_models.dcn import DCN
from tests.helpers.torch_models.heads import centernet_head


class DLABasicBlock(nn.Module):

  def __init__(self, inplanes, planes, stride=1):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)

  def forward(self, x, residual=None):
    residual = x if residual is None else residual
    out = torch.relu(self.bn1(self.conv1(x)))
    return torch.relu(self.bn2(self.conv2(out)) + residual)


class Root(nn.Module):

  def __init__(self, cin, cout, residual):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, 1, 1, bias=False, padding=0)
    self.bn = nn.BatchNorm2d(cout)
    self.residual = residual

  def forward(self, *x):
    out = self.bn(self.conv(torch.cat(x, 1)))
    return torch.relu(out + x[0] if self.residual else out)


class Tree(nn.Module):

  def __init__(self, levels, cin, cout, stride=1, level_root=False, root_dim=0,
               root_residual=False):
    super().__init__()
    root_dim = 2 * cout if root_dim == 0 else root_dim
    if level_root:
      root_dim += cin
    if levels == 1:
      self.tree1 = DLABasicBlock(cin, cout, stride)
      self.tree2 = DLABasicBlock(cout, cout, 1)
      self.root = Root(root_dim, cout, root_residual)
    else:
      self.tree1 = Tree(levels - 1, cin, cout, stride, root_dim=0, root_residual=root_residual)
      self.tree2 = Tree(levels - 1, cout, cout, root_dim=root_dim + cout,
                        root_residual=root_residual)
    self.level_root, self.levels = level_root, levels
    self.downsample = nn.MaxPool2d(stride, stride=stride) if stride > 1 else None
    self.project = None
    if cin != cout:
      self.project = nn.Sequential(nn.Conv2d(cin, cout, 1, 1, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x, residual=None, children=None):
    children = [] if children is None else children
    bottom = self.downsample(x) if self.downsample is not None else x
    residual = self.project(bottom) if self.project is not None else bottom
    if self.level_root:
      children.append(bottom)
    x1 = self.tree1(x, residual)
    if self.levels == 1:
      return self.root(self.tree2(x1), x1, *children)
    children.append(x1)
    return self.tree2(x1, children=children)


class DLA(nn.Module):
  """DLA (ImageNet model: ``fc`` is a 1x1 Conv2d classifier, unused here)."""

  def __init__(self, levels, channels, num_classes=1000, residual_root=False):
    super().__init__()
    self.channels = list(channels)
    self.base_layer = nn.Sequential(nn.Conv2d(3, channels[0], 7, 1, 3, bias=False),
                                    nn.BatchNorm2d(channels[0]), nn.ReLU())
    self.level0 = self._conv_level(channels[0], channels[0], levels[0])
    self.level1 = self._conv_level(channels[0], channels[1], levels[1], 2)
    for i in range(2, 6):
      setattr(self, f'level{i}', Tree(levels[i], channels[i - 1], channels[i], 2,
                                      level_root=i > 2, root_residual=residual_root))
    self.fc = nn.Conv2d(channels[-1], num_classes, 1, 1, 0, bias=True)

  @staticmethod
  def _conv_level(cin, cout, convs, stride=1):
    mods = []
    for i in range(convs):
      mods += [nn.Conv2d(cin, cout, 3, stride if i == 0 else 1, 1, bias=False),
               nn.BatchNorm2d(cout), nn.ReLU()]
      cin = cout
    return nn.Sequential(*mods)

  def forward(self, x):
    y = []
    x = self.base_layer(x)
    for i in range(6):
      x = getattr(self, f'level{i}')(x)
      y.append(x)
    return y


class DeformConvBlock(nn.Module):
  """Official ``DeformConv``: actf = Sequential(BN, ReLU) after conv = DCN."""

  def __init__(self, chi, cho):
    super().__init__()
    self.actf = nn.Sequential(nn.BatchNorm2d(cho), nn.ReLU())
    self.conv = DCN(chi, cho)

  def forward(self, x):
    return self.actf(self.conv(x))


class IDAUp(nn.Module):

  def __init__(self, o, channels, up_f):
    super().__init__()
    for i in range(1, len(channels)):
      f = int(up_f[i])
      setattr(self, f'proj_{i}', DeformConvBlock(channels[i], o))
      setattr(self, f'up_{i}', nn.ConvTranspose2d(o, o, f * 2, stride=f, padding=f // 2,
                                                   output_padding=0, groups=o, bias=False))
      setattr(self, f'node_{i}', DeformConvBlock(o, o))

  def forward(self, layers, startp, endp):
    for i in range(startp + 1, endp):
      k = i - startp
      layers[i] = getattr(self, f'up_{k}')(getattr(self, f'proj_{k}')(layers[i]))
      layers[i] = getattr(self, f'node_{k}')(layers[i] + layers[i - 1])


class DLAUp(nn.Module):

  def __init__(self, startp, channels, scales):
    super().__init__()
    self.startp = startp
    in_channels = list(channels)
    channels = list(channels)
    scales = np.array(scales, dtype=int)
    for i in range(len(channels) - 1):
      j = -i - 2
      setattr(self, f'ida_{i}', IDAUp(channels[j], in_channels[j:], scales[j:] // scales[j]))
      scales[j + 1:] = scales[j]
      in_channels[j + 1:] = [channels[j] for _ in channels[j + 1:]]

  def forward(self, layers):
    out = [layers[-1]]
    for i in range(len(layers) - self.startp - 1):
      getattr(self, f'ida_{i}')(layers, len(layers) - i - 2, len(layers))
      out.insert(0, layers[-1])
    return out


class DLASeg(nn.Module):
  """Official ctdet DLA (down_ratio 4, last_level 5, final_kernel 1)."""

  def __init__(self, levels, channels, heads, head_conv):
    super().__init__()
    self.first_level, self.last_level = 2, 5
    self.base = DLA(levels, channels)
    ch = self.base.channels
    self.dla_up = DLAUp(2, ch[2:], [2**i for i in range(len(ch[2:]))])
    self.ida_up = IDAUp(ch[2], ch[2:5], [2**i for i in range(3)])
    self.heads = dict(heads)
    for name, out in heads:
      setattr(self, name, centernet_head(ch[2], head_conv, out))

  def forward(self, x):
    x = self.dla_up(self.base(x))
    y = [x[i].clone() for i in range(self.last_level - self.first_level)]
    self.ida_up(y, 0, len(y))
    return [{name: getattr(self, name)(y[-1]) for name in self.heads}]
