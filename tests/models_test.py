"""Tests of centernet_jax.models: the registry (heads from config.model.heads, the options each
arch takes, output_hw), shapes, parameter layout vs the official model, init, dtypes, and the two
ConvTranspose formulations against a numpy oracle of PyTorch's definition."""

from __future__ import annotations

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centernet_jax import models
from centernet_jax.config_lib import base_config
from centernet_jax.models import (
    build_model,
    centernet,
    heads,
    layers,
    output_hw,
    resnet,
    torch_names,
)

# Official res_18 parameter names and shapes (copy of shared/reference/official_state_dicts).
OFFICIAL = pathlib.Path(__file__).parent / 'data' / 'official_res_18.json'


def _model_cfg(num_classes=80, **overrides):
  cfg = base_config().model
  cfg.num_classes = num_classes
  cfg.heads = (('hm', num_classes), ('wh', 2), ('reg', 2))
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def _tiny_cfg(**overrides):
  return _model_cfg(3, **{'arch': 'resnet_tiny', 'head_conv': 64, **overrides})


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def _abstract_variables(model, hw=(64, 64)):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *hw, 3)), train=False))


def _flat_shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(k.key for k in path): tuple(x.shape) for path, x in flat}


# ----------------------------------------------------------------------------------------------
# Parameter layout and counts.


def _official_to_ours(key: str, shape: list[int]):
  """Official res_18 key/shape -> ours, by the rules next to the model (the converter's)."""
  mapped = torch_names.to_variable(key, shape, centernet.TORCH_NAMES)
  return mapped and mapped[:2]


def test_res18_param_count_matches_official():
  official = json.loads(OFFICIAL.read_text())
  variables = _abstract_variables(build_model(_model_cfg()))
  assert _count(variables['params']) == official['num_params'] == 15_820_372


def test_res18_variables_map_one_to_one_onto_official_state_dict():
  official = json.loads(OFFICIAL.read_text())
  expected = dict(filter(None, (_official_to_ours(e['key'], e['shape'])
                                for e in official['state_dict'])))
  ours = _flat_shapes(_abstract_variables(build_model(_model_cfg())))
  assert ours == expected


# torchvision resnetN parameter counts minus the ImageNet classifier (fc).
@pytest.mark.parametrize('depth,count', [
    (18, 11_689_512 - 513_000), (34, 21_797_672 - 513_000), (50, 25_557_032 - 2_049_000),
    (101, 44_549_160 - 2_049_000), (152, 60_192_808 - 2_049_000)])
