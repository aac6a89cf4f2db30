r"""Import official PyTorch weights (CenterNet zoo, mmdetection CenterNet, ImageNet backbones).

Command line (writes ``OUT/checkpoints/0``, an Orbax checkpoint that ``evaluate``/``predict``
restore with the matching config and that a training config can name as ``config.init``)::

  python -m centernet_jax.convert --format centernet --arch resdcn_18 \
      --input ctdet_coco_resdcn18.pth --output runs/zoo_resdcn18

From Python::

  variables = convert_state_dict(torch.load(path, weights_only=True), 'dla_34')

Formats and architectures (``FORMATS``):
  centernet     official CenterNet ctdet models: res_{18,34,50,101,152} (msra_resnet),
                resdcn_{18,34,50,101,152}, dla_34 (the unused ImageNet ``base.fc`` is dropped),
                hourglass (Hourglass-104, two stacks).
  cornernet     official CornerNet (princeton-vl/CornerNet) Hourglass-104: hg104.
  mmdet         mmdetection CenterNet: resnet18_dcnv2 (CTResNetNeck use_dcn=True), resnet18;
                mmdetection CornerNet: cornernet_hg104 (HourglassNet + CornerHead).
  torchvision   ImageNet ResNets resnet{18,34,50,101,152} (backbone only; ``fc`` dropped).
  dla_imagenet  ImageNet DLA-34 ``dla34-ba72cf86.pth`` as dla34 (backbone only; ``fc`` dropped).
The ``*_tiny`` architectures are the small test variants of the same code.

Layouts: conv OIHW -> HWIO; ConvTranspose2d (I, O, kh, kw) -> (kh, kw, I, O), no flip (our
up-convolution stores the PyTorch kernel as is, see models/layers.py); depthwise ConvTranspose2d
(C, 1, k, k) -> (k, k, 1, C) (read like a conv); BN weight/bias/running_mean/running_var ->
params scale/bias, batch_stats mean/var (eps 1e-5 and momentum 0.1 = flax 0.9 are our defaults);
DCNv2 ``conv_offset_mask`` (mmcv ``conv_offset``) keeps its 3K channels in the official (dy, dx)
interleaved order, which our DeformConv reads unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from centernet_jax import config_lib


class ConversionError(ValueError):
  """A checkpoint that cannot be converted; the message says which keys or which file."""


@dataclasses.dataclass(frozen=True)
class Arch:
  """One convertible architecture.

  Attributes:
    model_arch: key of ``centernet_jax.models.MODELS``.
    depth: its ``config.model.depth``.
    head_conv: official head width (the converted one is read from the weights).
    model_overrides: other official ``config.model`` fields (init styles: runtime only).
    backbone_only: the file holds an ImageNet backbone (converted: the 'backbone' subtree).
  """
  model_arch: str
  depth: int
  head_conv: int = 64
  model_overrides: tuple[tuple[str, Any], ...] = ()
  backbone_only: bool = False


_DCN_INIT = (('deconv_init', 'bilinear'), ('head_init', 'fill_fc'))
_DLA_INIT = (('deconv_init', 'bilinear'), ('head_init', 'dla'))
_DEPTHS = (18, 34, 50, 101, 152)

FORMATS: dict[str, dict[str, Arch]] = {
    'centernet': {
        **{f'res_{d}': Arch('resnet', d) for d in _DEPTHS},
        **{f'resdcn_{d}': Arch('resdcn', d, 64, _DCN_INIT) for d in _DEPTHS},
        'dla_34': Arch('dla', 34, 256, _DLA_INIT),
        'hourglass': Arch('hourglass', 104, 256),
        'res_tiny': Arch('resnet_tiny', 18),
        'resdcn_tiny': Arch('resdcn_tiny', 18, 64, _DCN_INIT),
        'dla_tiny': Arch('dla_tiny', 34, 256, _DLA_INIT),
        'hourglass_tiny': Arch('hourglass_tiny', 104, 256),
    },
    'cornernet': {
        'hg104': Arch('cornernet', 104, 256),
        'tiny': Arch('cornernet_tiny', 104, 256),
    },
    'mmdet': {
        'resnet18_dcnv2': Arch('mmdet_resdcn', 18, 64, _DCN_INIT),
        'resnet18': Arch('mmdet_resnet', 18, 64, _DCN_INIT),
        'resnet_tiny_dcnv2': Arch('mmdet_resdcn_tiny', 18, 64, _DCN_INIT),
        'resnet_tiny': Arch('mmdet_resnet_tiny', 18, 64, _DCN_INIT),
        'cornernet_hg104': Arch('cornernet', 104, 256),
        'cornernet_tiny': Arch('cornernet_tiny', 104, 256),
    },
    'torchvision': {
        **{f'resnet{d}': Arch('resnet', d, backbone_only=True) for d in _DEPTHS},
        'resnet_tiny': Arch('resnet_tiny', 18, backbone_only=True),
    },
    'dla_imagenet': {
        'dla34': Arch('dla', 34, 256, _DLA_INIT, backbone_only=True),
        'dla_tiny': Arch('dla_tiny', 34, 256, _DLA_INIT, backbone_only=True),
    },
}


# ----------------------------------------------------------------------------------------------
# Names and layouts.


def official_to_ours(key: str, shape: list[int] | tuple[int, ...],
                     is_transpose: Callable[[list[str]], bool]):
  """Maps one official CenterNet state_dict entry to (our variable path, our shape).

  'base.' (DLA) becomes 'backbone/', ResNet stems and stages go under 'backbone/'; conv weights
  OIHW -> HWIO; ConvTranspose2d weights (in, out, kh, kw), as ``is_transpose(path)`` tells,
  -> (kh, kw, in, out); BN weight -> scale; running statistics -> batch_stats mean/var.

  Returns:
    ((collection, *path, leaf), shape) or None for entries we do not keep
    (num_batches_tracked, DLA's ImageNet classifier base.fc).
  """
  parts = key.split('.')
  leaf, path = parts[-1], parts[:-1]
  if leaf == 'num_batches_tracked' or key.startswith('base.fc.'):
    return None
  if path[0] == 'base':
    path = ['backbone', *path[1:]]
  elif path[0] in ('conv1', 'bn1') or path[0].startswith('layer'):
    path = ['backbone', *path]
  if leaf in ('running_mean', 'running_var'):
    return ('batch_stats', *path, leaf[len('running_'):]), tuple(shape)
  if leaf == 'bias':
    return ('params', *path, 'bias'), tuple(shape)
  if len(shape) == 1:
    return ('params', *path, 'scale'), tuple(shape)
  if len(shape) != 4:
    raise ConversionError(f'{key}: expected a 4-d conv weight, got shape {tuple(shape)}')
  if is_transpose(path):
    cin, cout, kh, kw = shape
  else:  # Conv2d (out, in, kh, kw); depthwise ConvTranspose2d (C, 1, kh, kw) reads the same
    cout, cin, kh, kw = shape
  return ('params', *path, 'kernel'), (kh, kw, cin, cout)


def _is_transpose_fn(model_arch: str) -> Callable[[list[str]], bool]:
  """Which of our paths hold non-grouped ConvTranspose2d weights."""
  if model_arch.startswith('resnet'):  # msra_resnet: deconv_layers.{0, 3, 6}
    return lambda path: path[0] == 'deconv_layers'
  if model_arch.startswith(('resdcn', 'mmdet_')):  # deconv_layers.{3, 9, 15}
    return lambda path: path[0] == 'deconv_layers' and int(path[1]) % 6 == 3
  return lambda path: False  # DLA: depthwise up-convs only


def _rename_mmdet(key: str) -> str | None:
  """mmdet CenterNet name -> the official CenterNet name of the same tensor (None: dropped)."""
  parts = key.split('.')
  if parts[0] == 'backbone':
    return '.'.join(parts[1:])  # torchvision names, which CenterNet keeps at the top level
  if parts[0] == 'neck' and parts[1] == 'deconv_layers':
    m, sub, rest = int(parts[2]), parts[3], parts[4:]
    offset = {'conv': 0, 'bn': 1}[sub] if m % 2 == 0 else {'conv': 3, 'bn': 4}[sub]
    rest = ['conv_offset_mask' if r == 'conv_offset' else r for r in rest]
    return '.'.join(['deconv_layers', str(6 * (m // 2) + offset), *rest])
  if parts[0] == 'bbox_head':
    head = {'heatmap_head': 'hm', 'wh_head': 'wh', 'offset_head': 'reg'}[parts[1]]
    return '.'.join([head, *parts[2:]])
  raise KeyError(key)


# mmdet HourglassNet / CornerHead module -> official CornerNet module (ConvModule 'conv'/'bn'
# children become the official Sequential indices or names).
_MMDET_CORNERNET = (
    ('backbone.stem.0.', 'pre.0.'), ('backbone.stem.1.0.', 'pre.1.'),
    ('backbone.hourglass_modules.', 'kps.'), ('backbone.inters.', 'inters.'),
    ('backbone.out_convs.', 'cnvs.'),
)
_MMDET_CONVMODULE_SEQ = {'backbone.conv1x1s': 'inters_', 'backbone.remap_convs': 'cnvs_'}
_MMDET_POOL = {'direction1_conv': 'p1_conv1', 'direction2_conv': 'p2_conv1',
               'aftpool_conv.conv': 'p_conv1', 'aftpool_conv.bn': 'p_bn1',
               'conv1.conv': 'conv1', 'conv1.bn': 'bn1', 'conv2': 'conv2'}
_MMDET_CORNER_HEADS = {'heat': 'heats', 'emb': 'tags', 'off': 'regrs'}


def _rename_mmdet_cornernet(key: str) -> str:
  """mmdet CornerNet (HourglassNet + CornerHead) name -> official CornerNet name."""
  parts = key.split('.')
  if parts[0] == 'backbone':
    if '.'.join(parts[:2]) in _MMDET_CONVMODULE_SEQ:  # ConvModule(conv, bn) = Sequential(0, 1)
      index = {'conv': '0', 'bn': '1'}[parts[3]]
      return '.'.join([_MMDET_CONVMODULE_SEQ['.'.join(parts[:2])], parts[2], index, *parts[4:]])
    for old, new in _MMDET_CORNERNET:
      if key.startswith(old):
        rest = ['skip' if p == 'downsample' else p for p in key[len(old):].split('.')]
        return new + '.'.join(rest)
  if parts[0] == 'bbox_head':
    corner, kind = parts[1].split('_')
    if kind == 'pool':
      tail = '.'.join(parts[3:])
      for old, new in _MMDET_POOL.items():
        if tail.startswith(old + '.'):
          return f'{corner}_cnvs.{parts[2]}.{new}{tail[len(old):]}'
    elif kind in _MMDET_CORNER_HEADS:  # Sequential(ConvModule 3x3 (bias), ConvModule 1x1)
      layer = parts[3] if parts[3] == '0' else '1'
      rest = parts[4:] if parts[3] == '0' else parts[5:]
      return '.'.join([f'{corner}_{_MMDET_CORNER_HEADS[kind]}', parts[2], layer, *rest])
  raise KeyError(key)


def _rename(fmt: str, key: str, spec: Arch) -> str | None:
  """Format-specific key -> official CenterNet key (None: an entry that is dropped)."""
  if fmt in ('centernet', 'cornernet'):
    return key
  if fmt == 'mmdet':
    try:
      if spec.model_arch.startswith('cornernet'):
        return _rename_mmdet_cornernet(key)
      return _rename_mmdet(key)
    except (KeyError, IndexError, ValueError):
      return key  # reported as unexpected below
  if fmt in ('torchvision', 'dla_imagenet'):
    return None if key.split('.')[0] == 'fc' else 'base.' + key
  raise ConversionError(f'unknown format {fmt!r}; known: {sorted(FORMATS)}')


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch tensor (torch itself is not imported here)
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, dtype=np.float32)


def unwrap_state_dict(obj: Any, where: str = 'state_dict') -> dict[str, Any]:
  """Strips {'state_dict': ...} / {'model': ...} wrappers and DataParallel 'module.' prefixes."""
  for wrapper in ('state_dict', 'model'):
    if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
      obj = obj[wrapper]
  if not isinstance(obj, Mapping):
    raise ConversionError(f'{where}: expected a state_dict (a mapping of names to tensors), '
                          f'got {type(obj).__name__}')
  out = {}
  for k, v in obj.items():
    k = str(k)
    while k.startswith('module.'):  # DataParallel, CornerNet's DummyModule inside it
      k = k[len('module.'):]
    if not hasattr(v, 'shape'):
      raise ConversionError(f'{where}: entry {k!r} is a {type(v).__name__}, not a tensor')
    out[k] = v
  return out


# ----------------------------------------------------------------------------------------------
# Conversion.


def model_config(arch: str, fmt: str = 'centernet', *, num_classes: int = 80,
                 head_conv: int | None = None):
  """The ``config.model`` section describing ``FORMATS[fmt][arch]`` (base_config's keys)."""
  spec = _arch(arch, fmt)
  cfg = config_lib.base_config().model
  cfg.arch, cfg.depth = spec.model_arch, spec.depth
  cfg.head_conv = spec.head_conv if head_conv is None else head_conv
  cfg.num_classes = num_classes
  for k, v in spec.model_overrides:
    cfg[k] = v
  return cfg


def _arch(arch: str, fmt: str) -> Arch:
  if fmt not in FORMATS:
    raise ConversionError(f'unknown format {fmt!r}; known: {sorted(FORMATS)}')
  if arch not in FORMATS[fmt]:
    raise ConversionError(f'unknown {fmt} architecture {arch!r}; known: {sorted(FORMATS[fmt])}')
  return FORMATS[fmt][arch]


def _abstract_variables(model_cfg) -> dict:
  return _abstract_variables_cached(json.dumps(model_cfg.to_dict(), sort_keys=True))


@functools.lru_cache(maxsize=16)
def _abstract_variables_cached(model_json: str) -> dict:
  from centernet_jax.models import build_model

  model = build_model(json.loads(model_json))
  # 128 px: a valid input size for every model (Hourglass-104 needs a multiple of 128).
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 128, 128, 3)),
                                           train=False))


