"""Tests of the DCN models (centernet_jax.models.dla, .dla_dcn, .resnet_dcn): parameter layout
and counts vs the official state_dicts, the options each takes, output shapes of the tiny
variants, and the depthwise up-convolution against a numpy oracle of PyTorch's ConvTranspose2d
definition."""

from __future__ import annotations

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centernet_jax import models
from centernet_jax.models import dla, dla_dcn, resnet_dcn, torch_names

HEADS = (('hm', 80), ('wh', 2), ('reg', 2))
# Official parameter names and shapes (copies of shared/reference/official_state_dicts).
DATA = pathlib.Path(__file__).parent / 'data'


def _official(arch: str) -> dict:
  return json.loads((DATA / f'official_{arch}.json').read_text())


def _abstract_variables(model, hw=(64, 64)):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *hw, 3)), train=False))


def _flat_shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(k.key for k in path): tuple(x.shape) for path, x in flat}


# The name rules next to each model (the converter's): which official key is which variable.
_TORCH_NAMES = {'dla_34': dla_dcn.TORCH_NAMES, 'resdcn_18': resnet_dcn.TORCH_NAMES}


def _official_to_ours(arch: str, key: str, shape: list[int]):
  mapped = torch_names.to_variable(key, shape, _TORCH_NAMES[arch])
  return mapped and mapped[:2]


_FULL = {'dla_34': lambda: dla_dcn.build_dla(depth=34, heads=HEADS, head_conv=256),
         'resdcn_18': lambda: resnet_dcn.build_resdcn(depth=18, heads=HEADS, head_conv=64)}


@pytest.mark.parametrize('arch,count', [('dla_34', 19_675_892), ('resdcn_18', 14_437_349)])
def test_param_count_matches_official(arch, count):
  official = _official(arch)
  listed = sum(math.prod(e['shape']) for e in official['state_dict']
               if not e['key'].endswith(('running_mean', 'running_var', 'num_batches_tracked'))
               and not e['key'].startswith('base.fc.'))
  assert listed == official['num_params_excluding_base_fc'] == count
  params = _abstract_variables(_FULL[arch]())['params']
  assert sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params)) == count


@pytest.mark.parametrize('arch', ['dla_34', 'resdcn_18'])
def test_variables_map_one_to_one_onto_official_state_dict(arch):
  official = _official(arch)
  expected = dict(filter(None, (_official_to_ours(arch, e['key'], e['shape'])
                                for e in official['state_dict'])))
  assert _flat_shapes(_abstract_variables(_FULL[arch]())) == expected


def test_dla34_feature_strides_and_channels():
  backbone = dla.DLA()
  x = jnp.zeros((1, 64, 96, 3))
  feats = jax.eval_shape(lambda: backbone.init_with_output(jax.random.key(0), x, train=False))[0]
  assert [f.shape for f in feats] == [
      (1, 64 // 2**i, 96 // 2**i, c) for i, c in enumerate((16, 32, 64, 128, 256, 512))]


def test_builders_reject_unknown_values():
  with pytest.raises(ValueError, match='unknown DLA depth 18'):
    dla_dcn.build_dla(depth=18, heads=HEADS)
  with pytest.raises(ValueError, match='config.model.deconv_init'):
    dla_dcn.build_dla(heads=HEADS, deconv_init='nearest')
  with pytest.raises(ValueError, match='config.model.head_init'):
    resnet_dcn.build_resdcn(heads=HEADS, head_init='xavier')
  with pytest.raises(ValueError, match='config.model.upsample'):
    resnet_dcn.build_resdcn_tiny(heads=HEADS, upsample='nearest')


@pytest.mark.parametrize('arch,key,value', [
    ('dla', 'upsample', 'conv_transpose'),  # bug: DLA used to drop it silently
    ('dla', 'neck_skips', True), ('dla_tiny', 'depth', 34), ('resdcn', 'neck_skips', True),
    ('resdcn_tiny', 'depth', 101), ('mmdet_resnet_tiny', 'neck_skips', True)])
def test_options_an_arch_cannot_honour_are_errors_naming_key_and_arch(arch, key, value):
  cfg = {'arch': arch, 'heads': HEADS, 'depth': 34 if arch == 'dla' else 18, key: value}
  with pytest.raises(ValueError, match=rf"config.model.{key}=.*arch '{arch}' does not take"):
    models.build_model(cfg)


# ----------------------------------------------------------------------------------------------
# Forward passes of the tiny variants on synthetic variables (initialisation compiles slowly).


def _synthetic_variables(model, hw):
  rng = np.random.default_rng(0)
  abstract = _abstract_variables(model, hw)
  params = jax.tree_util.tree_map(
      lambda x: 0.05 * rng.standard_normal(x.shape).astype(np.float32), abstract['params'])
  stats = jax.tree_util.tree_map(lambda x: np.ones(x.shape, np.float32), abstract['batch_stats'])
  return {'params': params, 'batch_stats': stats}


_TINY = {'dla': dla_dcn.build_dla_tiny, 'resdcn': resnet_dcn.build_resdcn_tiny}


@pytest.mark.parametrize('arch', sorted(_TINY))
@pytest.mark.parametrize('hw', [(64, 64), (96, 64)])
def test_tiny_output_shapes(arch, hw):
  model = _TINY[arch](heads=(('hm', 3), ('wh', 2), ('reg', 2)), head_conv=8)
  images = jax.random.normal(jax.random.key(1), (2, *hw, 3))
  outputs = jax.jit(model.apply, static_argnames='train')(
      _synthetic_variables(model, hw), images, train=False)
  h, w = hw[0] // 4, hw[1] // 4
  assert isinstance(outputs, list) and len(outputs) == 1
  assert {k: (v.shape, v.dtype) for k, v in outputs[0].items()} == {
      'hm': ((2, h, w, 3), jnp.float32), 'wh': ((2, h, w, 2), jnp.float32),
      'reg': ((2, h, w, 2), jnp.float32)}
  assert all(bool(jnp.isfinite(v).all()) for v in outputs[0].values())


def test_tiny_dla_train_step_updates_every_batch_stat_and_has_finite_grads():
  model = dla_dcn.build_dla_tiny(heads=(('hm', 3), ('wh', 2), ('reg', 2)), head_conv=8)
  variables = _synthetic_variables(model, (64, 64))
  images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))

  def loss(params):
    outs, updates = model.apply({**variables, 'params': params}, images, train=True,
                                mutable=['batch_stats'])
    return sum(jnp.sum(v**2) for v in outs[0].values()), updates

  (_, updates), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])
  before = jax.tree_util.tree_leaves(variables['batch_stats'])
  after = jax.tree_util.tree_leaves(updates['batch_stats'])
  # Every BN runs in train mode, including the official quirk's unused level3 'project'.
  assert len(before) == len(after) and all(not np.allclose(a, b) for a, b in zip(
      before, after, strict=True))
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree_util.tree_leaves(grads))
  offset = grads['dla_up']['ida_0']['proj_1']['conv']['conv_offset_mask']['kernel']
  assert float(jnp.abs(offset).max()) > 0  # gradients reach the DCN offsets