def test_backbone_param_counts_match_torchvision(depth, count):
  backbone = resnet.resnet(depth)
  variables = jax.eval_shape(
      lambda: backbone.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  assert _count(variables['params']) == count


def test_head_conv_zero_is_a_single_named_conv():
  shapes = _flat_shapes(_abstract_variables(build_model(_model_cfg(head_conv=0)))['params'])
  assert shapes[('hm', 'kernel')] == (1, 1, 256, 80)
  assert shapes[('wh', 'bias')] == (2,)
  assert not any(k[0] == 'reg' and k[1] in ('0', '2') for k in shapes)


# ----------------------------------------------------------------------------------------------
# Forward passes. Initialisation compiles slowly on XLA:CPU (~0.2 s per random draw), so the tiny
# model is initialised once and ResNet-18 runs on synthetic variables of the right shapes.


@pytest.fixture(scope='module')
def tiny():
  model = build_model(_tiny_cfg())
  images = jnp.zeros((1, 64, 64, 3))
  variables = jax.jit(model.init, static_argnames='train')(jax.random.key(0), images, train=False)
  return model, variables


def _synthetic_variables(model, hw=(64, 64)):
  rng = np.random.default_rng(0)
  abstract = _abstract_variables(model, hw)
  params = jax.tree_util.tree_map(
      lambda x: 0.05 * rng.standard_normal(x.shape).astype(np.float32), abstract['params'])
  stats = jax.tree_util.tree_map(lambda x: np.ones(x.shape, np.float32), abstract['batch_stats'])
  return {'params': params, 'batch_stats': stats}


def _check_outputs(outputs, batch, hw, num_classes):
  h, w = hw[0] // 4, hw[1] // 4
  assert isinstance(outputs, list) and len(outputs) == 1
  assert {k: (v.shape, v.dtype) for k, v in outputs[0].items()} == {
      'hm': ((batch, h, w, num_classes), jnp.float32),
      'wh': ((batch, h, w, 2), jnp.float32), 'reg': ((batch, h, w, 2), jnp.float32)}
  assert all(bool(jnp.isfinite(v).all()) for v in outputs[0].values())


@pytest.mark.parametrize('batch,hw', [(2, (64, 64)), (1, (64, 96))])
def test_tiny_output_shapes(tiny, batch, hw):
  model, variables = tiny
  images = jax.random.normal(jax.random.key(1), (batch, *hw, 3))
  outputs = jax.jit(model.apply, static_argnames='train')(variables, images, train=False)
  _check_outputs(outputs, batch, hw, 3)


def test_res18_output_shapes():
  model = build_model(_model_cfg())
  images = jax.random.normal(jax.random.key(1), (1, 64, 64, 3))
  outputs = jax.jit(model.apply, static_argnames='train')(
      _synthetic_variables(model), images, train=False)
  _check_outputs(outputs, 1, (64, 64), 80)


def test_backbone_feature_strides():
  backbone = resnet.TinyResNet()
  x = jnp.zeros((1, 64, 96, 3))
  feats = jax.eval_shape(lambda: backbone.init_with_output(jax.random.key(0), x, train=False))[0]
  assert [f.shape for f in feats] == [(1, 16, 24, 8), (1, 8, 12, 16), (1, 4, 6, 32),
                                      (1, 2, 3, 64)]


def test_bfloat16_compute_keeps_float32_params_and_outputs(tiny):
  m32, variables = tiny
  m16 = build_model(_tiny_cfg(dtype='bfloat16'))
  abstract = _abstract_variables(m16)
  assert {x.dtype for x in jax.tree_util.tree_leaves(abstract)} == {jnp.dtype(jnp.float32)}
  assert jax.tree_util.tree_structure(abstract) == jax.tree_util.tree_structure(variables)
  images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  out16 = jax.jit(m16.apply, static_argnames='train')(variables, images, train=False)[0]
  out32 = jax.jit(m32.apply, static_argnames='train')(variables, images, train=False)[0]
  for name in ('hm', 'wh', 'reg'):
    assert out16[name].dtype == jnp.float32
    scale = float(jnp.abs(out32[name]).max()) + 1e-3
    np.testing.assert_allclose(out16[name], out32[name], atol=0.05 * scale)


def test_train_mode_updates_batch_stats(tiny):
  model, variables = tiny
  images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  apply = jax.jit(model.apply, static_argnames=('train', 'mutable'))
  _, updates = apply(variables, images, train=True, mutable=('batch_stats',))
  before = jax.tree_util.tree_leaves(variables['batch_stats'])
  after = jax.tree_util.tree_leaves(updates['batch_stats'])
  assert len(before) == len(after) == 2 * 15  # stem + 4 blocks x 2 + 3 projections + 3 neck BNs
  assert all(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_upsample_formulations_agree_on_the_whole_model(tiny):
  m_sub, variables = tiny
  m_ct = build_model(_tiny_cfg(upsample='conv_transpose'))
  assert _flat_shapes(_abstract_variables(m_ct)) == _flat_shapes(variables)
  images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  targets = jax.random.normal(jax.random.key(2), (2, 16, 16, 7))

  def loss(params, model):
    outs, _ = model.apply({**variables, 'params': params}, images, train=True,
                          mutable=['batch_stats'])
    return jnp.sum(jnp.concatenate(list(outs[0].values()), -1) * targets)

  grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  l_sub, g_sub = grad(variables['params'], m_sub)
  l_ct, g_ct = grad(variables['params'], m_ct)
  np.testing.assert_allclose(l_sub, l_ct, rtol=1e-5)
  jax.tree_util.tree_map(_assert_close_to_scale, g_sub, g_ct)


def _assert_close_to_scale(a, b, tol=1e-5):
  scale = float(np.abs(b).max()) + 1e-12
  np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale)


# ----------------------------------------------------------------------------------------------
# ConvTranspose2d(4, stride 2, padding 1).


def _numpy_conv_transpose(x: np.ndarray, w: np.ndarray, stride: int = 2, pad: int = 1):
  """PyTorch ConvTranspose2d from its definition: out[o] += x[i] * w[k], o = i*s - p + k.

  Args:
    x: [B, H, W, Cin]; w: PyTorch weight [Cin, Cout, k, k].
  """
  b, h, wd, _ = x.shape
  _, cout, k, _ = w.shape
  ho, wo = (h - 1) * stride - 2 * pad + k, (wd - 1) * stride - 2 * pad + k
  out = np.zeros((b, ho, wo, cout), np.float64)
  for iy in range(h):
    for ix in range(wd):
      for ky in range(k):
        for kx in range(k):
          oy, ox = iy * stride - pad + ky, ix * stride - pad + kx
          if 0 <= oy < ho and 0 <= ox < wo:
            out[:, oy, ox] += x[:, iy, ix] @ w[:, :, ky, kx]
  return out


@pytest.mark.parametrize('impl', layers.UPSAMPLE_IMPLS)
@pytest.mark.parametrize('shape', [(2, 5, 7, 3), (1, 1, 1, 2), (1, 4, 4, 6)])
def test_conv_transpose_matches_numpy_oracle(impl, shape):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(shape).astype(np.float32)
  w_torch = rng.standard_normal((shape[-1], 5, 4, 4)).astype(np.float32)  # (in, out, kh, kw)
  kernel = w_torch.transpose(2, 3, 0, 1)  # documented layout: kernel[ky, kx, ci, co]
  got = layers.conv_transpose_4x4_s2(jnp.asarray(x), jnp.asarray(kernel), impl)
  assert got.shape == (shape[0], 2 * shape[1], 2 * shape[2], 5)
  np.testing.assert_allclose(got, _numpy_conv_transpose(x, w_torch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('x_shape, k_shape', [
    ((2, 7, 6, 3), (2, 2, 3, 5)),   # the sub-pixel conv's 2x2
    ((1, 5, 9, 4), (3, 3, 4, 2)),
    ((3, 4, 4, 2), (1, 1, 2, 6)),
    ((1, 3, 8, 5), (3, 2, 5, 1)),   # non-square kernel, output 1 row
])
def test_valid_conv_tap_grad_matches_numpy_oracle_and_autodiff(x_shape, k_shape):
  rng = np.random.default_rng(sum(x_shape) * 31 + sum(k_shape))
  x = rng.standard_normal(x_shape).astype(np.float32)
  k = rng.standard_normal(k_shape).astype(np.float32)
  kh, kw = k_shape[:2]
  oh, ow = x_shape[1] - kh + 1, x_shape[2] - kw + 1
  g = rng.standard_normal((x_shape[0], oh, ow, k_shape[3])).astype(np.float32)
  # Oracle from the definition: y[n,p,q,o] = sum_{i,j,c} x[n,p+i,q+j,c] k[i,j,c,o], so
  # dL/dk[i,j,c,o] = sum_{n,p,q} x[n,p+i,q+j,c] g[n,p,q,o] and dL/dx scatters g through k.
  y_np = np.zeros(g.shape, np.float64)
  dk_np = np.zeros(k_shape, np.float64)
  dx_np = np.zeros(x_shape, np.float64)
  for i in range(kh):
    for j in range(kw):
      xs = x[:, i:i + oh, j:j + ow, :].astype(np.float64)
      y_np += xs @ k[i, j]
      dk_np[i, j] = np.einsum('npqc,npqo->co', xs, g)
      dx_np[:, i:i + oh, j:j + ow, :] += g @ k[i, j].T
  f = jax.jit(jax.value_and_grad(
      lambda x_, k_: jnp.sum(layers.valid_conv_tap_grad(x_, k_) * g), argnums=(0, 1)))
  (val, (dx, dk)) = f(jnp.asarray(x), jnp.asarray(k))
  np.testing.assert_allclose(val, np.sum(y_np * g), rtol=1e-4)
  np.testing.assert_allclose(dk, dk_np, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dx, dx_np, rtol=1e-4, atol=1e-4)
  # bfloat16: the kernel gradient accumulates in float32 and comes back in bfloat16.
  xb, kb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(k, jnp.bfloat16)
  dkb = jax.grad(lambda k_: jnp.sum(layers.valid_conv_tap_grad(xb, k_).astype(jnp.float32)
                                    * g))(kb)
  assert dkb.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(dkb, np.float32), dk_np, rtol=3e-2,
                             atol=3e-2 * np.abs(dk_np).max())


@pytest.mark.parametrize('x_shape, k_shape, strides, padding', [
    ((2, 9, 8, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1))),
    ((1, 9, 11, 2), (3, 3, 2, 3), (2, 2), ((1, 1), (1, 1))),   # stride 2, odd sizes
    ((2, 8, 8, 3), (7, 7, 3, 2), (2, 2), ((3, 3), (3, 3))),    # the ResNet stem
    ((1, 6, 7, 4), (1, 1, 4, 5), (2, 1), ((0, 0), (0, 0))),    # 1x1 downsample, uneven stride
    ((1, 5, 6, 2), (2, 3, 2, 2), (1, 2), ((0, 1), (2, 0))),    # uneven padding
])
def test_conv_matmul_grad_matches_numpy_oracle(x_shape, k_shape, strides, padding):
  rng = np.random.default_rng(sum(x_shape) * 7 + sum(k_shape) + 13 * strides[0])
  x = rng.standard_normal(x_shape).astype(np.float32)
  k = rng.standard_normal(k_shape).astype(np.float32)
  kh, kw = k_shape[:2]
  xp = np.pad(x.astype(np.float64), ((0, 0), padding[0], padding[1], (0, 0)))
  oh = (xp.shape[1] - kh) // strides[0] + 1
  ow = (xp.shape[2] - kw) // strides[1] + 1
  g = rng.standard_normal((x_shape[0], oh, ow, k_shape[3])).astype(np.float32)
  # y[n,p,q,o] = sum_{i,j,c} xp[n, s0 p + i, s1 q + j, c] k[i,j,c,o]
  y_np = np.zeros(g.shape)
  dk_np = np.zeros(k_shape)
  dxp = np.zeros(xp.shape)
  for i in range(kh):
    for j in range(kw):
      xs = xp[:, i:i + strides[0] * (oh - 1) + 1:strides[0],
              j:j + strides[1] * (ow - 1) + 1:strides[1], :]
      y_np += xs @ k[i, j]
      dk_np[i, j] = np.einsum('npqc,npqo->co', xs, g)
      dxp[:, i:i + strides[0] * (oh - 1) + 1:strides[0],
          j:j + strides[1] * (ow - 1) + 1:strides[1], :] += g @ k[i, j].T
  dx_np = dxp[:, padding[0][0]:padding[0][0] + x_shape[1], padding[1][0]:padding[1][0] + x_shape[2]]
  f = jax.jit(jax.value_and_grad(
      lambda x_, k_: jnp.sum(layers.conv_matmul_grad(x_, k_, strides, padding) * g),
      argnums=(0, 1)))
  val, (dx, dk) = f(jnp.asarray(x), jnp.asarray(k))
  np.testing.assert_allclose(val, np.sum(y_np * g), rtol=1e-4)
  np.testing.assert_allclose(dk, dk_np, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dx, dx_np, rtol=1e-4, atol=1e-4)


def test_conv_auto_uses_matmul_grad_above_the_size_and_changes_nothing(monkeypatch):
  """layers.conv: the same values and gradients whichever kernel gradient it takes."""
  m = layers.conv(6, 3, stride=2, use_bias=True)
  x = jax.random.normal(jax.random.key(0), (2, 12, 10, 5))
  v = m.init(jax.random.key(1), x)
  g = jax.random.normal(jax.random.key(2), (2, 6, 5, 6))
  calls = []
  real = layers.conv_matmul_grad

  def spy(*a):
    calls.append(a[2:])
    return real(*a)

  def grads():
    return jax.grad(lambda v_, x_: jnp.sum(m.apply(v_, x_) * g), argnums=(0, 1))(v, x)

  monkeypatch.setattr(layers, 'conv_matmul_grad', spy)
  ref = grads()  # 6 x 5 output pixels < MATMUL_GRAD_MIN_PIXELS: XLA's
  assert not calls
  monkeypatch.setattr(layers, 'MATMUL_GRAD_MIN_PIXELS', 30)
  got = grads()
  assert calls == [((2, 2), ((1, 1), (1, 1)))]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                         got, ref)


