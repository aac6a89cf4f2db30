"""mmdetection's CenterNet (ResNet + ``CTResNetNeck`` + ``CenterNetHead``) and its checkpoints.

The network is official resnet_dcn's (:class:`resnet_dcn.ResDCN`) except that the neck's 3x3
convs (mmcv ``ConvModule`` with BN) have no bias, and the no-DCN config uses a plain 3x3 conv::

    ResNet -> 3 x [conv 3x3 (DCNv2 when use_dcn, no bias) -> BN -> ReLU
                   -> ConvTranspose 4x4/2 -> BN -> ReLU]  (256, 128, 64)
           -> CenterNetHead: heatmap_head, wh_head, offset_head (feat 64)

Archs 'mmdet_resdcn' (use_dcn=True, mmdet's ``centernet_resnet18_dcnv2``), 'mmdet_resnet'
(use_dcn=False, ``centernet_resnet18``) and their ``*_tiny`` test variants.

mmdetection's CornerNet (``HourglassNet`` + ``CornerHead``) is official CornerNet under other
module names: it loads into arch 'cornernet'. The name rules of both (mmdet key -> the official
key, which is ours) are at the end of this file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp

from centernet_jax.models import cornernet, resnet, resnet_dcn
from centernet_jax.models.layers import Dtype
from centernet_jax.models.resnet_dcn import ResDCN, check_options
from centernet_jax.models.torch_names import TorchCheckpoint

_FILTERS = (256, 128, 64)
_TINY_FILTERS = (16, 16, 16)


def _build(backbone, filters, heads, dtype, head_conv, upsample, deconv_init, head_init,
           dcn: bool) -> ResDCN:
  check_options(upsample, deconv_init, head_init)
  return ResDCN(backbone, tuple(heads), head_conv, filters, upsample, deconv_init, head_init,
                dtype, neck_dcn=dcn, neck_bias=False)


def build_mmdet_resdcn(
    *, heads: Sequence[tuple[str, int]], dtype: Dtype = jnp.float32, depth: int = 18,
    head_conv: int = 64, upsample: str = 'subpixel', deconv_init: str = 'bilinear',
    head_init: str = 'fill_fc',
) -> ResDCN:
  """mmdetection CenterNet with DCNv2 neck convs (arch 'mmdet_resdcn').

  Args:
    heads: ((name, channels), ...).
    dtype: compute dtype.
    depth: ResNet depth (mmdetection ships 18).
    head_conv: CenterNetHead feat_channels (64).
    upsample: 'subpixel' or 'conv_transpose'.
    deconv_init: 'bilinear' or 'normal' (runtime only: mmdet's own init is not reproduced).
    head_init: 'fill_fc', 'msra' or 'dla' (likewise).
  """
  return _build(resnet.resnet(depth, dtype=dtype), _FILTERS, heads, dtype, head_conv, upsample,
                deconv_init, head_init, dcn=True)


def build_mmdet_resdcn_tiny(
    *, heads: Sequence[tuple[str, int]], dtype: Dtype = jnp.float32, head_conv: int = 64,
    upsample: str = 'subpixel', deconv_init: str = 'bilinear', head_init: str = 'fill_fc',
) -> ResDCN:
  """TinyResNet + a 16-channel mmdet DCN neck (arch 'mmdet_resdcn_tiny'), for tests."""
  return _build(resnet.TinyResNet(dtype=dtype), _TINY_FILTERS, heads, dtype, head_conv,
                upsample, deconv_init, head_init, dcn=True)


def build_mmdet_resnet(
    *, heads: Sequence[tuple[str, int]], dtype: Dtype = jnp.float32, depth: int = 18,
    head_conv: int = 64, upsample: str = 'subpixel', deconv_init: str = 'bilinear',
    head_init: str = 'fill_fc',
) -> ResDCN:
  """mmdetection CenterNet with plain 3x3 neck convs (arch 'mmdet_resnet'); args as above."""
  return _build(resnet.resnet(depth, dtype=dtype), _FILTERS, heads, dtype, head_conv, upsample,
                deconv_init, head_init, dcn=False)


def build_mmdet_resnet_tiny(
    *, heads: Sequence[tuple[str, int]], dtype: Dtype = jnp.float32, head_conv: int = 64,
    upsample: str = 'subpixel', deconv_init: str = 'bilinear', head_init: str = 'fill_fc',
) -> ResDCN:
  """TinyResNet + a 16-channel plain mmdet neck (arch 'mmdet_resnet_tiny'), for tests."""
  return _build(resnet.TinyResNet(dtype=dtype), _TINY_FILTERS, heads, dtype, head_conv,
                upsample, deconv_init, head_init, dcn=False)


# ----------------------------------------------------------------------------------------------
# PyTorch names. mmdetection's models are the official ones under other module names; each rule
# renames to ours (the official names) and the official family's rules do the rest.


def _centernet_name(key: str) -> str:
  """mmdet CenterNet key -> ours (official resnet_dcn names, backbone under 'backbone')."""
  parts = key.split('.')
  if parts[0] == 'backbone':
    return key  # torchvision names under 'backbone', as ours
  if parts[0] == 'neck' and parts[1] == 'deconv_layers':
    # deconv_layers is a list of ConvModules: 2i = 3x3 (DCN) conv, 2i + 1 = up-conv; each
    # with 'conv' and 'bn'. Official Sequential: 6i DCN, 6i + 1 BN, 6i + 3 up-conv, 6i + 4 BN.
    m, sub, rest = int(parts[2]), parts[3], parts[4:]
    offset = {'conv': 0, 'bn': 1}[sub] if m % 2 == 0 else {'conv': 3, 'bn': 4}[sub]
    rest = ['conv_offset_mask' if r == 'conv_offset' else r for r in rest]
    return '.'.join(['deconv_layers', str(6 * (m // 2) + offset), *rest])
  if parts[0] == 'bbox_head':
    head = {'heatmap_head': 'hm', 'wh_head': 'wh', 'offset_head': 'reg'}[parts[1]]
    return '.'.join([head, *parts[2:]])
  raise KeyError(key)


def _centernet_signature(keys: frozenset[str]) -> str | None:
  if any(k.startswith('neck.deconv_layers.') for k in keys):
    return (f'an mmdetection CenterNet ResNet-{resnet.torch_depth(keys)} checkpoint '
            '(--format mmdet)')
  return None


CENTERNET_NAMES = dataclasses.replace(resnet_dcn.TORCH_NAMES, rename=_centernet_name,
                                      signature=_centernet_signature)

# mmdet HourglassNet / CornerHead module -> official CornerNet module (ConvModule 'conv'/'bn'
# children become the official Sequential indices or names).
_CORNERNET_PREFIXES = (
    ('backbone.stem.0.', 'pre.0.'), ('backbone.stem.1.0.', 'pre.1.'),
    ('backbone.hourglass_modules.', 'kps.'), ('backbone.inters.', 'inters.'),
    ('backbone.out_convs.', 'cnvs.'),
)
_CONVMODULE_LISTS = {'backbone.conv1x1s': 'inters_', 'backbone.remap_convs': 'cnvs_'}
_POOL = {'direction1_conv': 'p1_conv1', 'direction2_conv': 'p2_conv1',
         'aftpool_conv.conv': 'p_conv1', 'aftpool_conv.bn': 'p_bn1', 'conv1.conv': 'conv1',
         'conv1.bn': 'bn1', 'conv2': 'conv2'}
_CORNER_HEADS = {'heat': 'heats', 'emb': 'tags', 'off': 'regrs'}


def _cornernet_name(key: str) -> str:
  """mmdet CornerNet (HourglassNet + CornerHead) key -> ours (official CornerNet names)."""
  parts = key.split('.')
  if parts[0] == 'backbone':
    if '.'.join(parts[:2]) in _CONVMODULE_LISTS:  # ConvModule(conv, bn) = Sequential(0, 1)
      index = {'conv': '0', 'bn': '1'}[parts[3]]
      return '.'.join([_CONVMODULE_LISTS['.'.join(parts[:2])], parts[2], index, *parts[4:]])
    for old, new in _CORNERNET_PREFIXES:
      if key.startswith(old):
        rest = ['skip' if p == 'downsample' else p for p in key[len(old):].split('.')]
        return new + '.'.join(rest)
  if parts[0] == 'bbox_head':
    corner, kind = parts[1].split('_')
    if kind == 'pool':
      tail = '.'.join(parts[3:])
      for old, new in _POOL.items():
        if tail.startswith(old + '.'):
          return f'{corner}_cnvs.{parts[2]}.{new}{tail[len(old):]}'
    elif kind in _CORNER_HEADS:  # Sequential(ConvModule 3x3 (bias), ConvModule 1x1)
      layer = parts[3] if parts[3] == '0' else '1'
      rest = parts[4:] if parts[3] == '0' else parts[5:]
      return '.'.join([f'{corner}_{_CORNER_HEADS[kind]}', parts[2], layer, *rest])
  raise KeyError(key)


def _cornernet_signature(keys: frozenset[str]) -> str | None:
  if any(k.startswith('bbox_head.tl_pool.') for k in keys):
    return 'an mmdetection CornerNet checkpoint (--format mmdet --arch cornernet_hg104)'
  return None


CORNERNET_NAMES = dataclasses.replace(cornernet.TORCH_NAMES, rename=_cornernet_name,
                                      signature=_cornernet_signature)

_OFFICIAL = (('head_conv', 64), ('deconv_init', 'bilinear'), ('head_init', 'fill_fc'))
# mmdetection model zoo: centernet_resnet18(_dcnv2)_140e_coco, cornernet_hourglass104_mstest.
TORCH_CHECKPOINTS = {
    'mmdet': {
        'resnet18_dcnv2': TorchCheckpoint('mmdet_resdcn', CENTERNET_NAMES,
                                          (('depth', 18), *_OFFICIAL)),
        'resnet18': TorchCheckpoint('mmdet_resnet', CENTERNET_NAMES, (('depth', 18), *_OFFICIAL)),
        'resnet_tiny_dcnv2': TorchCheckpoint('mmdet_resdcn_tiny', CENTERNET_NAMES, _OFFICIAL),
        'resnet_tiny': TorchCheckpoint('mmdet_resnet_tiny', CENTERNET_NAMES, _OFFICIAL),
        'cornernet_hg104': TorchCheckpoint('cornernet', CORNERNET_NAMES,
                                           (('depth', 104), ('head_conv', 256))),
        'cornernet_tiny': TorchCheckpoint('cornernet_tiny', CORNERNET_NAMES,
                                          (('head_conv', 16),)),
    },
}
