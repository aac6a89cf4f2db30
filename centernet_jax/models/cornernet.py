"""CornerNet ("CornerNet: Detecting Objects as Paired Keypoints", Law & Deng 2018).

Official code: princeton-vl/CornerNet ``models/CornerNet.py`` (``pool``, ``tl_pool``, ``br_pool``)
and ``models/py_utils/kp.py`` (``kp``). The backbone is the stacked hourglass of
:mod:`centernet_jax.models.hourglass`; per stack, its ``cnv`` map goes through a top-left and a
bottom-right corner-pool module, and six heads read the pooled maps::

    tl_cnv = tl_cnvs[i](cnv)     # pools (top, left)
    br_cnv = br_cnvs[i](cnv)     # pools (bottom, right)
    tl_heat, tl_tag, tl_regr = tl_heats[i](tl_cnv), tl_tags[i](tl_cnv), tl_regrs[i](tl_cnv)
    br_heat, br_tag, br_regr = ... (br_cnv)

Corner-pool module (``pool(dim, pool1, pool2)``)::

    p1 = pool1(p1_conv1(x))               # convolution(3, dim -> 128): conv-BN-ReLU
    p2 = pool2(p2_conv1(x))
    y  = ReLU(p_bn1(p_conv1(p1 + p2)) + bn1(conv1(x)))   # p_conv1 3x3, conv1 1x1, no bias
    out = conv2(y)                        # convolution(3, dim -> dim)

Heads are ``make_kp_layer``: Conv3x3(cnv_dim -> curr_dim, bias, no BN) -> ReLU -> Conv1x1 (the
hidden width is ``config.model.head_conv``, official 256 = curr_dim); the heatmaps' final bias
starts at -2.19, every other layer keeps PyTorch's default init.

Builders: arch 'cornernet' and 'cornernet_tiny'. Parameter tree (official key -> ours, the
layout rules of torch_names.py; the official names are ours, rules at the end)::

    tl_cnvs.0.p1_conv1.conv.weight  -> params/tl_cnvs/0/p1_conv1/conv/kernel
    tl_cnvs.0.p_bn1.running_mean    -> batch_stats/tl_cnvs/0/p_bn1/mean
    br_cnvs.1.conv1.weight          -> params/br_cnvs/1/conv1/kernel
    br_cnvs.1.conv2.bn.weight       -> params/br_cnvs/1/conv2/bn/scale
    tl_heats.0.0.conv.bias          -> params/tl_heats/0/0/conv/bias
    br_regrs.1.1.weight             -> params/br_regrs/1/1/kernel
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from centernet_jax.models.hourglass import (
    HOURGLASS_104,
    TORCH_BODY,
    Convolution,
    HourglassSpec,
    PerStack,
    check_head_conv,
    head_stacks,
    hourglass_features,
    hourglass_spec,
    tiny_spec,
    torch_conv,
)
from centernet_jax.models.hourglass import read_torch_heads as hourglass_read_torch_heads
from centernet_jax.models.layers import Dtype, batch_norm
from centernet_jax.models.torch_names import TorchCheckpoint, TorchNames
from centernet_jax.ops import corner_pool

# Output name -> which pooled map its head reads; official head module = name + 's'.
CORNER_OUTPUTS = ('tl_heat', 'br_heat', 'tl_tag', 'br_tag', 'tl_regr', 'br_regr')
# The official corner-pool modules: top-left pools (top, left), bottom-right (bottom, right).
CORNER_POOLS = {'tl': ('top', 'left'), 'br': ('bottom', 'right')}


def corner_heads(num_classes: int) -> tuple[tuple[str, int], ...]:
  """The official CornerNet outputs: heatmaps (C), embeddings (1), offsets (2) per corner."""
  return (('tl_heat', num_classes), ('br_heat', num_classes), ('tl_tag', 1), ('br_tag', 1),
          ('tl_regr', 2), ('br_regr', 2))


def check_corner_heads(heads: Sequence[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
  """The heads as a tuple; ValueError unless they are CornerNet's six outputs."""
  names = [name for name, _ in heads]
  if sorted(names) != sorted(CORNER_OUTPUTS):
    raise ValueError(f'CornerNet needs the heads {CORNER_OUTPUTS} (config.task=\'cornernet\' '
                     f'sets them), got config.model.heads names {names}')
  return tuple(heads)


class CornerPool(nn.Module):
  """Official corner-pool module ``pool(dim, pool1, pool2)`` (module docstring).

  Attributes:
    pools: the two directions, ('top', 'left') or ('bottom', 'right').
    pool_dim: channels of the two pooled branches (official 128).
    pool_impl: 'associative_scan' or 'cummax' (ops/corner_pool.py; same values).
    dtype: compute dtype.
  """

  pools: tuple[str, str]
  pool_dim: int = 128
  pool_impl: str = 'associative_scan'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """[B, h, w, dim] -> [B, h, w, dim]."""
    dim = x.shape[-1]
    pool1, pool2 = (corner_pool.POOLS[p] for p in self.pools)
    p1 = pool1(Convolution(self.pool_dim, 3, 1, True, self.dtype, name='p1_conv1')(x, train),
               self.pool_impl)
    p2 = pool2(Convolution(self.pool_dim, 3, 1, True, self.dtype, name='p2_conv1')(x, train),
               self.pool_impl)
    p = torch_conv(dim, 3, self.pool_dim, dtype=self.dtype, name='p_conv1')(p1 + p2)
    p = batch_norm(train, dtype=self.dtype, name='p_bn1')(p)
    skip = torch_conv(dim, 1, dim, dtype=self.dtype, name='conv1')(x)
    skip = batch_norm(train, dtype=self.dtype, name='bn1')(skip)
    y = nn.relu(p + skip)
    return Convolution(dim, 3, 1, True, self.dtype, name='conv2')(y, train)


