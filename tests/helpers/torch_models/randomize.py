"""Random weights and BatchNorm statistics for the reference models."""

from __future__ import annotations

import math

import torch
from torch import nn

from tests.helpers.torch_models.dcn import DCN


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
