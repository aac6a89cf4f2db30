"""CenterNet output heads: one small conv net per output map (hm, wh, reg, ...).

Official structure (msra_resnet / resnet_dcn / pose_dla_dcn)::

    head_conv > 0:  Sequential(Conv3x3(Cin->head_conv, bias), ReLU, Conv1x1(head_conv->out, bias))
    head_conv == 0: Conv1x1(Cin->out, bias)

Names follow the official state_dict: ``hm.0.weight`` -> ``hm/0/kernel``, ``hm.2.bias`` ->
``hm/2/bias``; with head_conv == 0, ``hm.weight`` -> ``hm/kernel``.

Initialisation, two official styles (``init_style``):
  'msra' (msra_resnet.py, the res_18 model): only a conv whose out channels equal the head's
    outputs is touched (official test ``m.weight.shape[0] == heads[head]``: the final conv, and the
    first one too if head_conv happens to equal the outputs); for heatmap heads its bias is
    -2.19, otherwise its weight is N(0, 0.001) and bias 0. Every other weight and bias keeps
    PyTorch's default conv init.
  'fill_fc' (resnet_dcn.py): heatmap heads get final bias -2.19 (weights keep the PyTorch
    default); every conv of other heads gets N(0, 0.001) weights and bias 0 (``fill_fc_weights``).
  'dla' (pose_dla_dcn.py): as 'fill_fc', but its ``fill_fc_weights`` only zeroes the biases of
    the other heads; their weights keep the PyTorch default.
A head is a heatmap head when 'hm' is in its name (official ``'hm' in head``), so multi_pose's
joint heatmaps ``hm_hp`` get the -2.19 bias too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from centernet_jax.models.layers import (
    Dtype,
    Initializer,
    conv,
    normal_init,
    torch_default_bias_init,
    torch_default_kernel_init,
)
from centernet_jax.models.torch_names import order_heads

# Official CenterNet heatmap prior: sigmoid(-2.19) ~= 0.1 (focal-loss prior, as RetinaNet).
HM_BIAS_INIT = -2.19
HEAD_INIT_STYLES = ('msra', 'fill_fc', 'dla')


def _head_conv_inits(
    *, fan_in: int, features: int, num_outputs: int, is_final: bool, is_heatmap: bool,
    init_style: str,
) -> tuple[Initializer, Initializer]:
  """(kernel_init, bias_init) of one conv of a head, per the official init styles above."""
  default = (torch_default_kernel_init, torch_default_bias_init(fan_in))
  small = (normal_init(0.001), nn.initializers.zeros)
  if init_style == 'msra':
    if features != num_outputs:
      return default
  elif init_style in ('fill_fc', 'dla'):
    if not is_heatmap:
      return small if init_style == 'fill_fc' else (torch_default_kernel_init,
                                                    nn.initializers.zeros)
    if not is_final:
      return default
  else:
    raise ValueError(f'unknown head init style {init_style!r}; known: {HEAD_INIT_STYLES}')
  if is_heatmap:
    return torch_default_kernel_init, nn.initializers.constant(HM_BIAS_INIT)
  return small


class Head(nn.Module):
  """Conv3x3(head_conv, bias) -> ReLU -> Conv1x1(num_outputs, bias), children '0' and '2'.

  Attributes:
    num_outputs: channels of the output map.
    head_conv: hidden channels (> 0; use :func:`make_head` for head_conv == 0).
    is_heatmap: heatmap heads get the -2.19 final bias.
    init_style: 'msra' or 'fill_fc' (module docstring).
    dtype: compute dtype.
  """

  num_outputs: int
  head_conv: int
  is_heatmap: bool
  init_style: str = 'msra'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, h, w, Cin] -> [B, h, w, num_outputs] float32."""
    common = dict(num_outputs=self.num_outputs, is_heatmap=self.is_heatmap,
                  init_style=self.init_style)
    k0, b0 = _head_conv_inits(fan_in=x.shape[-1] * 9, features=self.head_conv, is_final=False,
                              **common)
    x = conv(self.head_conv, 3, use_bias=True, dtype=self.dtype, kernel_init=k0, bias_init=b0,
             name='0')(x)
    x = nn.relu(x)
    k2, b2 = _head_conv_inits(fan_in=self.head_conv, features=self.num_outputs, is_final=True,
                              **common)
    x = conv(self.num_outputs, 1, use_bias=True, dtype=self.dtype, kernel_init=k2, bias_init=b2,
             name='2')(x)
    return x.astype(jnp.float32)


