"""PyTorch reference modules written from the published architectures (for conversion parity).

Each module reproduces the official code's structure and ``state_dict`` names; widths and depths
are arguments so the tests can run small variants on CPU:

  * :class:`ResNet` - torchvision ResNet (v1.5; also mmdet ``ResNet(style='pytorch')``).
  * :class:`MSRAResNet` - official CenterNet ``msra_resnet.py`` (res_18, res_101).
  * :class:`ResNetDCN` - official CenterNet ``resnet_dcn.py`` (resdcn_18, resdcn_101).
  * :class:`DLA`, :class:`DLASeg` - official ``pose_dla_dcn.py`` (dla_34; ``base.*`` = DLA with
    its ImageNet ``fc``).
  * :class:`MMDetCenterNet` - mmdetection ``CenterNet`` = ResNet + ``CTResNetNeck`` (DCNv2 or
    plain conv) + ``CenterNetHead``.

DCNv2 is written here with explicit bilinear sampling (no torchvision, no CUDA extension), from
the official ``dcn_v2_im2col_bilinear`` semantics: offset channel 2k is dy, 2k + 1 is dx of tap
k = i * kw + j; a sample outside -1 < y < H, -1 < x < W is 0, out-of-range corners are 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

# ----------------------------------------------------------------------------------------------
# DCNv2.


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


# ----------------------------------------------------------------------------------------------
# ResNet (torchvision) and the CenterNet ResNets.


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = torch.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = downsample

  def forward(self, x):
    out = torch.relu(self.bn1(self.conv1(x)))
    out = torch.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
  """torchvision ResNet; ``forward`` returns the stride-32 map (the classifier ``fc`` is kept in
  the state_dict, as in the published ImageNet files, but not applied)."""

  def __init__(self, block, layers, width=64, num_classes=1000):
    super().__init__()
    self.inplanes = width
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    for i, n in enumerate(layers):
      setattr(self, f'layer{i + 1}', self._make_layer(block, width * 2**i, n, 1 if i == 0 else 2))
    self.fc = nn.Linear(self.inplanes, num_classes)
    self.out_channels = self.inplanes

  def _make_layer(self, block, planes, blocks, stride):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
          nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def features(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))

  def forward(self, x):
    return self.features(x)


def _head(cin, head_conv, out):
  return nn.Sequential(nn.Conv2d(cin, head_conv, 3, padding=1, bias=True), nn.ReLU(),
                       nn.Conv2d(head_conv, out, 1, bias=True))


class _CenterNetResNetBase(nn.Module):
  """Official msra_resnet / resnet_dcn: the ResNet modules sit at the top level."""

  def __init__(self, block, layers, width):
    super().__init__()
    net = ResNet(block, layers, width)
    for name in ('conv1', 'bn1', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4'):
      setattr(self, name, getattr(net, name))
    self.inplanes = net.out_channels

  def backbone(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))

  def heads_forward(self, x):
    return [{name: getattr(self, name)(x) for name in self.heads}]


class MSRAResNet(_CenterNetResNetBase):
  """Official ``PoseResNet`` (msra_resnet.py): ResNet -> 3 x [ConvT 4/2 - BN - ReLU] -> heads."""

  def __init__(self, block, layers, heads, head_conv, width=64, filters=(256, 256, 256)):
    super().__init__(block, layers, width)
    mods, cin = [], self.inplanes
    for f in filters:
      mods += [nn.ConvTranspose2d(cin, f, 4, 2, 1, output_padding=0, bias=False),
               nn.BatchNorm2d(f), nn.ReLU()]
      cin = f
    self.deconv_layers = nn.Sequential(*mods)
    self.heads = dict(heads)
    for name, out in heads:
      setattr(self, name, _head(cin, head_conv, out))

  def forward(self, x):
    return self.heads_forward(self.deconv_layers(self.backbone(x)))


class ResNetDCN(_CenterNetResNetBase):
  """Official ``PoseResNet`` (resnet_dcn.py): 3 x [DCN - BN - ReLU - ConvT 4/2 - BN - ReLU]."""

  def __init__(self, block, layers, heads, head_conv, width=64, filters=(256, 128, 64)):
    super().__init__(block, layers, width)
    mods, cin = [], self.inplanes
    for f in filters:
      mods += [DCN(cin, f), nn.BatchNorm2d(f), nn.ReLU(),
               nn.ConvTranspose2d(f, f, 4, 2, 1, output_padding=0, bias=False),
               nn.BatchNorm2d(f), nn.ReLU()]
      cin = f
    self.deconv_layers = nn.Sequential(*mods)
    self.heads = dict(heads)
    for name, out in heads:
      setattr(self, name, _head(cin, head_conv, out))

  def forward(self, x):
    return self.heads_forward(self.deconv_layers(self.backbone(x)))


# ----------------------------------------------------------------------------------------------
# DLA (pose_dla_dcn.py).


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
      setattr(self, name, _head(ch[2], head_conv, out))

  def forward(self, x):
    x = self.dla_up(self.base(x))
    y = [x[i].clone() for i in range(self.last_level - self.first_level)]
    self.ida_up(y, 0, len(y))
    return [{name: getattr(self, name)(y[-1]) for name in self.heads}]


# ----------------------------------------------------------------------------------------------
# mmdetection CenterNet (CTResNetNeck + CenterNetHead).


class ConvModule(nn.Module):
  """mmcv ConvModule(conv, norm=BN, act=ReLU); bias 'auto' = no bias when a norm follows."""

  def __init__(self, conv):
    super().__init__()
    self.conv = conv
    self.bn = nn.BatchNorm2d(conv.weight.shape[1] if isinstance(conv, nn.ConvTranspose2d)
                             else conv.weight.shape[0])

  def forward(self, x):
    return torch.relu(self.bn(self.conv(x)))


class CTResNetNeck(nn.Module):

  def __init__(self, cin, filters=(256, 128, 64), use_dcn=True):
    super().__init__()
    mods = []
    for f in filters:
      conv = (DCN(cin, f, bias=False, offset_name='conv_offset') if use_dcn
              else nn.Conv2d(cin, f, 3, padding=1, bias=False))
      mods += [ConvModule(conv), ConvModule(nn.ConvTranspose2d(f, f, 4, 2, 1, bias=False))]
      cin = f
    self.deconv_layers = nn.Sequential(*mods)

  def forward(self, x):
    return self.deconv_layers(x)


class CenterNetHead(nn.Module):

  def __init__(self, cin, feat, num_classes):
    super().__init__()
    self.heatmap_head = _head(cin, feat, num_classes)
    self.wh_head = _head(cin, feat, 2)
    self.offset_head = _head(cin, feat, 2)

  def forward(self, x):
    return [{'hm': self.heatmap_head(x), 'wh': self.wh_head(x), 'reg': self.offset_head(x)}]


class MMDetCenterNet(nn.Module):

  def __init__(self, block, layers, num_classes, width=64, filters=(256, 128, 64),
               use_dcn=True, feat=64):
    super().__init__()
    self.backbone = ResNet(block, layers, width)
    del self.backbone.fc  # mmdet ResNet has no classifier
    self.neck = CTResNetNeck(self.backbone.out_channels, filters, use_dcn)
    self.bbox_head = CenterNetHead(filters[-1], feat, num_classes)

  def forward(self, x):
    return self.bbox_head(self.neck(self.backbone.features(x)))


# ----------------------------------------------------------------------------------------------
# Random weights and BatchNorm statistics.


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights (U(+-sqrt(3 / fan_in)), so activations keep their scale), random BN affine
  parameters and running statistics, DCN offset convs large enough to move samples across
  pixels; returns the module in eval mode."""
  g = torch.Generator().manual_seed(seed)

  def uniform(t, bound):
    t.copy_((torch.rand(t.shape, generator=g) * 2 - 1) * bound)

  with torch.no_grad():
    for name, m in module.named_modules():
      if isinstance(m, nn.ConvTranspose2d):
        # each output sees Cin / groups * k * k / stride**2 inputs
        fan_in = m.weight.shape[0] // m.groups * m.weight[0, 0].numel() / m.stride[0] ** 2
        uniform(m.weight, math.sqrt(3.0 / fan_in))
      elif isinstance(m, (nn.Conv2d, nn.Linear)):
        scale = 3.0 if 'conv_offset' in name else 1.0  # offsets of a few pixels
        uniform(m.weight, scale * math.sqrt(3.0 / m.weight[0].numel()))
        if m.bias is not None:
          uniform(m.bias, 0.5)
      elif isinstance(m, DCN):
        uniform(m.weight, math.sqrt(3.0 / m.weight[0].numel()))
        if m.bias is not None:
          uniform(m.bias, 0.5)
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=g))
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
  return module.eval()