def test_upconv_formulations_same_params_values_and_gradients():
  x = jax.random.normal(jax.random.key(1), (2, 6, 5, 16))
  m_sub, m_ct = layers.UpConv(8, 'subpixel'), layers.UpConv(8, 'conv_transpose')
  v = m_sub.init(jax.random.key(0), x)
  jax.tree_util.tree_map(np.testing.assert_array_equal, v, m_ct.init(jax.random.key(0), x))
  v = {'params': {'kernel': jax.random.normal(jax.random.key(2), (4, 4, 16, 8))}}
  targets = jax.random.normal(jax.random.key(3), (2, 12, 10, 8))

  def loss(v, x, m):
    return jnp.sum(m.apply(v, x) * targets)

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
  (l_sub, g_sub), (l_ct, g_ct) = grad(v, x, m_sub), grad(v, x, m_ct)
  np.testing.assert_allclose(l_sub, l_ct, rtol=1e-5)
  jax.tree_util.tree_map(_assert_close_to_scale, g_sub, g_ct)


# ----------------------------------------------------------------------------------------------
# Initialisation.


def test_bilinear_kernel_and_fill_up_init():
  r = np.array([0.25, 0.75, 0.75, 0.25], np.float32)  # f = 2, c = 0.75
  np.testing.assert_allclose(layers.bilinear_kernel(4), np.outer(r, r))
  w = np.asarray(layers.fill_up_init(jax.random.key(0), (4, 4, 8, 8)))
  # Official fill_up_weights fills w[c, 0] for every input c: our output channel 0 only.
  np.testing.assert_allclose(w[:, :, :, 0], np.broadcast_to(np.outer(r, r)[:, :, None],
                                                            (4, 4, 8)))
  rest = w[:, :, :, 1:]
  assert np.abs(rest).max() <= 1 / math.sqrt(8 * 16) and rest.std() > 0.05  # torch default


