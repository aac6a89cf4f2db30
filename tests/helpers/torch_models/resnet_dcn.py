"""Official CenterNet ``resnet_dcn.py`` (resdcn_18, resdcn_101)."""

from __future__ import annotations

from torch import nn

from tests.helpers.torch_models.centernet import CenterNetResNetBase
from tests.helpers.torch_models.dcn import DCN
from tests.helpers.torch_models.heads import centernet_head


class ResNetDCN(CenterNetResNetBase):
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
      setattr(self, name, centernet_head(cin, head_conv, out))

  def forward(self, x):
    return self.heads_forward(self.deconv_layers(self.backbone(x)))