# ----------------------------------------------------------------------------------------------
# Depthwise ConvTranspose2d(C, C, 2f, stride f, padding f // 2, groups C).


def _numpy_depthwise_conv_transpose(x: np.ndarray, w: np.ndarray, f: int) -> np.ndarray:
  """From PyTorch's definition: out[o, c] += x[i, c] * w[c, 0, k], o = i * f - f // 2 + k.

  Args:
    x: [B, H, W, C]; w: PyTorch weight [C, 1, 2f, 2f].
  """
  b, h, wd, c = x.shape
  k, p = 2 * f, f // 2
  ho, wo = (h - 1) * f - 2 * p + k, (wd - 1) * f - 2 * p + k
  out = np.zeros((b, ho, wo, c), np.float64)
  for iy in range(h):
    for ix in range(wd):
      for ky in range(k):
        for kx in range(k):
          oy, ox = iy * f - p + ky, ix * f - p + kx
          if 0 <= oy < ho and 0 <= ox < wo:
            out[:, oy, ox] += x[:, iy, ix] * w[:, 0, ky, kx]
  return out


@pytest.mark.parametrize('factor', [2, 4])
@pytest.mark.parametrize('shape', [(2, 3, 5, 3), (1, 1, 1, 2)])
def test_depthwise_conv_transpose_matches_numpy_oracle(factor, shape):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(shape).astype(np.float32)
  k = 2 * factor
  w_torch = rng.standard_normal((shape[-1], 1, k, k)).astype(np.float32)
  kernel = w_torch.transpose(2, 3, 1, 0)  # documented layout: kernel[ky, kx, 0, c]
  got = dla_dcn.depthwise_conv_transpose(jnp.asarray(x), jnp.asarray(kernel), factor)
  assert got.shape == (shape[0], factor * shape[1], factor * shape[2], shape[-1])
  np.testing.assert_allclose(got, _numpy_depthwise_conv_transpose(x, w_torch, factor),
                             rtol=1e-5, atol=1e-5)


def test_depthwise_up_bilinear_init_fills_every_channel():
  x = jnp.ones((1, 3, 3, 5))
  kernel = dla_dcn.DepthwiseUp(2).init(jax.random.key(0), x)['params']['kernel']
  r = np.array([0.25, 0.75, 0.75, 0.25], np.float32)
  np.testing.assert_allclose(kernel, np.broadcast_to(np.outer(r, r)[:, :, None, None],
                                                     (4, 4, 1, 5)))
  # Bilinear up-sampling of a constant map is constant away from the border.
  y = dla_dcn.DepthwiseUp(2).apply({'params': {'kernel': kernel}}, x)
  np.testing.assert_allclose(y[0, 1:-1, 1:-1], 1.0, rtol=1e-6)


@pytest.mark.parametrize('arch', sorted(_TINY))
def test_jits_once_per_input_shape(arch):
  """Same shape: the compiled function is reused; a new keep_res shape compiles once more."""
  model = _TINY[arch](heads=(('hm', 3), ('wh', 2), ('reg', 2)), head_conv=8)
  variables = _synthetic_variables(model, (64, 64))
  traces = []

  def forward(v, x):
    traces.append(x.shape)
    return model.apply(v, x, train=False)

  fn = jax.jit(forward)
  for hw in [(64, 64), (64, 64), (64, 96), (64, 96), (64, 64)]:
    fn(variables, jnp.zeros((1, *hw, 3)))
  assert traces == [(1, 64, 64, 3), (1, 64, 96, 3)]