def test_deconv_inits(tiny):
  x = jnp.zeros((1, 4, 4, 64))
  kernel = layers.UpConv(64).init(jax.random.key(0), x)['params']['kernel']
  assert abs(float(kernel.std()) - 0.001) < 5e-5  # official msra_resnet N(0, 0.001)
  params = tiny[1]['params']['deconv_layers']
  assert sorted(params) == ['0', '1', '3', '4', '6', '7']
  assert all(float(jnp.abs(params[i]['kernel']).max()) < 0.01 for i in ('0', '3', '6'))
  assert all(np.array_equal(params[i]['scale'], np.ones(16)) for i in ('1', '4', '7'))


def _init_head(name, num_outputs, head_conv, style, cin=64):
  head = heads.Head(num_outputs, head_conv, 'hm' in name, style)
  return head.init(jax.random.key(0), jnp.zeros((1, 4, 4, cin)))['params']


def test_head_init_msra_style():
  hm = _init_head('hm', 80, 256, 'msra')
  np.testing.assert_array_equal(hm['2']['bias'], np.full(80, -2.19, np.float32))
  assert float(jnp.abs(hm['2']['kernel']).max()) <= 1 / math.sqrt(256)  # torch default
  wh = _init_head('wh', 2, 256, 'msra')
  assert abs(float(wh['2']['kernel'].std()) - 0.001) < 1e-4
  np.testing.assert_array_equal(wh['2']['bias'], np.zeros(2))
  # The first conv is not touched by msra_resnet.init_weights: PyTorch default init.
  bound = 1 / math.sqrt(64 * 9)
  for p in (hm['0'], wh['0']):
    assert float(jnp.abs(p['kernel']).max()) <= bound and float(p['kernel'].std()) > bound / 3
    assert float(jnp.abs(p['bias']).max()) <= bound and float(jnp.abs(p['bias']).max()) > 0
  # Official quirk: a conv with as many outputs as the head is touched too.
  quirk = _init_head('wh', 8, 8, 'msra')
  np.testing.assert_array_equal(quirk['0']['bias'], np.zeros(8))


