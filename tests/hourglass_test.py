"""Tests of the stacked hourglass, CenterNet-Hourglass and CornerNet models.

Full-size models (Hourglass-104) are checked through ``jax.eval_shape`` only: parameter names,
shapes and counts against the official state_dicts, and output shapes at 511 px. The tiny
variants run against a PyTorch re-statement of the official modules (CenterNet
``large_hourglass.py``, CornerNet ``models/CornerNet.py`` / ``kp.py``) with the same weights,
loaded through the official-key -> variable-path rule that the weight converter uses.
"""

from __future__ import annotations

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from centernet_jax.config_lib import base_config
from centernet_jax.models import build_model, hourglass

DATA = pathlib.Path(__file__).parent / 'data'


def _model_cfg(arch, num_classes=80, **overrides):
  cfg = base_config().model
  cfg.arch = arch
  cfg.num_classes = num_classes
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def _abstract_variables(model, hw):
  return _abstract_outputs_and_variables(model, hw)[1]


def _abstract_outputs_and_variables(model, hw, batch=1):
  """(outputs, variables) as shapes only: one trace, nothing allocated."""
  return jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((batch, *hw, 3)), train=False))


def _flat(tree) -> dict[tuple[str, ...], jax.Array]:
  return {tuple(k.key for k in path): x
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _official_to_ours(key: str, shape):
  """The naming rule of models/hourglass.py: official key -> (our variable path, our shape).

  One tree level per dotted name; conv weight (O, I, kh, kw) -> kernel (kh, kw, I, O); BN weight
  -> scale; running_mean/var -> batch_stats mean/var; num_batches_tracked is dropped.
  """
  *path, leaf = key.split('.')
  if leaf == 'num_batches_tracked':
    return None
  if leaf in ('running_mean', 'running_var'):
    return ('batch_stats', *path, leaf[len('running_'):]), tuple(shape)
  if leaf == 'bias':
    return ('params', *path, 'bias'), tuple(shape)
  if len(shape) == 1:
    return ('params', *path, 'scale'), tuple(shape)
  cout, cin, kh, kw = shape
  return ('params', *path, 'kernel'), (kh, kw, cin, cout)


# ----------------------------------------------------------------------------------------------
# Full-size models: names, shapes, counts (no allocation).


@pytest.mark.parametrize('arch,official,num_params', [
    ('hourglass', 'official_hourglass.json', 191_284_008),
    ('cornernet', 'official_cornernet_hg104.json', 201_035_212)])
def test_full_model_matches_official_state_dict(arch, official, num_params):
  official = json.loads((DATA / official).read_text())
  assert official['num_params'] == num_params
  model = build_model(_model_cfg(arch))
  outputs, variables = _abstract_outputs_and_variables(model, (511, 511))
  assert sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(variables['params'])) == (
      num_params)
  expected = dict(filter(None, (_official_to_ours(e['key'], e['shape'])
                                for e in official['state_dict'])))
  assert {k: x.shape for k, x in _flat(variables).items()} == expected
  assert len(outputs) == 2
  channels = ({'hm': 80, 'wh': 2, 'reg': 2} if arch == 'hourglass' else
              {'tl_heat': 80, 'br_heat': 80, 'tl_tag': 1, 'br_tag': 1, 'tl_regr': 2,
               'br_regr': 2})
  for out in outputs:
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
        k: ((1, 128, 128, c), jnp.float32) for k, c in channels.items()}


@pytest.mark.parametrize('arch,hw,match', [
    ('hourglass', (500, 512), 'height 500'),
    ('cornernet', (512, 520), 'width 520'),
    ('hourglass_tiny', (60, 64), r'ceil\(60 / 4\) = 15'),
])
def test_bad_input_size_is_rejected_with_a_clear_message(arch, hw, match):
  model = build_model(_model_cfg(arch, 3))
  with pytest.raises(ValueError, match=match):
    _abstract_variables(model, hw)


@pytest.mark.parametrize('arch', ['hourglass_tiny', 'cornernet_tiny'])
def test_tiny_output_shapes_and_stacks(arch):
  """build_model takes the ctdet config keys (head_conv, depth, ... are ignored)."""
  model = build_model(_model_cfg(arch, 5, dtype='bfloat16', head_conv=7, depth=0))
  assert model.dtype == jnp.bfloat16
  outputs, variables = _abstract_outputs_and_variables(model, (64, 64), batch=2)
  assert {x.dtype for x in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
  channels = ({'hm': 5, 'wh': 2, 'reg': 2} if arch == 'hourglass_tiny' else
              {'tl_heat': 5, 'br_heat': 5, 'tl_tag': 1, 'br_tag': 1, 'tl_regr': 2, 'br_regr': 2})
  assert dict(model.heads) == channels
  assert len(outputs) == hourglass.HOURGLASS_TINY.num_stacks == 2
  for out in outputs:
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
        k: ((2, 16, 16, c), jnp.float32) for k, c in channels.items()}


