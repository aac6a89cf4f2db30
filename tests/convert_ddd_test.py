"""Conversion of the official ddd (monocular 3D, KITTI) models and the ddd DLA-34 config.

The official ``ddd_3dop.pth`` / ``ddd_sub.pth`` are pose_dla_dcn (DLA-34) with the heads hm 3,
dep 1, rot 8, dim 3, wh 2, reg 2 (head_conv 256; docs/parity.md 4.13). A PyTorch copy of that
full-size network (tests/helpers/torch_models/, random weights) converts with the heads read from
the file in the official ddd order and KITTI's class table, and ``configs/ddd_dla34_kitti.py``'s
model section rebuilds it with the same raw outputs; the config's variables have the official
parameter count and its heads come out at stride 4."""

from __future__ import annotations

import functools
import json
import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from centernet_jax import checkpoint, convert, inference, tasks  # noqa: E402
from centernet_jax.data import kitti  # noqa: E402
from centernet_jax.models import build_model, dla  # noqa: E402
from centernet_jax.models import heads as heads_lib  # noqa: E402
from centernet_jax.models.heads import HM_BIAS_INIT  # noqa: E402
from centernet_jax.tasks import ddd  # noqa: E402
from tests.conftest import load_config  # noqa: E402
from tests.helpers.torch_models import dla as t_dla  # noqa: E402
from tests.helpers.torch_models.heads import ddd_heads  # noqa: E402
from tests.helpers.torch_models.randomize import randomize  # noqa: E402

torch.set_num_threads(1)  # the machine is shared; one thread is also the fastest here
DATA = pathlib.Path(__file__).parent / 'data'
DDD_HEADS = ddd_heads()  # official dict order: hm, dep, rot, dim, wh, reg
CTDET_HEADS = (('hm', 80), ('wh', 2), ('reg', 2))
PARITY_INPUT = (1, 96, 320)  # small, not square, a KITTI-like aspect (official 384 x 1280)


def _config():
  """configs/ddd_dla34_kitti.py with float32 compute (the parity is checked in float32)."""
  cfg = load_config('ddd_dla34_kitti')
  cfg.model.dtype = 'float32'
  return cfg


@functools.cache
def _torch_ddd_model():
  """The full-size official ddd DLA-34 with random weights (eval mode)."""
  return randomize(t_dla.DLASeg(*dla.DLA_SPECS[34], DDD_HEADS, 256), seed=0)


def _assert_close(ours, ref, rtol=1e-4):
  """Max abs error within rtol of the reference's max magnitude (float32)."""
  ours, ref = np.asarray(ours), np.asarray(ref)
  assert ours.shape == ref.shape
  scale = float(np.abs(ref).max())
  assert float(np.abs(ref).std()) > 1e-3 * scale  # not a constant map (a weak comparison)
  np.testing.assert_allclose(ours, ref, rtol=0, atol=rtol * scale)


def _apply(model, variables, x):
  """model.apply(variables, x, train=False), compiled without XLA's backend optimisations
  (faster to compile; the maths is the same)."""
  fn = jax.jit(functools.partial(model.apply, train=False))
  return fn.lower(variables, x).compile({'xla_backend_optimization_level': 0})(variables, x)


def _n_params(tree):
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _head_params(channels, cin=64, hidden=256):
  """Parameters of one official DLA head: Conv3x3(64 -> 256) + Conv1x1(256 -> out)."""
  return 9 * cin * hidden + hidden + hidden * channels + channels