def test_head_init_fill_fc_style():
  wh = _init_head('wh', 2, 256, 'fill_fc')
  for p in (wh['0'], wh['2']):
    assert abs(float(p['kernel'].std()) - 0.001) < 1e-4
    np.testing.assert_array_equal(p['bias'], np.zeros_like(p['bias']))
  hm = _init_head('hm', 80, 256, 'fill_fc')
  np.testing.assert_array_equal(hm['2']['bias'], np.full(80, -2.19, np.float32))
  assert float(jnp.abs(hm['0']['bias']).max()) > 0


def test_model_head_init(tiny):
  params = tiny[1]['params']
  np.testing.assert_array_equal(params['hm']['2']['bias'], np.full(3, -2.19, np.float32))
  for name in ('wh', 'reg'):
    assert abs(float(params[name]['2']['kernel'].std()) - 0.001) < 2.5e-4
    np.testing.assert_array_equal(params[name]['2']['bias'], np.zeros(2))
    assert float(jnp.abs(params[name]['0']['bias']).max()) > 0  # PyTorch default, untouched


# ----------------------------------------------------------------------------------------------
# Config validation.


@pytest.mark.parametrize('overrides,message', [
    (dict(arch='vgg'), "unknown config.model.arch 'vgg'"),
    (dict(down_ratio=8), 'config.model.down_ratio must be 4'),
    (dict(heads=()), 'config.model.heads is empty.*num_classes'),
    (dict(heads=(('hm', -1), ('wh', 2))), "config.model.heads: head 'hm' has -1 channels"),
    (dict(heads=(('hm', 3), ('hm', 2))), 'names a head twice'),
    (dict(heads=(('hm',),)), 'pairs'),
    (dict(dtype='float64'), "unknown dtype 'float64'"),
    (dict(upsample='nearest'), "unknown config.model.upsample 'nearest'"),
    (dict(deconv_init='xavier'), "unknown config.model.deconv_init 'xavier'"),
    (dict(head_init='xavier'), "unknown config.model.head_init 'xavier'"),
    (dict(depth=20), 'unknown ResNet depth 20'),
    (dict(arch='resnet_tiny', depth=34), "config.model.depth=34: arch 'resnet_tiny' does not take"),
    (dict(pool='max'), r"unknown config.model keys \['pool'\]"),
])
def test_build_model_rejects_bad_configs(overrides, message):
  with pytest.raises(ValueError, match=message):
    build_model({**_model_cfg().to_dict(), **overrides})  # a dict: the ConfigDict is locked


