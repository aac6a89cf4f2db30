"""Tests of the stacked hourglass, CenterNet-Hourglass and CornerNet models (hourglass.py,
centernet_hourglass.py, cornernet.py).

Full-size models (Hourglass-104) are checked through ``jax.eval_shape`` only: parameter names,
shapes and counts against the official state_dicts (through the name rules next to the models,
the converter's), and output shapes at 511 px. Output parity of the tiny variants with a PyTorch
re-statement of the official modules is tests/convert_test.py's.
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
from centernet_jax.models import build_model, centernet_hourglass, cornernet, hourglass, torch_names

DATA = pathlib.Path(__file__).parent / 'data'


def _model_cfg(arch, num_classes=80, **overrides):
  """config.model of ``arch``: the official depth and head width for the full-size models."""
  cfg = base_config().model
  cfg.arch = arch
  cfg.num_classes = num_classes
  cfg.heads = (cornernet.corner_heads(num_classes) if arch.startswith('cornernet') else
               (('hm', num_classes), ('wh', 2), ('reg', 2)))
  if not arch.endswith('_tiny'):
    cfg.depth, cfg.head_conv = 104, 256
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


_TORCH_NAMES = {'hourglass': centernet_hourglass.TORCH_NAMES, 'cornernet': cornernet.TORCH_NAMES}


def _official_to_ours(arch: str, key: str, shape):
  """(our variable path, our shape), by the name rules the converter uses, or None."""
  mapped = torch_names.to_variable(key, shape, _TORCH_NAMES[arch])
  return mapped and mapped[:2]


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
  expected = dict(filter(None, (_official_to_ours(arch, e['key'], e['shape'])
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
  """The heads follow config.model.heads and their hidden width config.model.head_conv."""
  model = build_model(_model_cfg(arch, 5, dtype='bfloat16', head_conv=7))
  assert model.dtype == jnp.bfloat16
  outputs, variables = _abstract_outputs_and_variables(model, (64, 64), batch=2)
  assert {x.dtype for x in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
  first_head = 'hm' if arch == 'hourglass_tiny' else 'tl_heats'
  assert variables['params'][first_head]['1']['0']['conv']['kernel'].shape == (3, 3, 16, 7)
  channels = ({'hm': 5, 'wh': 2, 'reg': 2} if arch == 'hourglass_tiny' else
              {'tl_heat': 5, 'br_heat': 5, 'tl_tag': 1, 'br_tag': 1, 'tl_regr': 2, 'br_regr': 2})
  assert dict(model.heads) == channels
  assert len(outputs) == hourglass.HOURGLASS_TINY.num_stacks == 2
  for out in outputs:
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
        k: ((2, 16, 16, c), jnp.float32) for k, c in channels.items()}


@pytest.mark.parametrize('arch,overrides,message', [
    ('hourglass', dict(depth=52), 'unknown Hourglass depth 52'),
    ('cornernet', dict(neck_skips=True), "neck_skips=True: arch 'cornernet' does not take"),
    ('hourglass', dict(upsample='conv_transpose'), "arch 'hourglass' does not take upsample"),
    ('hourglass_tiny', dict(depth=104), "arch 'hourglass_tiny' does not take depth"),
    ('cornernet_tiny', dict(head_init='fill_fc'), "'cornernet_tiny' does not take head_init"),
    ('hourglass_tiny', dict(head_conv=0), 'hourglass heads need a hidden 3x3 conv'),
    ('cornernet_tiny', dict(width=0), 'config.model.width must be an integer >= 1'),
    ('hourglass_tiny', dict(width=-1), 'config.model.width must be an integer >= 1'),
    ('cornernet', dict(width=2), "width=2: arch 'cornernet' does not take"),
    ('cornernet_tiny', dict(heads=(('hm', 3), ('wh', 2), ('reg', 2))),
     r"CornerNet needs the heads \(.*config.task='cornernet'"),
])
def test_options_the_hourglass_models_cannot_honour_are_errors(arch, overrides, message):
  with pytest.raises(ValueError, match=message):
    build_model(_model_cfg(arch, 3, **overrides))


@pytest.mark.parametrize('arch', ['hourglass_tiny', 'cornernet_tiny'])
@pytest.mark.parametrize('width', [2, 3])
def test_tiny_width_multiplies_every_channel_count(arch, width):
  """config.model.width scales the stem, every level, the stack outputs and the pool branches."""
  _, narrow = _abstract_outputs_and_variables(build_model(_model_cfg(arch, 4)), (64, 64))
  _, wide = _abstract_outputs_and_variables(build_model(_model_cfg(arch, 4, width=width)),
                                            (64, 64))
  flat = lambda v: {'/'.join(str(getattr(k, 'key', k)) for k in path): x.shape
                    for path, x in jax.tree_util.tree_flatten_with_path(v['params'])[0]}
  narrow, wide = flat(narrow), flat(wide)
  assert narrow.keys() == wide.keys()  # the same layers (checkpoint names unchanged)
  scaled = 0
  for name, shape in narrow.items():
    if name.endswith('kernel') and len(shape) == 4:
      (cin, cout), (wcin, wcout) = shape[2:], wide[name][2:]
      assert wcin in (cin, cin * width) and wcout in (cout, cout * width), name
      scaled += wcout == cout * width  # heads keep head_conv and the task's channels
  assert scaled > 20
  assert hourglass.tiny_spec(width).dims == tuple(d * width for d in
                                                  hourglass.HOURGLASS_TINY.dims)


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
# Tiny models in bfloat16. (Their float32 outputs equal a PyTorch copy of the official modules:
# tests/convert_test.py::test_converted_outputs_match_pytorch, hourglass_tiny and cornernet tiny.)


def _stand_in_variables(model, hw, seed=0):
  """Random variables of the model's shapes (no jitted init: it compiles slowly on a CPU)."""
  rng = np.random.default_rng(seed)
  abstract = _abstract_variables(model, hw)

  def fill(path, x):
    name = path[-1].key
    if name == 'var':
      return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    if name == 'scale':
      return rng.uniform(0.8, 1.2, x.shape).astype(np.float32)
    fan_in = int(np.prod(x.shape[:-1])) if x.ndim > 1 else 1
    return (rng.standard_normal(x.shape) / math.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.mark.parametrize('arch', ['hourglass_tiny', 'cornernet_tiny'])
def test_bfloat16_compute_keeps_float32_params_and_outputs(arch):
  m32 = build_model(_model_cfg(arch, 3))
  m16 = build_model(_model_cfg(arch, 3, dtype='bfloat16'))
  variables = _stand_in_variables(m32, (64, 64))
  images = np.random.default_rng(2).standard_normal((1, 64, 64, 3)).astype(np.float32)
  out32 = jax.jit(m32.apply, static_argnames='train')(variables, images, train=False)
  out16 = jax.jit(m16.apply, static_argnames='train')(variables, images, train=False)
  assert len(out16) == len(out32) == 2
  for o16, o32 in zip(out16, out32, strict=True):
    for name in o32:
      assert o16[name].dtype == jnp.float32
      assert bool(jnp.isfinite(o16[name]).all())
      scale = float(jnp.abs(o32[name]).max()) + 1e-6
      np.testing.assert_allclose(o16[name], o32[name], atol=0.1 * scale, err_msg=name)