# ----------------------------------------------------------------------------------------------
# Hourglass (CenterNet large_hourglass.py ``exkp``; CornerNet models/CornerNet.py + kp.py).


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


def _kp_layer(cnv_dim, curr_dim, out_dim):
  return nn.Sequential(HGConvolution(3, cnv_dim, curr_dim, with_bn=False),
                       nn.Conv2d(curr_dim, out_dim, 1))


class _StackedHourglass(nn.Module):

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


class ExKp(_StackedHourglass):
  """CenterNet ``exkp`` (ctdet heads on every stack, keyed 'hm', 'wh', 'reg')."""

  def __init__(self, n, nstack, dims, modules, heads, pre_dim=128, cnv_dim=256):
    super().__init__(n, nstack, dims, modules, pre_dim, cnv_dim)
    self.heads = dict(heads)
    for name, out in heads:
      setattr(self, name, nn.ModuleList([_kp_layer(cnv_dim, dims[0], out)
                                         for _ in range(nstack)]))

  def forward(self, image):
    return [{name: getattr(self, name)[i](cnv) for name in self.heads}
            for i, cnv in self.stacks(image)]


def _top(x):
  return torch.flip(torch.cummax(torch.flip(x, [2]), 2)[0], [2])


def _left(x):
  return torch.flip(torch.cummax(torch.flip(x, [3]), 3)[0], [3])