def _flat(tree, prefix=()) -> dict[tuple[str, ...], Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, (*prefix, k)))
    else:
      out[(*prefix, k)] = v
  return out


def _unflat(flat: Mapping[tuple[str, ...], Any]) -> dict:
  out: dict = {}
  for path, v in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return out


def _head_shape(sd: Mapping[str, Any], fmt: str, spec: Arch
                ) -> tuple[int | None, int | None]:
  """(num_classes, head_conv) read from the heatmap head of a full-model state_dict.

  Hourglass heads are as wide as the stack whatever head_conv says: the official value is kept.
  """
  if spec.model_arch.startswith(('hourglass', 'cornernet')):
    final = {'cornernet': 'tl_heats.0.1.weight', 'centernet': 'hm.0.1.weight',
             'mmdet': 'bbox_head.tl_heat.0.1.conv.weight'}[fmt]
    return (int(sd[final].shape[0]), spec.head_conv) if final in sd else (None, None)
  names = {'centernet': ('hm.2.weight', 'hm.0.weight', 'hm.weight'),
           'mmdet': ('bbox_head.heatmap_head.2.weight', 'bbox_head.heatmap_head.0.weight', '')}
  if fmt not in names:
    return None, None
  final, hidden, single = names[fmt]
  if final in sd and hidden in sd:
    return int(sd[final].shape[0]), int(sd[hidden].shape[0])
  if single in sd:
    return int(sd[single].shape[0]), 0
  return None, None


