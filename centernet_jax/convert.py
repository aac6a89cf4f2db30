r"""Import official PyTorch weights (CenterNet zoo, mmdetection CenterNet, ImageNet backbones).

Command line (writes ``OUT/checkpoints/0``, an Orbax checkpoint that ``evaluate``/``predict``
restore with the matching config and that a training config can name as ``config.init``)::

  python -m centernet_jax.convert --format centernet --arch resdcn_18 \
      --input ctdet_coco_resdcn18.pth --output runs/zoo_resdcn18

From Python::

  variables = convert_state_dict(torch.load(path, weights_only=True), 'dla_34')

Formats and architectures (``FORMATS``, gathered from the ``TORCH_CHECKPOINTS`` table next to
each model, which also states that model's PyTorch name rules):
  centernet     official CenterNet ctdet models: res_{18,34,50,101,152} (msra_resnet),
                resdcn_{18,34,50,101,152}, dla_34 (the unused ImageNet ``base.fc`` is dropped),
                hourglass (Hourglass-104, two stacks); the multi_pose zoo models
                (``multi_pose_dla_{1x,3x}.pth`` as dla_34, ``multi_pose_hg_{1x,3x}.pth`` as
                hourglass: heads hm, wh, hps, reg, hm_hp, hp_offset read from the file, class
                table COCO's person) for ``configs/multi_pose_*_coco.py``; the ddd (KITTI
                monocular 3D) zoo models (``ddd_3dop.pth``, ``ddd_sub.pth`` as dla_34: heads
                hm, dep, rot, dim, wh, reg read from the file, class table KITTI's
                Pedestrian, Car, Cyclist) for ``configs/ddd_dla34_kitti.py``.
  cornernet     official CornerNet (princeton-vl/CornerNet) Hourglass-104: hg104.
  mmdet         mmdetection CenterNet: resnet18_dcnv2 (CTResNetNeck use_dcn=True), resnet18;
                mmdetection CornerNet: cornernet_hg104 (HourglassNet + CornerHead).
  torchvision   ImageNet ResNets resnet{18,34,50,101,152} (backbone only; ``fc`` dropped).
  dla_imagenet  ImageNet DLA-34 ``dla34-ba72cf86.pth`` as dla34 (backbone only; ``fc`` dropped).
The ``*_tiny`` architectures are the small test variants of the same code.

Layouts (models/torch_names.py): conv OIHW -> HWIO; ConvTranspose2d (I, O, kh, kw) -> (kh, kw,
I, O), no flip; depthwise ConvTranspose2d (C, 1, k, k) -> (k, k, 1, C); BN weight/bias/
running_mean/running_var -> params scale/bias, batch_stats mean/var (eps 1e-5 and momentum 0.1 =
flax 0.9 are our defaults); DCNv2 ``conv_offset_mask`` keeps the official (dy, dx) order.

The converted checkpoint's meta holds the model config with the heads read from the file.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from centernet_jax import config_lib, models
from centernet_jax.models import (
    centernet,
    centernet_hourglass,
    cornernet,
    dla,
    dla_dcn,
    mmdet,
    resnet,
    resnet_dcn,
    torch_names,
)
from centernet_jax.models.torch_names import TorchCheckpoint, TorchNames


class ConversionError(ValueError):
  """A checkpoint that cannot be converted; the message says which keys or which file."""


def _formats(*tables: Mapping[str, Mapping[str, TorchCheckpoint]]
             ) -> dict[str, dict[str, TorchCheckpoint]]:
  formats: dict[str, dict[str, TorchCheckpoint]] = {}
  for table in tables:
    for fmt, archs in table.items():
      clash = set(archs) & set(formats.get(fmt, {}))
      if clash:
        raise ValueError(f'{fmt} architectures defined twice: {sorted(clash)}')
      formats.setdefault(fmt, {}).update(archs)
  return formats


# format -> architecture name -> checkpoint layout, from the tables next to each model.
FORMATS: dict[str, dict[str, TorchCheckpoint]] = _formats(
    centernet.TORCH_CHECKPOINTS, resnet_dcn.TORCH_CHECKPOINTS, dla_dcn.TORCH_CHECKPOINTS,
    centernet_hourglass.TORCH_CHECKPOINTS, cornernet.TORCH_CHECKPOINTS, mmdet.TORCH_CHECKPOINTS,
    resnet.TORCH_CHECKPOINTS, dla.TORCH_CHECKPOINTS)


def _checkpoint(arch: str, fmt: str) -> TorchCheckpoint:
  if fmt not in FORMATS:
    raise ConversionError(f'unknown format {fmt!r}; known: {sorted(FORMATS)}')
  if arch not in FORMATS[fmt]:
    raise ConversionError(f'unknown {fmt} architecture {arch!r}; known: {sorted(FORMATS[fmt])}')
  return FORMATS[fmt][arch]


def _guess(keys: set[str]) -> str:
  """A hint naming the kind of checkpoint ``keys`` looks like ('' when unsure)."""
  frozen = frozenset(keys)
  seen = set()
  for archs in FORMATS.values():
    for ckpt in archs.values():
      if id(ckpt.names) not in seen:
        seen.add(id(ckpt.names))
        hint = ckpt.names.signature(frozen)
        if hint:
          return hint
  return ''


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
                 heads: Sequence[tuple[str, int]] | None = None,
                 head_conv: int | None = None) -> ml_collections.ConfigDict:
  """The ``config.model`` section describing ``FORMATS[fmt][arch]`` (base_config's keys).

  Args:
    arch, fmt: the checkpoint layout.
    num_classes: heatmap classes (-1: not known, then heads stay empty; always so for the
      ImageNet backbones, whose detector heads the training config decides).
    heads: the heads, as read from a file (default: the published checkpoints' heads for
      ``num_classes``).
    head_conv: the heads' hidden width, as read from a file (default: the official one).

  Returns:
    An unlocked copy of ``base_config().model`` with arch, num_classes, heads and the official
    options (depth, init styles, head_conv) set.
  """
  ckpt = _checkpoint(arch, fmt)
  cfg = config_lib.base_config().model
  cfg.arch = ckpt.arch
  for key, value in ckpt.options:
    cfg[key] = value
  if head_conv is not None:
    cfg.head_conv = head_conv
  if ckpt.backbone_only:  # no classes: the training config decides the detector's heads
    num_classes, heads = -1, ()
  if heads is None:
    official = ckpt.names.official_heads
    heads = official(num_classes) if official and num_classes > 0 else ()
  cfg.num_classes = num_classes
  cfg.heads = tuple((str(name), int(channels)) for name, channels in heads)
  return cfg


def _renamed_shapes(sd: Mapping[str, Any], names: TorchNames) -> dict[str, tuple[int, ...]]:
  """Our dotted names -> shapes, for the entries the rules know."""
  out = {}
  for key, value in sd.items():
    try:
      renamed = names.rename(key)
    except (KeyError, IndexError, ValueError):
      continue
    if renamed is not None:
      out[renamed] = tuple(value.shape)
  return out


def config_from_state_dict(state_dict: Mapping[str, Any], arch: str, fmt: str = 'centernet', *,
                           num_classes: int | None = None, where: str = 'state_dict'
                           ) -> ml_collections.ConfigDict:
  """``model_config`` with the heads (and head_conv) read from a full model's state_dict.

  Backbone-only formats give num_classes -1 and no heads.

  Raises:
    ConversionError: no heads in the file (naming what it looks like), heads of different
      widths, or a heatmap class count other than ``num_classes``.
  """
  ckpt = _checkpoint(arch, fmt)
  sd = unwrap_state_dict(state_dict, where)
  if ckpt.backbone_only:
    return model_config(arch, fmt, num_classes=-1)
  try:
    read = ckpt.names.read_heads(_renamed_shapes(sd, ckpt.names))
  except ValueError as e:
    raise ConversionError(f'{where}: {e}') from e
  if read is None:
    hint = _guess(set(sd))
    raise ConversionError(
        f'{where}: no heatmap head found: not a {fmt} {arch} checkpoint' +
        (f'; it looks like {hint}' if hint else ''))
  heads, head_conv = read
  if is_ddd_model(heads):  # the official ddd order (opts.py, docs/parity.md 4.13), not ctdet's
    heads = torch_names.order_heads(dict(heads), DDD_HEADS)
  read_classes = heads[0][1]  # the official order lists the heatmap first
  if num_classes is not None and num_classes != read_classes:
    raise ConversionError(f'{where}: the heatmap head has {read_classes} classes, '
                          f'--num_classes says {num_classes}')
  return model_config(arch, fmt, num_classes=read_classes, heads=heads, head_conv=head_conv)


def _abstract_variables(model_cfg: ml_collections.ConfigDict) -> dict:
  return _abstract_variables_cached(json.dumps(model_cfg.to_dict(), sort_keys=True))


@functools.lru_cache(maxsize=16)
def _abstract_variables_cached(model_json: str) -> dict:
  model_cfg = json.loads(model_json)
  # A backbone does not depend on the heads: any will do for a backbone-only file.
  model_cfg['heads'] = model_cfg['heads'] or [('hm', 1)]
  model = models.build_model(model_cfg)
  # 128 px: a valid input size for every model (Hourglass-104 needs a multiple of 128).
  images = jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


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
    {'params', 'batch_stats'} (float32 numpy) for ``build_model(config_from_state_dict(...))``:
    the whole model, or only the 'backbone' subtree for the backbone-only formats.

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
    {file key: (our variable path, axis permutation or None)} covering every variable.

  Raises:
    ConversionError: as :func:`convert_state_dict`.
  """
  ckpt = _checkpoint(arch, fmt)
  sd = unwrap_state_dict(state_dict, where)
  cfg = config_from_state_dict(sd, arch, fmt, num_classes=num_classes, where=where)
  expected = _flat(_abstract_variables(cfg))
  if ckpt.backbone_only:
    expected = {k: v for k, v in expected.items() if k[1] == 'backbone'}

  plan, seen, unexpected, mismatched = {}, set(), [], []
  for key, value in sd.items():
    try:
      mapped = torch_names.to_variable(key, tuple(value.shape), ckpt.names)
    except torch_names.LayoutError as e:
      mismatched.append(f'{key}: {e}')
      continue
    except (KeyError, IndexError, ValueError):
      unexpected.append(key)
      continue
    if mapped is None:
      continue
    path, shape, perm = mapped
    if path not in expected:
      unexpected.append(key)
      continue
    seen.add(path)  # present; a wrong shape is reported as a mismatch, not also as missing
    if tuple(expected[path].shape) != shape:
      mismatched.append(f'{key} {tuple(value.shape)} -> {"/".join(path)} needs '
                        f'{tuple(expected[path].shape)}')
      continue
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


def is_keypoint_model(heads: Sequence[tuple[str, int]]) -> bool:
  """Whether ``heads`` are a multi_pose model's (a joint offset head ``hps``)."""
  return any(name == 'hps' for name, _ in heads)


# Heads of the official ddd models in the official order (opts.py: hm, dep, rot, dim, then wh and
# reg; docs/parity.md 4.13), the order of tasks/ddd.heads and so of the ddd configs.
DDD_HEADS = ('hm', 'dep', 'rot', 'dim', 'wh', 'reg')


def is_ddd_model(heads: Sequence[tuple[str, int]]) -> bool:
  """Whether ``heads`` are a ddd (monocular 3D) model's: depth, rotation and size heads."""
  names = {name for name, _ in heads}
  return {'dep', 'rot', 'dim'} <= names


def class_table(num_classes: int, class_names: list[str] | None = None, *,
                keypoints: bool = False, ddd: bool = False) -> tuple[list[str], list[int]]:
  """(class names, category ids) unless names are given: COCO's 80 for 80-class models, COCO's
  person (category 1 of person_keypoints_*.json) for a one-class keypoint model, KITTI's
  Pedestrian, Car, Cyclist (ids 1, 2, 3, the official KITTI conversion's) for a three-class ddd
  model."""
  if class_names:
    if len(class_names) != num_classes:
      raise ConversionError(f'--class_names has {len(class_names)} names, the model predicts '
                            f'{num_classes} classes')
    return list(class_names), list(range(1, num_classes + 1))
  if keypoints and num_classes == 1:
    return ['person'], [1]
  if ddd and num_classes == 3:
    from centernet_jax.data.kitti import CLASS_NAMES
    return list(CLASS_NAMES), [1, 2, 3]
  if num_classes == 80:
    from centernet_jax.data.coco import COCO_2017_CATEGORIES
    return [n for _, n in COCO_2017_CATEGORIES], [i for i, _ in COCO_2017_CATEGORIES]
  raise ConversionError(f'the model predicts {num_classes} classes (not COCO\'s 80): give their '
                        'names with --class_names a,b,c')


def convert_file(input_path: str, output_dir: str, arch: str, fmt: str = 'centernet', *,
                 num_classes: int | None = None, class_names: list[str] | None = None) -> str:
  """Converts ``input_path`` and writes ``output_dir/checkpoints/0``; returns that folder.

  The checkpoint's meta holds the model config (:func:`config_from_state_dict`: heads read from
  the file), class names and category ids (COCO's for 80-class models, COCO's person for
  one-class keypoint models, KITTI's for three-class ddd models), and where it came from.
  """
  from centernet_jax import checkpoint
  from centernet_jax.state import TrainState

  ckpt = _checkpoint(arch, fmt)
  ckpt_dir = checkpoint.checkpoint_dir(os.path.abspath(output_dir))
  if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
    raise ConversionError(f'{ckpt_dir} already holds checkpoints; choose a new --output')
  state_dict = load_state_dict(input_path)
  variables = convert_state_dict(state_dict, arch, fmt, num_classes=num_classes,
                                 where=input_path)
  cfg = config_from_state_dict(state_dict, arch, fmt, where=input_path)
  names, ids = ([], []) if ckpt.backbone_only else class_table(
      cfg.num_classes, class_names, keypoints=is_keypoint_model(cfg.heads),
      ddd=is_ddd_model(cfg.heads))
  meta = {'model': cfg.to_dict(), 'class_names': names, 'category_ids': ids,
          'converted_from': {'file': os.path.abspath(input_path), 'format': fmt, 'arch': arch,
                             'backbone_only': ckpt.backbone_only}}
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
                      help='comma-separated names (default: COCO for 80-class models, '
                      'person for multi_pose models, KITTI for ddd models)')
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