def _bottom(x):
  return torch.cummax(x, 2)[0]


def _right(x):
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


class CornerNetKp(_StackedHourglass):
  """CornerNet ``kp`` with tl/br corner pools and the six heads (outputs named as ours)."""

  def __init__(self, n, nstack, dims, modules, num_classes, pre_dim=128, cnv_dim=256,
               pool_dim=128):
    super().__init__(n, nstack, dims, modules, pre_dim, cnv_dim)
    curr = dims[0]
    self.tl_cnvs = nn.ModuleList([CornerPoolModule(cnv_dim, _top, _left, pool_dim)
                                  for _ in range(nstack)])
    self.br_cnvs = nn.ModuleList([CornerPoolModule(cnv_dim, _bottom, _right, pool_dim)
                                  for _ in range(nstack)])
    self.outputs = {'tl_heat': num_classes, 'br_heat': num_classes, 'tl_tag': 1, 'br_tag': 1,
                    'tl_regr': 2, 'br_regr': 2}
    for name, out in self.outputs.items():
      setattr(self, name + 's', nn.ModuleList([_kp_layer(cnv_dim, curr, out)
                                               for _ in range(nstack)]))

  def forward(self, image):
    outs = []
    for i, cnv in self.stacks(image):
      pooled = {'tl': self.tl_cnvs[i](cnv), 'br': self.br_cnvs[i](cnv)}
      outs.append({name: getattr(self, name + 's')[i](pooled[name[:2]])
                   for name in self.outputs})
    return outs


# ----------------------------------------------------------------------------------------------
# mmdetection CornerNet (HourglassNet backbone + CornerHead with BiCornerPool).


class MMConvModule(nn.Module):
  """mmcv ConvModule: 'conv' (bias only without a norm), optional 'bn', optional ReLU."""

  def __init__(self, cin, cout, k, stride=1, *, norm=True, act=True):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=not norm)
    if norm:
      self.bn = nn.BatchNorm2d(cout)
    self.norm, self.act = norm, act

  def forward(self, x):
    x = self.conv(x)
    x = self.bn(x) if self.norm else x
    return torch.relu(x) if self.act else x


def mm_res_layer(cin, cout, n, stride=1, downsample_first=True):
  """mmdet ResLayer of (torchvision-named) BasicBlocks."""
  def ds(i, o, s):
    if s == 1 and i == o:
      return None
    return nn.Sequential(nn.Conv2d(i, o, 1, s, bias=False), nn.BatchNorm2d(o))
  if downsample_first:
    blocks = [BasicBlock(cin, cout, stride, ds(cin, cout, stride))]
    blocks += [BasicBlock(cout, cout) for _ in range(n - 1)]
  else:
    blocks = [BasicBlock(cin, cin) for _ in range(n - 1)]
    blocks += [BasicBlock(cin, cout, stride, ds(cin, cout, stride))]
  return nn.Sequential(*blocks)