def test_backbone_alone_returns_each_stacks_features():
  backbone = hourglass.Hourglass(hourglass.HOURGLASS_TINY)
  feats, variables = _abstract_outputs_and_variables(backbone, (64, 96))
  assert {'pre', 'kps', 'cnvs', 'inters', 'inters_', 'cnvs_'} == set(variables['params'])
  assert [f.shape for f in feats] == [(1, 16, 24, 16)] * 2


def test_head_init_heatmap_bias_and_pytorch_defaults():
  head = hourglass.KpHead(3, 32, True)
  hm = jax.jit(head.init)(jax.random.key(0), jnp.zeros((1, 4, 4, 16)))['params']
  np.testing.assert_array_equal(hm['1']['bias'], np.full(3, -2.19, np.float32))
  bound0, bound1 = 1 / math.sqrt(16 * 9), 1 / math.sqrt(32)  # PyTorch U(+-1/sqrt(fan_in))
  for leaf, bound in ((hm['0']['conv']['kernel'], bound0), (hm['0']['conv']['bias'], bound0),
                      (hm['1']['kernel'], bound1)):
    assert float(jnp.abs(leaf).max()) <= bound and float(jnp.std(leaf)) > bound / 4


# ----------------------------------------------------------------------------------------------
# Tiny models against a PyTorch statement of the official modules.


def _torch_reference(spec: hourglass.HourglassSpec, heads, pool_dim=None):
  """Official large_hourglass exkp / CornerNet kp, written from the published code."""
  import torch
  from torch import nn

  class Convolution(nn.Module):
    def __init__(self, k, inp, out, stride=1, with_bn=True):
      super().__init__()
      self.conv = nn.Conv2d(inp, out, k, padding=(k - 1) // 2, stride=stride, bias=not with_bn)
      self.bn = nn.BatchNorm2d(out) if with_bn else nn.Sequential()

    def forward(self, x):
      return torch.relu(self.bn(self.conv(x)))

  class Residual(nn.Module):
    def __init__(self, inp, out, stride=1):
      super().__init__()
      self.conv1 = nn.Conv2d(inp, out, 3, padding=1, stride=stride, bias=False)
      self.bn1 = nn.BatchNorm2d(out)
      self.conv2 = nn.Conv2d(out, out, 3, padding=1, bias=False)
      self.bn2 = nn.BatchNorm2d(out)
      self.skip = (nn.Sequential(nn.Conv2d(inp, out, 1, stride=stride, bias=False),
                                 nn.BatchNorm2d(out))
                   if stride != 1 or inp != out else nn.Sequential())

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))

  class Kp(nn.Module):
    def __init__(self, n, dims, modules):
      super().__init__()
      curr, nxt, mod = dims[0], dims[1], modules[0]
      self.up1 = nn.Sequential(*[Residual(curr, curr) for _ in range(mod)])
      self.low1 = nn.Sequential(Residual(curr, nxt, 2), *[Residual(nxt, nxt)
                                                          for _ in range(mod - 1)])
      self.low2 = (Kp(n - 1, dims[1:], modules[1:]) if n > 1 else
                   nn.Sequential(*[Residual(nxt, nxt) for _ in range(modules[1])]))
      self.low3 = nn.Sequential(*[Residual(nxt, nxt) for _ in range(mod - 1)],
                                Residual(nxt, curr))
      self.up2 = nn.Upsample(scale_factor=2)

    def forward(self, x):
      return self.up1(x) + self.up2(self.low3(self.low2(self.low1(x))))

  def cummax(x, dim, reverse):  # the C++ _cpools semantics, NCHW
    if reverse:
      return torch.flip(torch.cummax(torch.flip(x, [dim]), dim)[0], [dim])
    return torch.cummax(x, dim)[0]

  pools = {'top': lambda x: cummax(x, 2, True), 'left': lambda x: cummax(x, 3, True),
           'bottom': lambda x: cummax(x, 2, False), 'right': lambda x: cummax(x, 3, False)}

  class Pool(nn.Module):
    def __init__(self, dim, pool1, pool2):
      super().__init__()
      self.p1_conv1 = Convolution(3, dim, pool_dim)
      self.p2_conv1 = Convolution(3, dim, pool_dim)
      self.p_conv1 = nn.Conv2d(pool_dim, dim, 3, padding=1, bias=False)
      self.p_bn1 = nn.BatchNorm2d(dim)
      self.conv1 = nn.Conv2d(dim, dim, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(dim)
      self.conv2 = Convolution(3, dim, dim)
      self.pool1, self.pool2 = pools[pool1], pools[pool2]

    def forward(self, x):
      p = self.p_bn1(self.p_conv1(self.pool1(self.p1_conv1(x)) + self.pool2(self.p2_conv1(x))))
      return self.conv2(torch.relu(p + self.bn1(self.conv1(x))))

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      curr, cnv, ns = spec.dims[0], spec.cnv_dim, spec.num_stacks
      self.pre = nn.Sequential(Convolution(7, 3, spec.pre_dim, stride=2),
                               Residual(spec.pre_dim, curr, stride=2))
      self.kps = nn.ModuleList([Kp(spec.n, spec.dims, spec.modules) for _ in range(ns)])
      self.cnvs = nn.ModuleList([Convolution(3, curr, cnv) for _ in range(ns)])
      self.inters = nn.ModuleList([Residual(curr, curr) for _ in range(ns - 1)])
      self.inters_ = nn.ModuleList([nn.Sequential(nn.Conv2d(curr, curr, 1, bias=False),
                                                  nn.BatchNorm2d(curr)) for _ in range(ns - 1)])
      self.cnvs_ = nn.ModuleList([nn.Sequential(nn.Conv2d(cnv, curr, 1, bias=False),
                                                nn.BatchNorm2d(curr)) for _ in range(ns - 1)])
      if pool_dim:
        self.tl_cnvs = nn.ModuleList([Pool(cnv, 'top', 'left') for _ in range(ns)])
        self.br_cnvs = nn.ModuleList([Pool(cnv, 'bottom', 'right') for _ in range(ns)])
      self.heads = [name for name, _ in heads]
      for name, out in heads:
        module = nn.ModuleList([nn.Sequential(Convolution(3, cnv, curr, with_bn=False),
                                              nn.Conv2d(curr, out, 1)) for _ in range(ns)])
        setattr(self, name + 's' if pool_dim else name, module)

    def forward(self, image):
      inter, outs = self.pre(image), []
      for i in range(spec.num_stacks):
        cnv = self.cnvs[i](self.kps[i](inter))
        feats = ({'tl': self.tl_cnvs[i](cnv), 'br': self.br_cnvs[i](cnv)} if pool_dim else None)
        outs.append({
            name: getattr(self, name + 's' if pool_dim else name)[i](
                feats[name[:2]] if pool_dim else cnv) for name in self.heads})
        if i < spec.num_stacks - 1:
          inter = self.inters[i](torch.relu(self.inters_[i](inter) + self.cnvs_[i](cnv)))
      return outs

  torch.manual_seed(0)
  net = Net()
  with torch.no_grad():  # non-trivial BatchNorm affine parameters and running statistics
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 1.5)
  return net.eval()