def test_ddd_checkpoint_converts_to_the_configs_model_with_equal_outputs():
  module = _torch_ddd_model()
  sd = module.state_dict()
  read = convert.config_from_state_dict(sd, 'dla_34')  # what the converted checkpoint's meta holds
  cfg = tasks.resolve_config(_config(), 3)  # as inference.restore does
  assert read.heads == tuple(cfg.model.heads) == ddd.heads(3) == DDD_HEADS
  # A file listing its heads in another order reads the same (the official ddd order).
  assert convert.config_from_state_dict(dict(sorted(sd.items())), 'dla_34').heads == DDD_HEADS
  assert read.num_classes == cfg.model.num_classes == 3 and read.head_conv == 256
  checkpoint.check_meta(json.loads(json.dumps({'model': read.to_dict()})),
                        {'model': cfg.model.to_dict()}, 'dla_34')

  variables = convert.convert_state_dict(sd, 'dla_34')
  b, h, w = PARITY_INPUT
  x = np.random.default_rng(1).standard_normal((b, 3, h, w)).astype(np.float32)
  with torch.no_grad():
    ref = module(torch.from_numpy(x))
  ours = _apply(build_model(cfg.model), variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert len(ours) == len(ref) == 1
  assert set(ours[0]) == set(ref[0]) == set(dict(DDD_HEADS))
  for name, value in ref[0].items():
    assert value.shape[2:] == (h // 4, w // 4)
    _assert_close(ours[0][name], value.numpy().transpose(0, 2, 3, 1))


def test_command_line_conversion_restores_with_the_ddd_config(tmp_path):
  """`python -m centernet_jax.convert --format centernet --arch dla_34` on an official ddd file
  (DataParallel names, {'epoch', 'state_dict'}), no --class_names: heads from the file, KITTI's
  classes with the ids of the official KITTI conversion."""
  module = _torch_ddd_model()
  path = tmp_path / 'ddd_3dop.pth'
  torch.save({'epoch': 70, 'state_dict': {f'module.{k}': v for k, v in
                                          module.state_dict().items()}}, path)
  out = tmp_path / 'zoo'
  assert convert.main(['--format', 'centernet', '--arch', 'dla_34', '--input', str(path),
                       '--output', str(out)]) == 0
  cfg, _, restored, step, meta = inference.restore(_config(), str(out))
  assert step == 0 and cfg.task == 'ddd'
  assert meta['class_names'] == list(kitti.CLASS_NAMES) == ['Pedestrian', 'Car', 'Cyclist']
  assert meta['category_ids'] == [1, 2, 3]
  assert [tuple(h) for h in meta['model']['heads']] == list(DDD_HEADS) == list(cfg.model.heads)
  expected = convert.convert_state_dict(module.state_dict(), 'dla_34')
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_ddd_class_table_and_head_recognition():
  assert convert.is_ddd_model(DDD_HEADS) and not convert.is_ddd_model(CTDET_HEADS)
  assert not convert.is_ddd_model((('hm', 1), ('wh', 2), ('hps', 34)))
  assert convert.class_table(3, ddd=True) == (['Pedestrian', 'Car', 'Cyclist'], [1, 2, 3])
  assert convert.class_table(3, ['a', 'b', 'c'], ddd=True) == (['a', 'b', 'c'], [1, 2, 3])
  with pytest.raises(convert.ConversionError, match='give their names with --class_names'):
    convert.class_table(3)  # a three-class box model: no names to assume
  with pytest.raises(convert.ConversionError, match='give their names with --class_names'):
    convert.class_table(2, ddd=True)
  # Without the optional wh / reg heads (official --not_reg_bbox / --not_reg_offset).
  partial = (('reg', 2), ('dim', 3), ('hm', 3), ('rot', 8), ('dep', 1))
  assert convert.is_ddd_model(partial)


def test_configs_model_has_the_official_ddd_parameter_count_and_names():
  cfg = _config()
  model = build_model(cfg.model)  # the config as it is, no resolution needed
  variables = inference.abstract_variables(model, (128, 128))
  official = json.loads((DATA / 'official_dla_34.json').read_text())
  assert official['heads'] == dict(CTDET_HEADS) and official['head_conv'] == 256
  # The published ctdet count with its heads swapped for the ddd heads (formula above).
  expected = (official['num_params_excluding_base_fc']
              - sum(_head_params(c) for _, c in CTDET_HEADS)
              + sum(_head_params(c) for _, c in DDD_HEADS))
  assert _n_params(variables['params']) == expected

  with torch.device('meta'):  # the PyTorch copy's names map onto exactly these variables
    module = t_dla.DLASeg(*dla.DLA_SPECS[34], DDD_HEADS, 256)
  sd = module.state_dict()
  plan = convert.plan_conversion(sd, 'dla_34')
  assert sum(math.prod(sd[k].shape) for k, (path, _) in plan.items()
             if path[0] == 'params') == expected
  assert sum(p.numel() for n, p in module.named_parameters()
             if not n.startswith('base.fc.')) == expected


def test_configs_model_outputs_the_ddd_heads_at_stride_4():
  cfg = _config()
  model = build_model(cfg.model)
  h, w = inference.input_hw(cfg)  # the official 384 x 1280 canvas
  images = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
  out, _ = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x, train=False), images)
  assert len(out) == 1
  assert {n: v.shape for n, v in out[0].items()} == {
      n: (1, h // 4, w // 4, c) for n, c in DDD_HEADS}
  assert all(v.dtype == jnp.float32 for v in out[0].values())


def test_ddd_heads_start_at_the_official_init():
  """Official pose_dla_dcn init (docs/parity.md 4.13): the last conv of hm has bias -2.19, every
  conv of the other heads (dep, rot, dim, wh, reg) bias 0 (fill_fc_weights); the config's
  ``model.head_init`` on the head module the DLA model builds (tests/convert_pose_test.py checks
  the model's wiring of it)."""
  cfg = _config().model

  class Heads(nn.Module):
    @nn.compact
    def __call__(self, x):
      return {name: heads_lib.make_head(name, channels, cfg.head_conv, in_features=64,
                                        init_style=cfg.head_init)(x)
              for name, channels in DDD_HEADS}

  x = jnp.zeros((1, 4, 4, 64))  # DLA-34's 64 channels at stride 4
  everything = jax.jit(Heads().init)(jax.random.key(3), x)['params']
  for name, channels in DDD_HEADS:
    params = everything[name]
    assert params['2']['bias'].shape == (channels,)
    if name == 'hm':
      np.testing.assert_array_equal(params['2']['bias'],
                                    np.full(channels, HM_BIAS_INIT, np.float32))
      assert np.ptp(params['0']['bias']) > 0  # PyTorch's default init
    else:
      for conv in ('0', '2'):
        np.testing.assert_array_equal(params[conv]['bias'], 0.0)
