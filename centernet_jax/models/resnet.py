"""ResNet backbone ("Deep Residual Learning for Image Recognition", He et al. 2016).

torchvision v1.5 layout (as official CenterNet ``msra_resnet.py``): BasicBlock strides in conv1,
Bottleneck strides in its 3x3 conv2, projection shortcut = 1x1 conv (stride s) + BN. No classifier.

Parameter names mirror torchvision, so an ImageNet or CenterNet state_dict maps key by key::

    conv1, bn1, layer{1..4}/{block}/{conv1, bn1, conv2, bn2[, conv3, bn3][, downsample/{0, 1}]}

(``layer2.0.downsample.1.weight`` -> ``params/.../layer2/0/downsample/1/scale``; the rules are
at the end of this file, the shared layout rules in torch_names.py).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from centernet_jax.models.layers import Dtype, batch_norm, conv
from centernet_jax.models.torch_names import TorchCheckpoint, TorchNames


class Downsample(nn.Module):
  """Projection shortcut: '0' = conv1x1(stride), '1' = BN (torchvision nn.Sequential indices)."""

  features: int
  stride: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = conv(self.features, 1, stride=self.stride, dtype=self.dtype, name='0')(x)
    return batch_norm(train, dtype=self.dtype, name='1')(x)


class BasicBlock(nn.Module):
  """conv3x3(stride) - BN - ReLU - conv3x3 - BN, + shortcut, ReLU. Output: planes channels."""

  planes: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out = conv(self.planes, 3, stride=self.stride, dtype=self.dtype, name='conv1')(x)
    out = nn.relu(batch_norm(train, dtype=self.dtype, name='bn1')(out))
    out = conv(self.planes, 3, dtype=self.dtype, name='conv2')(out)
    out = batch_norm(train, dtype=self.dtype, name='bn2')(out)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = Downsample(self.planes, self.stride, self.dtype, name='downsample')(x, train)
    return nn.relu(out + x)


class Bottleneck(nn.Module):
  """conv1x1 - BN - ReLU - conv3x3(stride) - BN - ReLU - conv1x1 - BN, + shortcut, ReLU.

  Output: 4 * planes channels.
  """

  planes: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = self.planes * self.expansion
    out = conv(self.planes, 1, dtype=self.dtype, name='conv1')(x)
    out = nn.relu(batch_norm(train, dtype=self.dtype, name='bn1')(out))
    out = conv(self.planes, 3, stride=self.stride, dtype=self.dtype, name='conv2')(out)
    out = nn.relu(batch_norm(train, dtype=self.dtype, name='bn2')(out))
    out = conv(features, 1, dtype=self.dtype, name='conv3')(out)
    out = batch_norm(train, dtype=self.dtype, name='bn3')(out)
    if self.stride != 1 or x.shape[-1] != features:
      x = Downsample(features, self.stride, self.dtype, name='downsample')(x, train)
    return nn.relu(out + x)


class ResLayer(nn.Module):
  """One stage (torchvision ``layerN``): blocks named '0', '1', ...; the first one strides."""

  block_cls: type[nn.Module]
  planes: int
  num_blocks: int
  stride: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i in range(self.num_blocks):
      stride = self.stride if i == 0 else 1
      x = self.block_cls(self.planes, stride, self.dtype, name=str(i))(x, train)
    return x


class ResNet(nn.Module):
  """ResNet feature extractor.

  Attributes:
    block_cls: BasicBlock or Bottleneck.
    stage_sizes: blocks per stage (layer1..layer4).
    width: planes of layer1 (64 for the published models); stage i has width * 2**i planes.
    dtype: compute dtype (params float32).
  """

  block_cls: type[nn.Module]
  stage_sizes: Sequence[int]
  width: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> list[jax.Array]:
    """Runs the stem and the four stages.

    Args:
      images: [B, H, W, 3] float.
      train: BatchNorm uses batch statistics (and updates 'batch_stats') when True.

    Returns:
      [layer1, layer2, layer3, layer4] outputs at strides 4, 8, 16, 32, with
      width * 2**i * block_cls.expansion channels ([64, 128, 256, 512] for ResNet-18).
    """
    x = conv(self.width, 7, stride=2, dtype=self.dtype, name='conv1')(images)
    x = nn.relu(batch_norm(train, dtype=self.dtype, name='bn1')(x))
    # MaxPool2d(3, stride 2, padding 1): flax pads max_pool with -inf, as PyTorch does.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    features = []
    for i, num_blocks in enumerate(self.stage_sizes):
      x = ResLayer(self.block_cls, self.width * 2**i, num_blocks, 1 if i == 0 else 2,
                   self.dtype, name=f'layer{i + 1}')(x, train)
      features.append(x)
    return features


# depth -> (block, blocks per stage); official msra_resnet.resnet_spec / torchvision.
RESNET_SPECS: dict[int, tuple[type[nn.Module], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def resnet(depth: int, *, dtype: Dtype = jnp.float32) -> ResNet:
  """The published ResNet-{18, 34, 50, 101, 152} backbone."""
  if depth not in RESNET_SPECS:
    raise ValueError(f'unknown ResNet depth {depth}; known: {sorted(RESNET_SPECS)}')
  block_cls, stage_sizes = RESNET_SPECS[depth]
  return ResNet(block_cls, stage_sizes, dtype=dtype)


# For tests and smoke runs: one BasicBlock per stage, 8..64 channels.
TinyResNet = functools.partial(ResNet, block_cls=BasicBlock, stage_sizes=(1, 1, 1, 1), width=8)


# ----------------------------------------------------------------------------------------------
# PyTorch names: torchvision's, key by key; CenterNet's ResNet detectors keep them at the top
# level, where ours sit under 'backbone'.

TORCH_MODULES = ('conv1', 'bn1', 'layer1', 'layer2', 'layer3', 'layer4')


def torch_detector_name(key: str) -> str:
  """A CenterNet ResNet detector's key -> ours: the backbone's modules move under 'backbone'."""
  return f'backbone.{key}' if key.split('.')[0] in TORCH_MODULES else key


def torch_depth(keys: Iterable[str]) -> str:
  """The ResNet depth a state_dict's layer3 block count tells ('?' when unknown)."""
  blocks = {k.split('layer3.')[1].split('.')[0] for k in keys
            if k.startswith(('layer3.', 'backbone.layer3.'))}
  return {2: '18', 6: '34 or 50', 23: '101', 36: '152'}.get(len(blocks), '?')


def _torchvision_name(key: str) -> str | None:
  return None if key.split('.')[0] == 'fc' else f'backbone.{key}'  # the classifier is dropped


def _torchvision_signature(keys: frozenset[str]) -> str | None:
  if 'fc.weight' in keys and any(k.startswith('layer1.') for k in keys):
    d = torch_depth(keys)
    return f'an ImageNet ResNet-{d} (--format torchvision --arch resnet{d})'
  return None


TORCHVISION_NAMES = TorchNames(rename=_torchvision_name, signature=_torchvision_signature)
# ImageNet backbones (torchvision resnetN) for config.init: they fill 'backbone' only.
TORCH_CHECKPOINTS = {
    'torchvision': {
        **{f'resnet{d}': TorchCheckpoint('resnet', TORCHVISION_NAMES, (('depth', d),),
                                         backbone_only=True) for d in RESNET_SPECS},
        'resnet_tiny': TorchCheckpoint('resnet_tiny', TORCHVISION_NAMES, backbone_only=True),
    },
}