def make_head(
    name: str, num_outputs: int, head_conv: int, *, in_features: int, init_style: str = 'msra',
    dtype: Dtype = jnp.float32,
) -> nn.Module:
  """The head called ``name`` (call inside a parent's compact method).

  Args:
    name: head name ('hm', 'wh', 'reg', ...); also the module name.
    num_outputs: output channels.
    head_conv: hidden channels; 0 means a single 1x1 conv (params directly under ``name``).
    in_features: input channels (fan-in of the single conv's default bias init).
    init_style: 'msra' or 'fill_fc'.
    dtype: compute dtype.

  Returns:
    A module mapping [B, h, w, in_features] -> [B, h, w, num_outputs] (float32 for Head; the
    single conv returns the compute dtype, callers cast).
  """
  is_heatmap = 'hm' in name
  if head_conv > 0:
    return Head(num_outputs, head_conv, is_heatmap, init_style, dtype, name=name)
  k, b = _head_conv_inits(fan_in=in_features, features=num_outputs, num_outputs=num_outputs,
                          is_final=True, is_heatmap=is_heatmap, init_style=init_style)
  return conv(num_outputs, 1, use_bias=True, dtype=dtype, kernel_init=k, bias_init=b, name=name)


# ----------------------------------------------------------------------------------------------
# PyTorch names: a head ``hm`` is ``hm.0`` (3x3) and ``hm.2`` (1x1), or ``hm`` alone (head_conv 0).

# Head names of the published CenterNet checkpoints in the configs' order, the official opts.py
# order: ctdet hm, wh, reg; multi_pose hm, wh, hps, reg, hm_hp, hp_offset (msra_resnet and
# resnet_dcn register their heads sorted, so a file's order is not the configs').
OFFICIAL_HEADS = ('hm', 'wh', 'hps', 'reg', 'hm_hp', 'hp_offset')


def official_heads(num_classes: int) -> tuple[tuple[str, int], ...]:
  """Heads of the published CenterNet ctdet checkpoints: hm (classes), wh (2), reg (2)."""
  return (('hm', num_classes), ('wh', 2), ('reg', 2))


def read_torch_heads(shapes: Mapping[str, Sequence[int]], body: Sequence[str]
                     ) -> tuple[tuple[tuple[str, int], ...], int] | None:
  """(heads, head_conv) of a one-stack CenterNet state_dict in our names.

  Args:
    shapes: our dotted names (PyTorch leaves) -> shapes.
    body: top-level modules that are not heads (backbone and neck).

  Returns:
    The heads in the official order (then any others as the file lists them) and their common
    hidden width (0: single 1x1 convs), or None when no heatmap head ('hm' in its name, the
    official test) is there.

  Raises:
    ValueError: heads of different hidden widths (one config.model.head_conv cannot say that).
  """
  def conv(name):  # a Conv2d with a bias, as every head layer is
    return len(shapes.get(f'{name}.weight', ())) == 4 and f'{name}.bias' in shapes

  found, widths = {}, {}
  for key in shapes:
    top = key.split('.')[0]
    if top in body or top in found:
      continue
    if conv(f'{top}.0') and conv(f'{top}.2'):
      found[top] = int(shapes[f'{top}.2.weight'][0])
      widths[top] = int(shapes[f'{top}.0.weight'][0])
    elif conv(top):
      found[top], widths[top] = int(shapes[f'{top}.weight'][0]), 0
  if not any('hm' in name for name in found):
    return None
  if len(set(widths.values())) > 1:
    raise ValueError(f'heads of different hidden widths {widths}: one head_conv cannot build them')
  return order_heads(found, OFFICIAL_HEADS), next(iter(widths.values()))
