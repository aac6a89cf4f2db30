"""CenterNet and CornerNet models (flax.linen) and the registry that builds them from config.model.

``MODELS[arch](**kwargs)`` returns a module with
``__call__(images [B, H, W, 3], train: bool) -> [ {'hm': [B, h, w, C], 'wh': ..., 'reg': ...} ]``
(one dict per stack, float32). Variables: 'params' (float32) and 'batch_stats'.

CenterNet (ctdet) archs: resnet, resdcn, dla (one stack) and hourglass (Hourglass-104, two
stacks), each with a ``*_tiny`` variant. CornerNet archs (names starting with 'cornernet', see
``tasks.task_of``): cornernet (Hourglass-104) and cornernet_tiny; their per-stack dicts hold
tl_heat, br_heat (C), tl_tag, br_tag (1), tl_regr, br_regr (2).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

from centernet_jax.models import centernet, cornernet, dla, hourglass, layers, resnet, resnet_dcn


def _resnet_centernet(*, depth: int, **kwargs) -> nn.Module:
  """Official msra_resnet CenterNet (res_18, res_101, ...): 3 up-convs of 256."""
  return centernet.CenterNet(backbone=resnet.resnet(depth, dtype=kwargs['dtype']),
                             neck_filters=(256, 256, 256), **kwargs)


def _resnet_tiny_centernet(*, depth: int, **kwargs) -> nn.Module:
  """A small (~10^4-10^5 parameter) CenterNet for tests and smoke runs (``depth`` is ignored)."""
  del depth
  return centernet.CenterNet(backbone=resnet.TinyResNet(dtype=kwargs['dtype']),
                             neck_filters=(16, 16, 16), **kwargs)


MODELS: dict[str, Callable[..., nn.Module]] = {
    'resnet': _resnet_centernet,
    'resnet_tiny': _resnet_tiny_centernet,
    'dla': dla.build_centernet,
    'dla_tiny': dla.build_tiny_centernet,
    'resdcn': resnet_dcn.build_centernet,
    'resdcn_tiny': resnet_dcn.build_tiny_centernet,
    # mmdetection CenterNet (CTResNetNeck + CenterNetHead), for converted mmdet weights.
    'mmdet_resdcn': functools.partial(resnet_dcn.build_mmdet_centernet, dcn=True),
    'mmdet_resnet': functools.partial(resnet_dcn.build_mmdet_centernet, dcn=False),
    'mmdet_resdcn_tiny': functools.partial(resnet_dcn.build_mmdet_centernet, dcn=True, tiny=True),
    'mmdet_resnet_tiny': functools.partial(resnet_dcn.build_mmdet_centernet, dcn=False,
                                           tiny=True),
    # Hourglass-104 (CenterNet large_hourglass) and CornerNet, two stacks each.
    'hourglass': hourglass.build_centernet,
    'hourglass_tiny': hourglass.build_tiny_centernet,
    'cornernet': cornernet.build_cornernet,
    'cornernet_tiny': cornernet.build_tiny_cornernet,
}


def build_model(model_cfg: Mapping[str, Any]) -> nn.Module:
  """Builds the ctdet or CornerNet model described by ``config.model``.

  Args:
    model_cfg: keys arch (a key of MODELS), depth, head_conv, down_ratio (must be 4),
      num_classes (> 0; resolve -1 from the data set first), dtype ('float32' | 'bfloat16'),
      upsample ('subpixel' | 'conv_transpose'), deconv_init ('normal': official msra_resnet |
      'bilinear'), head_init ('msra': official msra_resnet | 'fill_fc': resnet_dcn / DLA),
      neck_skips (False: official; True adds lateral connections to the up-sampling neck).

  Returns:
    An unbound flax module; heads hm (num_classes), wh (2), reg (2), or for 'cornernet*' archs
    tl_heat, br_heat (num_classes), tl_tag, br_tag (1), tl_regr, br_regr (2). Hourglass and
    CornerNet models ignore depth, head_conv (their heads are as wide as the stack, 256),
    upsample, deconv_init, head_init and neck_skips.
  """
  arch = model_cfg['arch']
  if arch not in MODELS:
    raise ValueError(f'unknown model arch {arch!r}; known: {sorted(MODELS)}')
  if model_cfg['down_ratio'] != 4:
    raise ValueError(f'down_ratio must be 4 (official CenterNet), got {model_cfg["down_ratio"]}')
  num_classes = model_cfg['num_classes']
  if num_classes <= 0:
    raise ValueError(f'num_classes must be set (> 0), got {num_classes}')
  upsample = model_cfg['upsample']
  if upsample not in layers.UPSAMPLE_IMPLS:
    raise ValueError(f'unknown upsample {upsample!r}; known: {layers.UPSAMPLE_IMPLS}')
  if arch.startswith('cornernet'):
    heads = cornernet.corner_heads(num_classes)
  else:
    heads = (('hm', num_classes), ('wh', 2), ('reg', 2))
  return MODELS[arch](depth=model_cfg['depth'], heads=heads, head_conv=model_cfg['head_conv'],
                      dtype=layers.resolve_dtype(model_cfg['dtype']), upsample=upsample,
                      deconv_init=model_cfg.get('deconv_init', 'normal'),
                      head_init=model_cfg.get('head_init', 'msra'),
                      neck_skips=bool(model_cfg.get('neck_skips', False)))


__all__ = ['MODELS', 'build_model']
