"""The CenterNet head of msra_resnet / resnet_dcn / pose_dla_dcn (``hm.0``, ``hm.2``)."""

from __future__ import annotations

from torch import nn


def centernet_head(cin: int, head_conv: int, out: int) -> nn.Sequential:
  """Conv3x3(cin -> head_conv, bias) - ReLU - Conv1x1(head_conv -> out, bias)."""
  return nn.Sequential(nn.Conv2d(cin, head_conv, 3, padding=1, bias=True), nn.ReLU(),
                       nn.Conv2d(head_conv, out, 1, bias=True))