def test_heads_come_from_the_config():
  """Any heads the config names (a task's, a pose model's); JSON lists (checkpoint meta) too."""
  model = build_model(_model_cfg(arch='resnet_tiny', heads=[['hm', 2], ['hps', 34]]))
  out = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))[0]
  assert {k: v.shape for k, v in out[0].items()} == {'hm': (1, 16, 16, 2), 'hps': (1, 16, 16, 34)}


def test_options_are_the_builders_keywords_and_config_keys():
  defaults = base_config().model
  for arch in models.MODELS:
    taken = models.options(arch)
    assert set(taken) <= set(defaults) - set(models.GENERAL_KEYS), arch
  assert models.options('resnet') == ('depth', 'head_conv', 'upsample', 'deconv_init',
                                      'head_init', 'neck_skips')
  assert models.options('dla') == ('depth', 'head_conv', 'deconv_init', 'head_init')
  assert models.options('hourglass') == ('depth', 'head_conv')
  assert models.options('cornernet_tiny') == models.options('hourglass_tiny') == ('head_conv',
                                                                              'width')


def _output_cases():
  cases = []
  for arch in models.MODELS:
    hourglass = arch.startswith(('hourglass', 'cornernet'))
    size = (128, 256) if hourglass and not arch.endswith('_tiny') else (64, 96)
    cases.append((arch, size))
  return cases + [('resnet_tiny', (70, 100)), ('hourglass_tiny', (61, 125))]