def _torch_state_to_variables(state_dict):
  """The converter rule: path from official_to_ours, conv OIHW -> HWIO, vectors unchanged."""
  variables = {}
  for key, value in state_dict.items():
    mapped = _official_to_ours(key, tuple(value.shape))
    if mapped is None:
      continue
    path, shape = mapped
    value = value.numpy()
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)
    assert value.shape == shape, key
    node = variables
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = jnp.asarray(value)
  return variables


@pytest.fixture(scope='module')
def tiny_pairs():
  """{arch: (our model, variables from the torch reference, torch reference)}."""
  pairs = {}
  for arch in ('hourglass_tiny', 'cornernet_tiny'):
    model = build_model(_model_cfg(arch, 3))
    pool_dim = model.pool_dim if arch == 'cornernet_tiny' else None
    ref = _torch_reference(model.spec, model.heads, pool_dim)
    variables = _torch_state_to_variables(ref.state_dict())
    abstract = _abstract_variables(model, (64, 64))
    assert {k: x.shape for k, x in _flat(variables).items()} == {
        k: x.shape for k, x in _flat(abstract).items()}
    pairs[arch] = (model, variables, ref)
  return pairs


def _assert_close_to_scale(a, b, tol):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  scale = float(np.abs(b).max()) + 1e-6
  np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize('arch', ['hourglass_tiny', 'cornernet_tiny'])
def test_tiny_model_matches_torch_reference(tiny_pairs, arch):
  """Eval-mode outputs at an odd, non-square size (PyTorch conv arithmetic, 63 x 93 -> 16 x 24)."""
  import torch
  model, variables, ref = tiny_pairs[arch]
  images = np.random.default_rng(1).standard_normal((2, 63, 93, 3)).astype(np.float32)
  ours = jax.jit(model.apply, static_argnames='train')(variables, images, train=False)
  with torch.no_grad():
    theirs = ref(torch.from_numpy(images.transpose(0, 3, 1, 2)))
  assert len(ours) == len(theirs) == 2
  for o, t in zip(ours, theirs, strict=True):
    assert sorted(o) == sorted(t)
    for name in o:
      assert o[name].shape[:3] == (2, 16, 24) and o[name].dtype == jnp.float32  # ceil(/ 4)
      _assert_close_to_scale(o[name], t[name].numpy().transpose(0, 2, 3, 1), 1e-4)


def test_bfloat16_compute_keeps_float32_params_and_outputs(tiny_pairs):
  import torch
  _, variables, ref = tiny_pairs['hourglass_tiny']
  m16 = build_model(_model_cfg('hourglass_tiny', 3, dtype='bfloat16'))
  images = np.random.default_rng(2).standard_normal((1, 64, 64, 3)).astype(np.float32)
  out16 = jax.jit(m16.apply, static_argnames='train')(variables, images, train=False)
  with torch.no_grad():
    theirs = ref(torch.from_numpy(images.transpose(0, 3, 1, 2)))
  for o16, t in zip(out16, theirs, strict=True):
    for name in t:
      assert o16[name].dtype == jnp.float32
      assert bool(jnp.isfinite(o16[name]).all())
      _assert_close_to_scale(o16[name], t[name].numpy().transpose(0, 2, 3, 1), 0.1)