def _guess(keys: set[str]) -> str:
  """A hint naming the kind of checkpoint ``keys`` looks like ('' when unsure)."""
  def has(prefix):
    return any(k.startswith(prefix) for k in keys)
  n3 = len({k.split('layer3.')[1].split('.')[0] for k in keys
            if k.startswith(('layer3.', 'backbone.layer3.'))})
  depth = {2: 18, 6: '34 or 50', 23: 101, 36: 152}.get(n3, '?')
  if has('tl_cnvs.'):
    return 'a CornerNet Hourglass checkpoint (--format cornernet)'
  if has('kps.'):
    return 'a CenterNet Hourglass checkpoint (--format centernet --arch hourglass)'
  if has('bbox_head.tl_pool.'):
    return 'an mmdetection CornerNet checkpoint (--format mmdet --arch cornernet_hg104)'
  if has('neck.deconv_layers.'):
    return f'an mmdetection CenterNet ResNet-{depth} checkpoint (--format mmdet)'
  if has('base.base_layer.'):
    return 'a CenterNet dla_34 checkpoint (--format centernet --arch dla_34)'
  if has('base_layer.'):
    return 'an ImageNet DLA checkpoint (--format dla_imagenet)'
  if any(k.endswith('conv_offset_mask.weight') and k.startswith('deconv_layers.') for k in keys):
    return f'a CenterNet resdcn checkpoint (--format centernet --arch resdcn_{depth})'
  if has('deconv_layers.'):
    return f'a CenterNet msra_resnet checkpoint (--format centernet --arch res_{depth})'
  if has('layer1.') and 'fc.weight' in keys:
    return f'an ImageNet ResNet-{depth} (--format torchvision --arch resnet{depth})'
  return ''


