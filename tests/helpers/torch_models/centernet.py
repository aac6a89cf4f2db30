"""Official CenterNet ``msra_resnet.py`` (res_18, res_101): ResNet -> 3 x [ConvT 4/2 - BN -
ReLU] -> heads, with the ResNet modules at the top level (shared with resnet_dcn.py)."""

from __future__ import annotations

import torch
from torch import nn

from tests.helpers.torch_models.heads import centernet_head
from tests.helpers.torch_models.resnet import ResNet


class CenterNetResNetBase(nn.Module):
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


class MSRAResNet(CenterNetResNetBase):
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
      setattr(self, name, centernet_head(cin, head_conv, out))

  def forward(self, x):
    return self.heads_forward(self.deconv_layers(self.backbone(x)))
