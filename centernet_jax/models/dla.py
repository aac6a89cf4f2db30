"""DLA backbone ("Deep Layer Aggregation", Yu et al. 2018), as official CenterNet
``pose_dla_dcn.py`` (``DLA``, ``Tree``, ``Root``; DLA-34 without its ImageNet classifier).

Six levels at strides 1, 2, 4, 8, 16, 32: a 7x7 stem, two conv levels, then four hierarchical
Trees whose Roots aggregate their leaves. The detector that uses it is dla_dcn.py.

Parameter names are the official ones (``level3.tree1.root.conv``, ``level2.project.0``); conv
OIHW -> HWIO, BN weight -> scale, running_mean/var -> batch_stats mean/var. In the detector
they sit under 'backbone' (official 'base'); the ImageNet file ``dla34-ba72cf86.pth`` holds them
at the top level, with a classifier 'fc' that is dropped (rules at the end of this file).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from centernet_jax.models import resnet
from centernet_jax.models.layers import Dtype, batch_norm, conv
from centernet_jax.models.torch_names import TorchCheckpoint, TorchNames


class ConvLevel(nn.Module):
  """Official ``_make_conv_level`` / ``base_layer``: convs x [Conv(k, no bias) -> BN -> ReLU].

  Children are the nn.Sequential indices: '0' conv, '1' BN, '3' conv, '4' BN, ...
  """

  features: int
  convs: int = 1
  stride: int = 1
  kernel_size: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i in range(self.convs):
      x = conv(self.features, self.kernel_size, stride=self.stride if i == 0 else 1,
               dtype=self.dtype, name=str(3 * i))(x)
      x = nn.relu(batch_norm(train, dtype=self.dtype, name=str(3 * i + 1))(x))
    return x


class BasicBlock(nn.Module):
  """DLA BasicBlock: conv3x3(stride) - BN - ReLU - conv3x3 - BN, + residual, ReLU.

  Unlike torchvision's, the residual comes from the caller (the Tree's projected input).
  """

  planes: int
  stride: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, residual: jax.Array | None = None) -> jax.Array:
    residual = x if residual is None else residual
    out = conv(self.planes, 3, stride=self.stride, dtype=self.dtype, name='conv1')(x)
    out = nn.relu(batch_norm(train, dtype=self.dtype, name='bn1')(out))
    out = conv(self.planes, 3, dtype=self.dtype, name='conv2')(out)
    out = batch_norm(train, dtype=self.dtype, name='bn2')(out)
    return nn.relu(out + residual)


class Root(nn.Module):
  """Aggregation node: ReLU(BN(conv1x1(concat(children)))) (+ children[0] when residual)."""

  features: int
  residual: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, children: Sequence[jax.Array], train: bool) -> jax.Array:
    x = conv(self.features, 1, dtype=self.dtype, name='conv')(jnp.concatenate(children, -1))
    x = batch_norm(train, dtype=self.dtype, name='bn')(x)
    if self.residual:
      x = x + children[0]
    return nn.relu(x)


class Tree(nn.Module):
  """Official hierarchical ``Tree`` (levels deep; a Root joins the leaves of each levels=1 tree).

  Downsampling is MaxPool(stride, stride) of the input ('bottom'); 'project' (1x1 conv - BN,
  when channels change) makes the residual of the first block. With level_root, 'bottom' is also
  fed to the deepest Root. Quirk kept from the official code: a Tree with levels > 1 computes
  its 'project' but its subtree recomputes its own residual, so that output is unused (the
  parameters exist and train-mode BN statistics update, as in PyTorch).
  """

  levels: int
  features: int
  stride: int = 1
  level_root: bool = False
  root_residual: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool,
               children: list[jax.Array] | None = None) -> jax.Array:
    children = [] if children is None else children
    s = self.stride
    bottom = nn.max_pool(x, (s, s), strides=(s, s)) if s > 1 else x
    residual = bottom
    if x.shape[-1] != self.features:
      residual = resnet.Downsample(self.features, 1, self.dtype, name='project')(bottom, train)
    if self.level_root:
      children.append(bottom)
    if self.levels == 1:
      x1 = BasicBlock(self.features, s, self.dtype, name='tree1')(x, train, residual)
      x2 = BasicBlock(self.features, 1, self.dtype, name='tree2')(x1, train)
      return Root(self.features, self.root_residual, self.dtype, name='root')(
          [x2, x1, *children], train)
    sub = functools.partial(Tree, self.levels - 1, self.features, root_residual=self.root_residual,
                            dtype=self.dtype)
    x1 = sub(stride=s, name='tree1')(x, train)
    children.append(x1)
    return sub(stride=1, name='tree2')(x1, train, children)


class DLA(nn.Module):
  """DLA feature extractor (no classifier).

  Attributes:
    levels: depth of each level (DLA-34: 1, 1, 1, 2, 2, 1); levels 0-1 are plain conv levels.
    channels: channels of each level (DLA-34: 16, 32, 64, 128, 256, 512).
    residual_root: residual Roots (False for DLA-34).
    dtype: compute dtype (params float32).
  """

  levels: Sequence[int] = (1, 1, 1, 2, 2, 1)
  channels: Sequence[int] = (16, 32, 64, 128, 256, 512)
  residual_root: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> list[jax.Array]:
    """[B, H, W, 3] -> 6 maps [B, H / 2**i, W / 2**i, channels[i]], i = 0..5."""
    c = self.channels
    x = ConvLevel(c[0], 1, 1, 7, self.dtype, name='base_layer')(images, train)
    x = ConvLevel(c[0], self.levels[0], 1, dtype=self.dtype, name='level0')(x, train)
    y = [x]
    x = ConvLevel(c[1], self.levels[1], 2, dtype=self.dtype, name='level1')(x, train)
    y.append(x)
    for i in range(2, 6):
      x = Tree(self.levels[i], c[i], 2, level_root=i > 2, root_residual=self.residual_root,
               dtype=self.dtype, name=f'level{i}')(x, train)
      y.append(x)
    return y


# depth -> (levels, channels); official dla34 (the only DLA CenterNet ships for ctdet).
DLA_SPECS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    34: ((1, 1, 1, 2, 2, 1), (16, 32, 64, 128, 256, 512)),
}
# For tests and smoke runs: DLA-34's topology (one two-level Tree) at 4..32 channels.
TINY_SPEC = ((1, 1, 1, 2, 1, 1), (4, 8, 8, 16, 16, 32))


# ----------------------------------------------------------------------------------------------
# PyTorch names of the ImageNet file: ours under 'backbone', the classifier 'fc' dropped.


def _imagenet_name(key: str) -> str | None:
  return None if key.split('.')[0] == 'fc' else f'backbone.{key}'


def _imagenet_signature(keys: frozenset[str]) -> str | None:
  if any(k.startswith('base_layer.') for k in keys):
    return 'an ImageNet DLA checkpoint (--format dla_imagenet)'
  return None


IMAGENET_TORCH_NAMES = TorchNames(rename=_imagenet_name, signature=_imagenet_signature)
# The detector's official options (dla_dcn.py), for a config that starts from this backbone.
_OFFICIAL = (('head_conv', 256), ('deconv_init', 'bilinear'), ('head_init', 'dla'))
# ImageNet ``dla34-ba72cf86.pth`` (config.init of the official DLA training).
TORCH_CHECKPOINTS = {
    'dla_imagenet': {
        'dla34': TorchCheckpoint('dla', IMAGENET_TORCH_NAMES, (('depth', 34), *_OFFICIAL),
                                 backbone_only=True),
        'dla_tiny': TorchCheckpoint('dla_tiny', IMAGENET_TORCH_NAMES, _OFFICIAL,
                                    backbone_only=True),
    },
}