def convert_state_dict(state_dict: Mapping[str, Any], arch: str, fmt: str = 'centernet', *,
                       num_classes: int | None = None, where: str = 'state_dict') -> dict:
  """Converts an official PyTorch state_dict to our variables.

  Args:
    state_dict: official names -> numpy arrays or torch tensors (wrappers such as
      {'state_dict': ...} and 'module.' prefixes are accepted).
    arch: a key of ``FORMATS[fmt]`` (e.g. 'res_18', 'resdcn_101', 'dla_34').
    fmt: 'centernet', 'cornernet', 'mmdet', 'torchvision' or 'dla_imagenet'.
    num_classes: expected heatmap classes (None: read from the weights).
    where: how errors name the source (e.g. the file).

  Returns:
    {'params', 'batch_stats'} (float32 numpy) for ``build_model(model_config(...))``: the whole
    model, or only the 'backbone' subtree for the backbone-only formats.

  Raises:
    ConversionError: listing every missing key, unexpected key and shape mismatch at once.
  """
  sd = unwrap_state_dict(state_dict, where)
  plan = plan_conversion(sd, arch, fmt, num_classes=num_classes, where=where)
  converted = {}
  for key, (path, perm) in plan.items():
    array = _to_numpy(sd[key])
    converted[path] = np.ascontiguousarray(array if perm is None else array.transpose(perm))
  return _unflat(converted)


