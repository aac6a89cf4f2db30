"""The CenterNet head of msra_resnet / resnet_dcn / pose_dla_dcn (``hm.0``, ``hm.2``) and the
official head tables the reference models are built with."""

from __future__ import annotations

from torch import nn


def centernet_head(cin: int, head_conv: int, out: int) -> nn.Sequential:
  """Conv3x3(cin -> head_conv, bias) - ReLU - Conv1x1(head_conv -> out, bias)."""
  return nn.Sequential(nn.Conv2d(cin, head_conv, 3, padding=1, bias=True), nn.ReLU(),
                       nn.Conv2d(head_conv, out, 1, bias=True))


def multi_pose_heads(num_classes: int = 1, num_joints: int = 17) -> tuple[tuple[str, int], ...]:
  """Official multi_pose heads in the order opts.py builds its dict (and so the order
  pose_dla_dcn and large_hourglass register them): hm, wh, hps, reg, hm_hp, hp_offset."""
  return (('hm', num_classes), ('wh', 2), ('hps', 2 * num_joints), ('reg', 2),
          ('hm_hp', num_joints), ('hp_offset', 2))


def ddd_heads(num_classes: int = 3) -> tuple[tuple[str, int], ...]:
  """Official ddd heads in the order opts.py builds its dict (and so pose_dla_dcn registers
  them): hm, dep, rot, dim, wh, reg (docs/parity.md 4.13)."""
  return (('hm', num_classes), ('dep', 1), ('rot', 8), ('dim', 3), ('wh', 2), ('reg', 2))
