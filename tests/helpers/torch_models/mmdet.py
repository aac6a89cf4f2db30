"""mmdetection's CenterNet (ResNet + ``CTResNetNeck`` + ``CenterNetHead``) and CornerNet
(``HourglassNet`` + ``CornerHead`` with ``BiCornerPool``), named as mmdetection names them."""

from __future__ import annotations

import torch
from torch import nn

from tests.helpers.torch_models.cornernet import bottom, left, right, top
from tests.helpers.torch_models.dcn import DCN
from tests.helpers.torch_models.heads import centernet_head
from tests.helpers.torch_models.resnet import BasicBlock, ResNet


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
    self.heatmap_head = centernet_head(cin, feat, num_classes)
    self.wh_head = centernet_head(cin, feat, 2)
    self.offset_head = centernet_head(cin, feat, 2)

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
    head.tl_pool = nn.ModuleList([MMBiCornerPool(c, (top, left), pool_channels)
                                  for _ in range(num_stacks)])
    head.br_pool = nn.ModuleList([MMBiCornerPool(c, (bottom, right), pool_channels)
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