class CornerNet(nn.Module):
  """Stacked hourglass -> per stack corner pools and the six corner heads.

  Attributes:
    heads: ((output name, channels), ...) with the names of CORNER_OUTPUTS (corner_heads(C)).
    spec: hourglass topology.
    head_conv: hidden channels of the heads (official: curr_dim, 256).
    pool_dim: channels of the pooled branches (official 128).
    pool_impl: corner-pool formulation.
    dtype: compute dtype; params and outputs are float32.
  """

  heads: tuple[tuple[str, int], ...]
  spec: HourglassSpec = HOURGLASS_104
  head_conv: int = 256
  pool_dim: int = 128
  pool_impl: str = 'associative_scan'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> list[dict[str, jax.Array]]:
    """Runs the detector.

    Args:
      images: [B, H, W, 3] float (normalised); ceil(H / 4), ceil(W / 4) divisible by 2**n
        (511 -> 128 for Hourglass-104).
      train: BatchNorm mode.

    Returns:
      num_stacks dicts of raw maps [B, ceil(H / 4), ceil(W / 4), channels] float32: tl_heat,
      br_heat (C logits), tl_tag, br_tag (1), tl_regr, br_regr (2).
    """
    check_corner_heads(self.heads)
    names = [name for name, _ in self.heads]
    features = hourglass_features(self.spec, images, train, self.dtype)
    pools = {
        corner: PerStack(lambda i, name, p=p: CornerPool(p, self.pool_dim, self.pool_impl,
                                                         self.dtype, name=name),
                         name=f'{corner}_cnvs')
        for corner, p in CORNER_POOLS.items()}
    heads = {name: head_stacks(name + 's', channels, self.head_conv, 'heat' in name,
                               self.dtype)
             for name, channels in self.heads}
    outputs = []
    for i, cnv in enumerate(features):
      pooled = {corner: pool(i, cnv, train) for corner, pool in pools.items()}
      outputs.append({name: heads[name](i, pooled[name[:2]]) for name in names})
    return outputs


def build_cornernet(
    *, heads: Sequence[tuple[str, int]], dtype: Dtype = jnp.float32, depth: int = 104,
    head_conv: int = 256,
) -> CornerNet:
  """Official CornerNet (Hourglass-104, 2 stacks, 128-channel pool branches; arch 'cornernet').

  Args:
    heads: the six corner heads (:func:`corner_heads`).
    dtype: compute dtype.
    depth: 104 (hourglass.HOURGLASS_SPECS).
    head_conv: hidden channels of each head's 3x3 conv (official: the stack width, 256).
  """
  return CornerNet(check_corner_heads(heads), hourglass_spec(depth), check_head_conv(head_conv),
                   128, dtype=dtype)


def build_cornernet_tiny(
    *, heads: Sequence[tuple[str, int]], dtype: Dtype = jnp.float32, head_conv: int = 16,
    width: int = 1,
) -> CornerNet:
  """CornerNet on HOURGLASS_TINY with 8-channel pool branches (arch 'cornernet_tiny').

  ``width`` multiplies every channel count of the stack and of the pool branches.
  """
  return CornerNet(check_corner_heads(heads), tiny_spec(width), check_head_conv(head_conv),
                   8 * width, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# PyTorch names: ours are the official ones (module docstring); head modules are named after
# their output plus 's' (``tl_heats`` holds ``tl_heat``).


def _signature(keys: frozenset[str]) -> str | None:
  if any(k.startswith('tl_cnvs.') for k in keys):
    return 'a CornerNet Hourglass checkpoint (--format cornernet)'
  return None


def read_torch_heads(shapes: Mapping[str, Sequence[int]]
                     ) -> tuple[tuple[tuple[str, int], ...], int] | None:
  """(heads, head_conv) of an official CornerNet state_dict (hourglass.read_torch_heads)."""
  return hourglass_read_torch_heads(shapes, (*TORCH_BODY, 'tl_cnvs', 'br_cnvs'), CORNER_OUTPUTS,
                                    suffix='s')


TORCH_NAMES = TorchNames(read_heads=read_torch_heads, official_heads=corner_heads,
                         signature=_signature)
# Official CornerNet ``CornerNet_500000.pkl`` (princeton-vl); the tiny one mirrors its widths.
TORCH_CHECKPOINTS = {
    'cornernet': {
        'hg104': TorchCheckpoint('cornernet', TORCH_NAMES, (('depth', 104), ('head_conv', 256))),
        'tiny': TorchCheckpoint('cornernet_tiny', TORCH_NAMES, (('head_conv', 16),)),
    },
}
