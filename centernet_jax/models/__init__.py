"""CenterNet and CornerNet models (flax.linen) and the registry that builds them from config.model.

Every model maps ``(images [B, H, W, 3], train: bool)`` to a list with one dict per stack,
``{head name: [B, h, w, channels] float32}`` (``h, w = output_hw(model, H, W)``); variables are
'params' (float32) and 'batch_stats'. The heads are whatever ``config.model.heads`` names (the
task decides them: ctdet hm/wh/reg, CornerNet tl_heat, br_heat, tl_tag, ...); models know no task.

Archs (``MODELS``), each with a ``*_tiny`` variant of the same code for tests and CPU runs:
  resnet      official msra_resnet (centernet.py): ResNet + 3 up-convs of 256
  resdcn      official resnet_dcn (resnet_dcn.py): ResNet + 3 x [DCN, up-conv]
  mmdet_resdcn, mmdet_resnet   mmdetection CenterNet (mmdet.py)
  dla         official pose_dla_dcn (dla_dcn.py): DLA-34 (dla.py) + DLAUp / IDAUp
  hourglass   official large_hourglass (centernet_hourglass.py): Hourglass-104 (hourglass.py),
              two stacks
  cornernet   official CornerNet (cornernet.py): Hourglass-104 + corner pooling, two stacks

Each builder takes ``heads``, ``dtype`` and the ``config.model`` options it honours, as keyword
arguments (``options(arch)`` lists them). An option the chosen arch does not take must keep its
base-config default; any other value is an error naming the key and the arch (a model that
silently ignores a setting trains something else than the config says).

Files: backbones (resnet.py, dla.py, hourglass.py) return feature maps and know no heads; each
detector file composes backbone, neck and heads (heads.py) and ends with its PyTorch name rules
and the published checkpoints that load into it (torch_names.py: the shared vocabulary; the
converter, centernet_jax/convert.py, is the driver over them). layers.py holds the shared
PyTorch-matching layers.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from centernet_jax.models import (
    centernet,
    centernet_hourglass,
    cornernet,
    dla_dcn,
    layers,
    mmdet,
    resnet_dcn,
)

MODELS: dict[str, Callable[..., nn.Module]] = {
    'resnet': centernet.build_resnet,
    'resnet_tiny': centernet.build_resnet_tiny,
    'resdcn': resnet_dcn.build_resdcn,
    'resdcn_tiny': resnet_dcn.build_resdcn_tiny,
    'mmdet_resdcn': mmdet.build_mmdet_resdcn,
    'mmdet_resdcn_tiny': mmdet.build_mmdet_resdcn_tiny,
    'mmdet_resnet': mmdet.build_mmdet_resnet,
    'mmdet_resnet_tiny': mmdet.build_mmdet_resnet_tiny,
    'dla': dla_dcn.build_dla,
    'dla_tiny': dla_dcn.build_dla_tiny,
    'hourglass': centernet_hourglass.build_hourglass,
    'hourglass_tiny': centernet_hourglass.build_hourglass_tiny,
    'cornernet': cornernet.build_cornernet,
    'cornernet_tiny': cornernet.build_cornernet_tiny,
}

# config.model keys that build_model reads for every arch (not passed on as options).
GENERAL_KEYS = ('arch', 'heads', 'num_classes', 'dtype', 'down_ratio')
# Every model here predicts at stride 4 (official CenterNet / CornerNet).
DOWN_RATIO = 4


def options(arch: str) -> tuple[str, ...]:
  """The config.model options ``arch`` honours: its builder's keywords besides heads and dtype."""
  if arch not in MODELS:
    raise ValueError(f'unknown config.model.arch {arch!r}; known: {sorted(MODELS)}')
  params = inspect.signature(MODELS[arch]).parameters
  return tuple(k for k in params if k not in ('heads', 'dtype'))


@functools.cache
def _option_defaults() -> dict[str, Any]:
  """config.model of the base config: what 'not set' means for every option."""
  from centernet_jax import config_lib  # config_lib imports the task registry, which imports us

  return dict(config_lib.base_config().model.to_dict())