def plan_conversion(state_dict: Mapping[str, Any], arch: str, fmt: str = 'centernet', *,
                    num_classes: int | None = None, where: str = 'state_dict'
                    ) -> dict[str, tuple[tuple[str, ...], tuple[int, ...] | None]]:
  """Checks names and shapes only (values may be torch 'meta' tensors).

  Returns:
    {official key: (our variable path, axis permutation or None)} covering every variable.

  Raises:
    ConversionError: as :func:`convert_state_dict`.
  """
  spec = _arch(arch, fmt)
  sd = unwrap_state_dict(state_dict, where)
  read_classes, head_conv = _head_shape(sd, fmt, spec)
  if spec.backbone_only:
    read_classes, head_conv = 1, None
  elif read_classes is None:
    hint = _guess(set(sd))
    raise ConversionError(
        f'{where}: no heatmap head found: not a {fmt} {arch} checkpoint' +
        (f'; it looks like {hint}' if hint else ''))
  if num_classes is not None and not spec.backbone_only and num_classes != read_classes:
    raise ConversionError(f'{where}: the heatmap head has {read_classes} classes, '
                          f'--num_classes says {num_classes}')
  cfg = model_config(arch, fmt, num_classes=read_classes, head_conv=head_conv)
  expected = _flat(_abstract_variables(cfg))
  if spec.backbone_only:
    expected = {k: v for k, v in expected.items() if k[1] == 'backbone'}
  is_transpose = _is_transpose_fn(spec.model_arch)

  plan, seen, unexpected, mismatched = {}, set(), [], []
  for key, value in sd.items():
    name = _rename(fmt, key, spec)
    if name is None:
      continue
    try:
      mapped = official_to_ours(name, tuple(value.shape), is_transpose)
    except ConversionError as e:
      mismatched.append(str(e).replace(name, key, 1))
      continue
    except (IndexError, ValueError):
      unexpected.append(key)
      continue
    if mapped is None:
      continue
    path, shape = mapped
    if path not in expected:
      unexpected.append(key)
      continue
    seen.add(path)  # present; a wrong shape is reported as a mismatch, not also as missing
    if tuple(expected[path].shape) != shape:
      mismatched.append(f'{key} {tuple(value.shape)} -> {"/".join(path)} needs '
                        f'{tuple(expected[path].shape)}')
      continue
    perm = None
    if path[-1] == 'kernel':
      perm = (2, 3, 0, 1) if is_transpose(list(path[1:-1])) else (2, 3, 1, 0)
    plan[key] = (path, perm)
  missing = ['/'.join(p) for p in expected if p not in seen]
  if missing or unexpected or mismatched:
    raise ConversionError(_mismatch_message(where, fmt, arch, missing, unexpected, mismatched,
                                            _guess(set(sd)), len(expected)))
  return plan


