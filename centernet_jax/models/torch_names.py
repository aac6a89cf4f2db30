"""How PyTorch checkpoints name and lay out our variables: the vocabulary of the per-model rules.

Each model module states, next to the model, how the published PyTorch checkpoints of that
model name its tensors (a :class:`TorchNames`) and which checkpoints load into which arch (a
table of :class:`TorchCheckpoint`). ``centernet_jax.convert`` is the driver over those tables.

A name rule renames a file's key to *our* dotted variable path with the PyTorch leaf kept
(``layer1.0.conv1.weight`` -> ``backbone.layer1.0.conv1.weight``); :func:`to_variable` then
applies the layout rules every PyTorch model shares:

- ``weight`` of a conv, OIHW -> ``kernel`` HWIO; of a ConvTranspose2d (in, out, kh, kw), as
  ``transposed(path)`` tells, -> (kh, kw, in, out) with no flip (our up-convolution stores the
  PyTorch kernel as is, layers.py); a depthwise ConvTranspose2d (C, 1, k, k) reads like a conv.
- BN ``weight``/``bias`` -> params ``scale``/``bias``; ``running_mean``/``running_var`` ->
  batch_stats ``mean``/``var``; ``num_batches_tracked`` is dropped.
- DCNv2 ``conv_offset_mask`` keeps its 3K channels in the official (dy, dx) interleaved order,
  which our DeformConv reads unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Shapes = Mapping[str, Sequence[int]]
Heads = tuple[tuple[str, int], ...]


class LayoutError(ValueError):
  """A tensor whose shape no PyTorch layout rule reads (e.g. a 3-d 'weight')."""


def keep(key: str) -> str:
  """The identity rule: the file already uses our names."""
  return key


def never(path: Sequence[str]) -> bool:
  """No ConvTranspose2d (in, out, kh, kw) weights in the model."""
  del path
  return False


@dataclasses.dataclass(frozen=True)
class TorchNames:
  """How one family of PyTorch checkpoints names our variables.

  Attributes:
    rename: file key -> our dotted path with the PyTorch leaf, or None for a tensor we do not
      keep (an ImageNet classifier). May raise KeyError / IndexError / ValueError for a key it
      does not know (reported as unexpected).
    transposed: whether the module at our path (without the leaf) holds a non-grouped
      ConvTranspose2d weight (in, out, kh, kw).
    read_heads: ``read_heads(shapes)`` with shapes keyed by renamed keys -> (heads, head_conv)
      of a full model's file, or None if it holds no heads (e.g. another checkpoint kind).
    official_heads: ``official_heads(num_classes)`` -> the heads of the published checkpoints
      (for a config without a file to read them from).
    signature: ``signature(keys)`` -> a short description of the file when its raw keys look
      like this family's (for error messages), else None.
  """

  rename: Callable[[str], str | None] = keep
  transposed: Callable[[Sequence[str]], bool] = never
  read_heads: Callable[[Shapes], tuple[Heads, int] | None] | None = None
  official_heads: Callable[[int], Heads] | None = None
  signature: Callable[[frozenset[str]], str | None] = lambda keys: None


@dataclasses.dataclass(frozen=True)
class TorchCheckpoint:
  """A published checkpoint layout that loads into one of our archs.

  Attributes:
    arch: key of ``centernet_jax.models.MODELS``.
    names: the name rules of its file.
    options: the official model's ``config.model`` options (depth, init styles, head_conv when
      the file cannot tell), only options the arch takes.
    backbone_only: an ImageNet backbone: it fills the 'backbone' subtree only.
  """

  arch: str
  names: TorchNames
  options: tuple[tuple[str, Any], ...] = ()
  backbone_only: bool = False


def to_variable(key: str, shape: Sequence[int], names: TorchNames
                ) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...] | None] | None:
  """Maps one state_dict entry to (our variable path, our shape, axis permutation).

  Args:
    key: the file's name of the tensor.
    shape: its shape.
    names: the family's rules.

  Returns:
    ``((collection, *module path, leaf), shape, perm)`` (perm: None or the transpose taking the
    PyTorch array to ours), or None for a tensor we do not keep.

  Raises:
    LayoutError: a weight that is neither 1-d (BN) nor 4-d (conv).
    KeyError, IndexError, ValueError: a key the rules do not know.
  """
  renamed = names.rename(key)
  if renamed is None:
    return None
  parts = renamed.split('.')
  leaf, path = parts[-1], tuple(parts[:-1])
  shape = tuple(int(d) for d in shape)
  if leaf == 'num_batches_tracked':
    return None
  if not path:
    raise ValueError(f'{key}: no module path')
  if leaf in ('running_mean', 'running_var'):
    return ('batch_stats', *path, leaf[len('running_'):]), shape, None
  if leaf == 'bias':
    return ('params', *path, 'bias'), shape, None
  if leaf != 'weight':
    raise ValueError(f'{key}: unknown PyTorch leaf {leaf!r}')
  if len(shape) == 1:
    return ('params', *path, 'scale'), shape, None
  if len(shape) != 4:
    raise LayoutError(f'expected a 4-d conv weight, got shape {shape}')
  if names.transposed(path):
    cin, cout, kh, kw = shape
    return ('params', *path, 'kernel'), (kh, kw, cin, cout), (2, 3, 0, 1)
  cout, cin, kh, kw = shape  # Conv2d; a depthwise ConvTranspose2d (C, 1, k, k) reads the same
  return ('params', *path, 'kernel'), (kh, kw, cin, cout), (2, 3, 1, 0)


def order_heads(found: Mapping[str, int], official: Sequence[str]) -> Heads:
  """Heads read from a file in the official order first, then any others as the file lists them.

  (Official msra_resnet registers its heads sorted, hm, reg, wh; the configs list hm, wh, reg.)
  """
  first = [(name, found[name]) for name in official if name in found]
  return tuple(first) + tuple((n, c) for n, c in found.items() if n not in official)