@pytest.mark.parametrize('arch,hw', _output_cases())
def test_output_hw_is_the_first_heads_size_for_every_arch(arch, hw):
  cfg = _model_cfg(3, arch=arch)
  if arch.startswith('cornernet'):
    cfg.heads = models.cornernet.corner_heads(3)
  if not arch.endswith('_tiny'):
    cfg.depth = {'dla': 34, 'hourglass': 104, 'cornernet': 104}.get(arch, 18)
  model = build_model(cfg)
  out = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((1, *hw, 3)), train=False))[0]
  assert {v.shape[1:3] for stack in out for v in stack.values()} == {output_hw(model, *hw)}
  if hw == (61, 125):  # hourglass rounds up: ceil(H / 4)
    assert output_hw(model, *hw) == (16, 32)


@pytest.mark.parametrize('arch,hw,ok', [('resnet_tiny', (64, 96), True),
                                         ('resnet_tiny', (70, 100), False),
                                         ('hourglass_tiny', (64, 128), True),
                                         ('hourglass_tiny', (61, 125), False)])
def test_train_output_hw_needs_an_exact_multiple_of_the_stride(arch, hw, ok):
  model = build_model(_model_cfg(3, arch=arch))
  if ok:
    assert models.train_output_hw(model, *hw, 4) == (hw[0] // 4, hw[1] // 4)
  else:
    with pytest.raises(ValueError, match=rf'{hw[0]}x{hw[1]} input gives a .*down_ratio=4'):
      models.train_output_hw(model, *hw, 4)


def test_output_hw_is_cached():
  model = build_model(_model_cfg(3, arch='resnet_tiny'))
  output_hw.cache_clear()
  assert output_hw(model, 64, 96) == (16, 24)
  assert output_hw(build_model(_model_cfg(3, arch='resnet_tiny')), 64, 96) == (16, 24)
  info = output_hw.cache_info()
  assert (info.hits, info.misses) == (1, 1)  # an equal module is the same key


def test_neck_skips_adds_lateral_connections():
  """``neck_skips`` (not official) adds 1x1 conv-BN laterals; the outputs keep their shapes."""
  cfg = {'arch': 'resnet_tiny', 'head_conv': 8, 'heads': (('hm', 3), ('wh', 2), ('reg', 2)),
         'neck_skips': True}  # the other keys take the base config's defaults
  model = build_model(cfg)
  x = jnp.zeros((1, 64, 64, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  neck = variables['params']['deconv_layers']
  assert {f'skip{i}' for i in range(3)} <= set(neck)
  assert {f'skip{i}_bn' for i in range(3)} <= set(neck)
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out[0]['hm'].shape == (1, 16, 16, 3)


def test_head_init_dla_style():
  """pose_dla_dcn's fill_fc_weights zeroes the biases of non-heatmap heads, keeps the weights."""
  wh = _init_head('wh', 2, 256, 'dla')
  bound0, bound2 = 1 / math.sqrt(64 * 9), 1 / math.sqrt(256)
  for p, bound in ((wh['0'], bound0), (wh['2'], bound2)):
    np.testing.assert_array_equal(p['bias'], np.zeros_like(p['bias']))
    assert float(jnp.abs(p['kernel']).max()) <= bound and float(p['kernel'].std()) > bound / 3
  hm = _init_head('hm', 80, 256, 'dla')
  np.testing.assert_array_equal(hm['2']['bias'], np.full(80, -2.19, np.float32))
  assert float(jnp.abs(hm['0']['bias']).max()) > 0