def _mismatch_message(where, fmt, arch, missing, unexpected, mismatched, hint, n_expected):
  lines = [f'{where} does not match {fmt} architecture {arch!r}:']
  if len(missing) + len(unexpected) > n_expected // 2 and hint:
    lines.append(f'  it looks like {hint}')
  for title, items in (('missing (in our model, not in the file)', missing),
                       ('unexpected (in the file, not in our model)', unexpected),
                       ('shape mismatches', mismatched)):
    if items:
      lines.append(f'  {len(items)} {title}:')
      lines += [f'    {x}' for x in items[:40]]
      if len(items) > 40:
        lines.append(f'    ... and {len(items) - 40} more')
  return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------
# Files.


def load_state_dict(path: str) -> dict[str, Any]:
  """Reads a .pth (torch.load(weights_only=True)) or .npz file into {name: array or tensor}."""
  if not os.path.isfile(path):
    raise ConversionError(f'input file not found: {path}')
  if path.endswith('.npz'):
    try:
      with np.load(path) as f:
        return unwrap_state_dict({k: f[k] for k in f.files}, path)
    except (OSError, ValueError, EOFError) as e:
      raise ConversionError(f'{path}: cannot read as .npz (truncated or corrupt?): {e}') from e
  try:
    import torch
  except ImportError as e:
    raise ConversionError(
        'reading .pth files needs PyTorch: pip install "centernet-jax[convert]"') from e
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if 'weights_only' in str(e) or 'Weights only load failed' in str(e):
      raise ConversionError(
          f'{path}: holds objects other than tensors, which torch.load(weights_only=True) '
          'refuses. If you trust the file, re-save its weights: torch.save(torch.load(path, '
          "weights_only=False)['state_dict'], 'weights.pth')") from e
    raise ConversionError(
        f'{path}: cannot read as a PyTorch checkpoint (truncated or not a .pth file): '
        f'{message}') from e
  return unwrap_state_dict(obj, path)


