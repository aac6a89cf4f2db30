"""CenterNet on the stacked hourglass (official ``large_hourglass.py``, arch 'hourglass', zoo
``ctdet_coco_hg``): Hourglass-104 (hourglass.py) with the ctdet heads on every stack.

Every stack has its own heads (``make_kp_layer``: Conv3x3(cnv_dim -> head_conv, bias, no BN) ->
ReLU -> Conv1x1, the hm bias at -2.19); all stacks are supervised and inference reads the last.
Parameter names are the official ones (hourglass.py): ``hm.1.0.conv.weight`` ->
``params/hm/1/0/conv/kernel``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from centernet_jax.models.heads import OFFICIAL_HEADS, official_heads
from centernet_jax.models.hourglass import (
    HOURGLASS_104,
    TORCH_BODY,
    HourglassSpec,
    check_head_conv,
    head_stacks,
    hourglass_features,
    hourglass_spec,
    read_torch_heads,
    tiny_spec,
)
from centernet_jax.models.layers import Dtype
from centernet_jax.models.torch_names import TorchCheckpoint, TorchNames


class CenterNetHourglass(nn.Module):
  """CenterNet on the stacked hourglass (official ``large_hourglass.py`` ``HourglassNet``).

  Every stack has its own heads (Conv3x3(cnv_dim -> head_conv, bias, no BN) -> ReLU ->
  Conv1x1); all stacks are supervised and inference reads the last one.

  Attributes:
    heads: ((name, channels), ...), e.g. (('hm', 80), ('wh', 2), ('reg', 2)).
    spec: topology.
    head_conv: hidden channels of the heads (official: curr_dim, 256).
    dtype: compute dtype; params are float32 and outputs float32.
  """

  heads: tuple[tuple[str, int], ...]
  spec: HourglassSpec = HOURGLASS_104
  head_conv: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> list[dict[str, jax.Array]]:
    """Runs the detector.

    Args:
      images: [B, H, W, 3] float (normalised); ceil(H / 4), ceil(W / 4) divisible by 2**n.
      train: BatchNorm mode.

    Returns:
      num_stacks dicts {name: [B, ceil(H / 4), ceil(W / 4), channels] float32}.
    """
    features = hourglass_features(self.spec, images, train, self.dtype)
    heads = [head_stacks(name, channels, self.head_conv, 'hm' in name, self.dtype)
             for name, channels in self.heads]
    return [{name: head(i, cnv) for (name, _), head in zip(self.heads, heads, strict=True)}
            for i, cnv in enumerate(features)]


def build_hourglass(
    *, heads: Sequence[tuple[str, int]], dtype: Dtype = jnp.float32, depth: int = 104,
    head_conv: int = 256,
) -> CenterNetHourglass:
  """CenterNet on Hourglass-104 (arch 'hourglass', official large_hourglass).

  Args:
    heads: ((name, channels), ...).
    dtype: compute dtype.
    depth: 104 (HOURGLASS_SPECS).
    head_conv: hidden channels of each head's 3x3 conv (official: the stack width, 256).
  """
  return CenterNetHourglass(tuple(heads), hourglass_spec(depth), check_head_conv(head_conv),
                            dtype)


def build_hourglass_tiny(
    *, heads: Sequence[tuple[str, int]], dtype: Dtype = jnp.float32, head_conv: int = 16,
    width: int = 1,
) -> CenterNetHourglass:
  """CenterNet on HOURGLASS_TINY (arch 'hourglass_tiny'), for tests and CPU runs.

  head_conv as :func:`build_hourglass` (16, the tiny stack width, mirrors the official choice);
  ``width`` multiplies every channel count of the stack.
  """
  return CenterNetHourglass(tuple(heads), tiny_spec(width), check_head_conv(head_conv), dtype)


# ----------------------------------------------------------------------------------------------
# PyTorch names: ours are the official ones.


def _signature(keys: frozenset[str]) -> str | None:
  if any(k.startswith('kps.') for k in keys) and not any(k.startswith('tl_cnvs.') for k in keys):
    return 'a CenterNet Hourglass checkpoint (--format centernet --arch hourglass)'
  return None


TORCH_NAMES = TorchNames(
    read_heads=lambda shapes: read_torch_heads(shapes, TORCH_BODY, OFFICIAL_HEADS),
    official_heads=official_heads,
    signature=_signature,
)
# Official CenterNet zoo ``ctdet_coco_hg`` (large_hourglass); the tiny one mirrors its widths.
TORCH_CHECKPOINTS = {
    'centernet': {
        'hourglass': TorchCheckpoint('hourglass', TORCH_NAMES, (('depth', 104),
                                                                ('head_conv', 256))),
        'hourglass_tiny': TorchCheckpoint('hourglass_tiny', TORCH_NAMES, (('head_conv', 16),)),
    },
}