def check_heads(heads: Any) -> tuple[tuple[str, int], ...]:
  """``config.model.heads`` as a tuple of (name, channels) pairs (JSON lists accepted).

  Raises:
    ValueError: naming config.model.heads (and num_classes) when it is empty or malformed.
  """
  if not heads:
    raise ValueError(
        'config.model.heads is empty: the heads follow config.model.num_classes, which is not '
        'known yet (-1). Resolve the config first (tasks.resolve_config(config, num_classes)) '
        'or set config.model.num_classes and config.model.heads')
  out = []
  for head in heads:
    if (len(head) != 2 or not isinstance(head[0], str) or isinstance(head[1], bool)
        or not isinstance(head[1], int)):
      raise ValueError(f'config.model.heads must hold (name, channels) pairs, got {head!r}')
    if head[1] <= 0:
      raise ValueError(f'config.model.heads: head {head[0]!r} has {head[1]} channels; every head '
                       'needs > 0 (is config.model.num_classes set?)')
    out.append((head[0], int(head[1])))
  names = [name for name, _ in out]
  if len(set(names)) != len(names):
    raise ValueError(f'config.model.heads names a head twice: {names}')
  return tuple(out)


def build_model(model_cfg: Mapping[str, Any]) -> nn.Module:
  """Builds the model ``config.model`` describes.

  Args:
    model_cfg: ``config.model`` (a ConfigDict or a plain mapping; absent keys take the base
      config's defaults). General keys: arch (a key of MODELS), heads (((name, channels), ...),
      non-empty), dtype ('float32' | 'bfloat16': compute dtype, params stay float32),
      down_ratio (must be 4), num_classes (not read: the heads carry it). Options, each taken
      only by the archs whose builder names it (``options(arch)``): depth, head_conv,
      upsample ('subpixel' | 'conv_transpose'), deconv_init ('normal' | 'bilinear'),
      head_init ('msra' | 'fill_fc' | 'dla'), neck_skips.

  Returns:
    An unbound flax module.

  Raises:
    ValueError: unknown arch or key, empty or bad heads, down_ratio != 4, or an option the arch
      does not take set away from its default (naming the key and the arch).
  """
  defaults = _option_defaults()
  cfg = {**defaults, **{k: model_cfg[k] for k in model_cfg.keys()}}
  arch = cfg['arch']
  taken = options(arch)
  unknown = sorted(set(cfg) - set(defaults) - set(GENERAL_KEYS))
  if unknown:
    raise ValueError(f'unknown config.model keys {unknown}; known: {sorted(defaults)}')
  for key in sorted(set(cfg) - set(GENERAL_KEYS) - set(taken)):
    if key in defaults and cfg[key] != defaults[key]:
      raise ValueError(
          f'config.model.{key}={cfg[key]!r}: arch {arch!r} does not take {key} (it takes '
          f'{", ".join(taken) or "no options"}); leave it at its default {defaults[key]!r}')
  heads = check_heads(cfg.get('heads'))
  if cfg['down_ratio'] != DOWN_RATIO:
    raise ValueError(f'config.model.down_ratio must be {DOWN_RATIO} (every model here predicts '
                     f'at stride 4), got {cfg["down_ratio"]}')
  return MODELS[arch](heads=heads, dtype=layers.resolve_dtype(cfg['dtype']),
                      **{k: cfg[k] for k in taken})


@functools.lru_cache(maxsize=64)
def output_hw(model: nn.Module, height: int, width: int) -> tuple[int, int]:
  """The output-map size of ``model`` for an H x W input (traced with eval_shape, cached).

  The one place that answers it: every model predicts at stride 4, but an input that is not a
  multiple of 32 rounds differently per architecture (hourglass: ceil(H / 4)), and some sizes
  are rejected outright (hourglass needs ceil(H / 4) divisible by 2**n).

  Args:
    model: an unbound module from :func:`build_model` (modules are hashable: the cache key).
    height, width: input size in pixels.

  Returns:
    (h, w) of the first head of the last stack.
  """
  images = jax.ShapeDtypeStruct((1, int(height), int(width), 3), jnp.float32)
  out, _ = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x, train=False), images)
  first = next(iter(out[-1].values()))
  return int(first.shape[1]), int(first.shape[2])


def train_output_hw(model: nn.Module, height: int, width: int, down_ratio: int
                    ) -> tuple[int, int]:
  """:func:`output_hw` of a training input, which must be exactly ``down_ratio`` x the map.

  Targets are drawn at input / ``down_ratio``; an input the network does not divide exactly
  would put them off the map's pixels, so every task's train step checks it here.

  Raises:
    ValueError: naming the sizes and ``config.model.down_ratio``.
  """
  out_hw = output_hw(model, height, width)
  if (out_hw[0] * down_ratio, out_hw[1] * down_ratio) != (height, width):
    raise ValueError(
        f'a {height}x{width} input gives a {out_hw[0]}x{out_hw[1]} output map, not the input '
        f'/ config.model.down_ratio={down_ratio}: train on sizes the network divides exactly')
  return out_hw


__all__ = ['DOWN_RATIO', 'GENERAL_KEYS', 'MODELS', 'build_model', 'check_heads', 'options',
           'output_hw',
           'train_output_hw']