class MMHourglassModule(nn.Module):

  def __init__(self, depth, channels, blocks):
    super().__init__()
    self.up1 = mm_res_layer(channels[0], channels[0], blocks[0])
    self.low1 = mm_res_layer(channels[0], channels[1], blocks[0], stride=2)
    self.low2 = (MMHourglassModule(depth - 1, channels[1:], blocks[1:]) if depth > 1 else
                 mm_res_layer(channels[1], channels[1], blocks[1]))
    self.low3 = mm_res_layer(channels[1], channels[0], blocks[0], downsample_first=False)

  def forward(self, x):
    low3 = self.low3(self.low2(self.low1(x)))
    return self.up1(x) + torch.nn.functional.interpolate(low3, scale_factor=2, mode='nearest')


class MMHourglassNet(nn.Module):

  def __init__(self, downsample_times, num_stacks, channels, blocks, feat_channel):
    super().__init__()
    cur = channels[0]
    self.num_stacks = num_stacks
    self.stem = nn.Sequential(MMConvModule(3, cur // 2, 7, 2), mm_res_layer(cur // 2, cur, 1, 2))
    self.hourglass_modules = nn.ModuleList([MMHourglassModule(downsample_times, channels, blocks)
                                            for _ in range(num_stacks)])
    self.inters = mm_res_layer(cur, cur, num_stacks - 1)
    self.conv1x1s = nn.ModuleList([MMConvModule(cur, cur, 1, act=False)
                                   for _ in range(num_stacks - 1)])
    self.out_convs = nn.ModuleList([MMConvModule(cur, feat_channel, 3)
                                    for _ in range(num_stacks)])
    self.remap_convs = nn.ModuleList([MMConvModule(feat_channel, cur, 1, act=False)
                                      for _ in range(num_stacks - 1)])

  def forward(self, x):
    inter, outs = self.stem(x), []
    for i in range(self.num_stacks):
      out = self.out_convs[i](self.hourglass_modules[i](inter))
      outs.append(out)
      if i < self.num_stacks - 1:
        inter = self.inters[i](torch.relu(self.conv1x1s[i](inter) + self.remap_convs[i](out)))
    return outs


class MMBiCornerPool(nn.Module):

  def __init__(self, cin, pools, feat_channels=128):
    super().__init__()
    self.direction1_conv = MMConvModule(cin, feat_channels, 3)
    self.direction2_conv = MMConvModule(cin, feat_channels, 3)
    self.aftpool_conv = MMConvModule(feat_channels, cin, 3, act=False)
    self.conv1 = MMConvModule(cin, cin, 1, act=False)
    self.conv2 = MMConvModule(cin, cin, 3)
    self.pools = pools

  def forward(self, x):
    p = self.pools[0](self.direction1_conv(x)) + self.pools[1](self.direction2_conv(x))
    return self.conv2(torch.relu(self.aftpool_conv(p) + self.conv1(x)))


class MMDetCornerNet(nn.Module):
  """mmdet CornerNet: HourglassNet -> CornerHead (outputs renamed to ours)."""

  def __init__(self, downsample_times, num_stacks, channels, blocks, num_classes,
               feat_channel=256, pool_channels=128):
    super().__init__()
    self.backbone = MMHourglassNet(downsample_times, num_stacks, channels, blocks, feat_channel)
    self.bbox_head = nn.Module()
    c = feat_channel

    def layers(out):
      return nn.Sequential(MMConvModule(c, c, 3, norm=False),
                           MMConvModule(c, out, 1, norm=False, act=False))

    head = self.bbox_head
    head.tl_pool = nn.ModuleList([MMBiCornerPool(c, (_top, _left), pool_channels)
                                  for _ in range(num_stacks)])
    head.br_pool = nn.ModuleList([MMBiCornerPool(c, (_bottom, _right), pool_channels)
                                  for _ in range(num_stacks)])
    self.outputs = {'tl_heat': ('tl_heat', num_classes), 'br_heat': ('br_heat', num_classes),
                    'tl_tag': ('tl_emb', 1), 'br_tag': ('br_emb', 1),
                    'tl_regr': ('tl_off', 2), 'br_regr': ('br_off', 2)}
    for mm_name, out in self.outputs.values():
      setattr(head, mm_name, nn.ModuleList([layers(out) for _ in range(num_stacks)]))

  def forward(self, x):
    outs = []
    for i, feat in enumerate(self.backbone(x)):
      pooled = {'tl': self.bbox_head.tl_pool[i](feat), 'br': self.bbox_head.br_pool[i](feat)}
      outs.append({ours: getattr(self.bbox_head, mm)[i](pooled[ours[:2]])
                   for ours, (mm, _) in self.outputs.items()})
    return outs