def class_table(num_classes: int, class_names: list[str] | None = None
                ) -> tuple[list[str], list[int]]:
  """(class names, category ids): COCO's 80 for 80-class models unless names are given."""
  if class_names:
    if len(class_names) != num_classes:
      raise ConversionError(f'--class_names has {len(class_names)} names, the model predicts '
                            f'{num_classes} classes')
    return list(class_names), list(range(1, num_classes + 1))
  if num_classes == 80:
    from centernet_jax.data.coco import COCO_2017_CATEGORIES
    return [n for _, n in COCO_2017_CATEGORIES], [i for i, _ in COCO_2017_CATEGORIES]
  raise ConversionError(f'the model predicts {num_classes} classes (not COCO\'s 80): give their '
                        'names with --class_names a,b,c')


def convert_file(input_path: str, output_dir: str, arch: str, fmt: str = 'centernet', *,
                 num_classes: int | None = None, class_names: list[str] | None = None) -> str:
  """Converts ``input_path`` and writes ``output_dir/checkpoints/0``; returns that folder.

  The checkpoint's meta holds the model config (``model_config``), class names and category
  ids (COCO's for 80-class models), and where it came from.
  """
  from centernet_jax import checkpoint
  from centernet_jax.steps import TrainState

  spec = _arch(arch, fmt)
  ckpt_dir = checkpoint.checkpoint_dir(os.path.abspath(output_dir))
  if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
    raise ConversionError(f'{ckpt_dir} already holds checkpoints; choose a new --output')
  state_dict = load_state_dict(input_path)
  variables = convert_state_dict(state_dict, arch, fmt, num_classes=num_classes,
                                 where=input_path)
  if spec.backbone_only:
    cfg = model_config(arch, fmt, num_classes=-1)
    names, ids = [], []
  else:
    n, head_conv = _head_shape(state_dict, fmt, spec)
    cfg = model_config(arch, fmt, num_classes=n, head_conv=head_conv)
    names, ids = class_table(n, class_names)
  meta = {'model': cfg.to_dict(), 'class_names': names, 'category_ids': ids,
          'converted_from': {'file': os.path.abspath(input_path), 'format': fmt, 'arch': arch,
                             'backbone_only': spec.backbone_only}}
  state = TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                     batch_stats=variables.get('batch_stats', {}), opt_state={})
  ckpt = checkpoint.Checkpointer(ckpt_dir, async_save=False)
  ckpt.save(state, meta, force=True)
  ckpt.wait()
  ckpt.close()
  return os.path.join(ckpt_dir, '0')


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m centernet_jax.convert', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--format', required=True, choices=sorted(FORMATS))
  parser.add_argument('--arch', required=True,
                      help='; '.join(f'{f}: {", ".join(a)}' for f, a in FORMATS.items()))
  parser.add_argument('--input', required=True, help='.pth (or .npz) file')
  parser.add_argument('--output', required=True, help='folder; writes OUTPUT/checkpoints/0')
  parser.add_argument('--num_classes', type=int, default=None,
                      help='check the heatmap head has this many classes')
  parser.add_argument('--class_names', default='',
                      help='comma-separated names (default: COCO for 80-class models)')
  args = parser.parse_args(argv)
  logging.getLogger().setLevel(logging.INFO)
  try:
    out = convert_file(args.input, args.output, args.arch, args.format,
                       num_classes=args.num_classes,
                       class_names=[n for n in args.class_names.split(',') if n] or None)
  except ConversionError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
