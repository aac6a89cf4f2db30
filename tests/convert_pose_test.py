"""Conversion of the official multi_pose (human pose) models and the COCO keypoint configs.

The official ``multi_pose_dla_*`` / ``multi_pose_hg_*`` checkpoints are pose_dla_dcn and
large_hourglass with the heads hm 1, wh 2, hps 34, reg 2, hm_hp 17, hp_offset 2. PyTorch copies of
those full-size networks (tests/helpers/torch_models/, random weights) convert with the heads read
from the file, and the configs' model sections rebuild them with the same raw outputs; the
configs' variables have the official parameter counts; a converted ctdet model initialises the
pose model (the official ``--load_model ctdet_coco_*.pth``)."""

from __future__ import annotations

import functools
import json
import logging
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from centernet_jax import checkpoint, convert, inference, tasks  # noqa: E402
from centernet_jax.models import build_model, dla  # noqa: E402
from centernet_jax.models.heads import HM_BIAS_INIT  # noqa: E402
from centernet_jax.tasks import multi_pose  # noqa: E402
from tests.conftest import load_config  # noqa: E402
from tests.helpers.torch_models import dla as t_dla  # noqa: E402
from tests.helpers.torch_models import hourglass as t_hourglass  # noqa: E402
from tests.helpers.torch_models.heads import multi_pose_heads  # noqa: E402
from tests.helpers.torch_models.randomize import randomize  # noqa: E402

torch.set_num_threads(1)  # the machine is shared; one thread is also the fastest here
DATA = pathlib.Path(__file__).parent / 'data'
POSE_HEADS = multi_pose_heads()  # official dict order: hm, wh, hps, reg, hm_hp, hp_offset
CTDET_HEADS = (('hm', 80), ('wh', 2), ('reg', 2))
_HG_104 = (5, 2, (256, 256, 384, 384, 384, 512), (2, 2, 2, 2, 2, 4))  # n, stacks, dims, modules

# arch -> (config file, official ctdet json, PyTorch module of the full-size network).
ARCHS = {
    'dla_34': ('multi_pose_dla34_coco', 'dla_34',
               lambda heads: t_dla.DLASeg(*dla.DLA_SPECS[34], heads, 256)),
    'hourglass': ('multi_pose_hg104_coco', 'hourglass',
                  lambda heads: t_hourglass.ExKp(*_HG_104, heads, pre_dim=128, cnv_dim=256)),
}
# Parity inputs: small, one not square (Hourglass-104 needs multiples of 128).
PARITY_INPUT = {'dla_34': (2, 64, 96), 'hourglass': (1, 128, 128)}


def _config(arch, schedule=None):
  """The pose config of ``arch`` with float32 compute (the parity is checked in float32)."""
  import importlib.util

  name = ARCHS[arch][0]
  path = pathlib.Path(__file__).parents[1] / 'configs' / f'{name}.py'
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config(schedule)
  cfg.model.dtype = 'float32'
  return cfg


@functools.cache
def _torch_pose_model(arch):
  """The full-size official pose network with random weights (eval mode)."""
  return randomize(ARCHS[arch][2](POSE_HEADS), seed=0)


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


def _head_params(arch, channels):
  """Parameters of one official head (all stacks): Conv3x3(cin -> 256) + Conv1x1(256 -> out)."""
  cin, hidden, stacks = {'dla_34': (64, 256, 1), 'hourglass': (256, 256, 2)}[arch]
  return stacks * (9 * cin * hidden + hidden + hidden * channels + channels)


# ----------------------------------------------------------------------------------------------
# Output parity with the PyTorch copies, through the configs' model sections.


@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_pose_checkpoint_converts_to_the_configs_model_with_equal_outputs(arch):
  module = _torch_pose_model(arch)
  sd = module.state_dict()
  read = convert.config_from_state_dict(sd, arch)  # what the converted checkpoint's meta holds
  cfg = tasks.resolve_config(_config(arch), 1)  # as inference.restore does
  assert read.heads == tuple(cfg.model.heads) == multi_pose.heads(1) == POSE_HEADS
  # A file listing its heads in another order (msra_resnet sorts them) reads the same.
  assert convert.config_from_state_dict(dict(sorted(sd.items())), arch).heads == POSE_HEADS
  assert read.num_classes == cfg.model.num_classes == 1
  checkpoint.check_meta(json.loads(json.dumps({'model': read.to_dict()})),
                        {'model': cfg.model.to_dict()}, arch)

  variables = convert.convert_state_dict(sd, arch)
  b, h, w = PARITY_INPUT[arch]
  x = np.random.default_rng(1).standard_normal((b, 3, h, w)).astype(np.float32)
  with torch.no_grad():
    ref = module(torch.from_numpy(x))
  ours = _apply(build_model(cfg.model), variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert len(ours) == len(ref) == (2 if arch == 'hourglass' else 1)
  for ours_stack, ref_stack in zip(ours, ref, strict=True):
    assert set(ours_stack) == set(ref_stack) == set(dict(POSE_HEADS))
    for name, value in ref_stack.items():
      _assert_close(ours_stack[name], value.numpy().transpose(0, 2, 3, 1))


def test_command_line_conversion_restores_with_the_pose_config(tmp_path):
  """`python -m centernet_jax.convert --format centernet --arch dla_34` on an official pose file
  (DataParallel names, {'epoch', 'state_dict'}): heads from the file, COCO's person class."""
  module = _torch_pose_model('dla_34')
  path = tmp_path / 'multi_pose_dla_3x.pth'
  torch.save({'epoch': 320, 'state_dict': {f'module.{k}': v for k, v in
                                           module.state_dict().items()}}, path)
  out = tmp_path / 'zoo'
  assert convert.main(['--format', 'centernet', '--arch', 'dla_34', '--input', str(path),
                       '--output', str(out)]) == 0
  cfg, _, restored, step, meta = inference.restore(_config('dla_34'), str(out))
  assert step == 0 and meta['class_names'] == ['person'] and meta['category_ids'] == [1]
  assert [tuple(h) for h in meta['model']['heads']] == list(POSE_HEADS) == list(cfg.model.heads)
  expected = convert.convert_state_dict(module.state_dict(), 'dla_34')
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_keypoint_class_table_and_other_class_counts():
  assert convert.class_table(1, keypoints=True) == (['person'], [1])
  assert convert.class_table(2, ['a', 'b'], keypoints=True) == (['a', 'b'], [1, 2])
  assert convert.is_keypoint_model(POSE_HEADS) and not convert.is_keypoint_model(CTDET_HEADS)
  with pytest.raises(convert.ConversionError, match='give their names with --class_names'):
    convert.class_table(1)  # a one-class box model: no name to assume
  with pytest.raises(convert.ConversionError, match='give their names with --class_names'):
    convert.class_table(3, keypoints=True)


# ----------------------------------------------------------------------------------------------
# Full size: parameter counts and head shapes of the configs' models (shapes only).


@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_configs_models_have_the_official_pose_parameter_counts(arch):
  cfg = _config(arch)
  model = build_model(cfg.model)  # the config as it is, no resolution needed
  variables = inference.abstract_variables(model, inference.input_hw(cfg))
  official = json.loads((DATA / f'official_{ARCHS[arch][1]}.json').read_text())
  assert official['heads'] == dict(CTDET_HEADS)
  ctdet_count = official.get('num_params_excluding_base_fc', official['num_params'])
  # The published ctdet count with its heads swapped for the pose heads (formula above).
  expected = (ctdet_count - sum(_head_params(arch, c) for _, c in CTDET_HEADS)
              + sum(_head_params(arch, c) for _, c in POSE_HEADS))
  assert _n_params(variables['params']) == expected

  with torch.device('meta'):  # the PyTorch copy's names map onto exactly these variables
    module = ARCHS[arch][2](POSE_HEADS)
  sd = module.state_dict()
  plan = convert.plan_conversion(sd, arch)
  assert sum(math.prod(sd[k].shape) for k, (path, _) in plan.items()
             if path[0] == 'params') == expected
  assert sum(p.numel() for n, p in module.named_parameters()
             if not n.startswith('base.fc.')) == expected


@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_configs_models_output_the_pose_heads_at_stride_4(arch):
  cfg = _config(arch)
  model = build_model(cfg.model)
  size = int(cfg.data.input_size)
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  out, _ = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x, train=False), images)
  assert len(out) == (2 if arch == 'hourglass' else 1)  # every hourglass stack is supervised
  for stack in out:
    assert {n: v.shape for n, v in stack.items()} == {
        n: (1, size // 4, size // 4, c) for n, c in POSE_HEADS}
    assert all(v.dtype == jnp.float32 for v in stack.values())


@pytest.mark.parametrize('arch,tiny', [('dla_34', 'dla_tiny'), ('hourglass', 'hourglass_tiny')])
def test_every_head_named_hm_starts_at_the_heatmap_prior(arch, tiny):
  """Official init: bias -2.19 on the last conv of hm and hm_hp (every head with 'hm' in its
  name), not on the regression heads (tiny variant of the same code, the config's options)."""
  cfg = _config(arch).model
  cfg.arch = tiny
  cfg.depth = 18  # base default: the tiny archs take no depth
  if arch == 'hourglass':
    cfg.head_conv = 16
  init = jax.jit(lambda x: build_model(cfg).init(jax.random.key(3), x, train=False))
  x = jnp.zeros((1, 64, 64, 3))
  params = init.lower(x).compile({'xla_backend_optimization_level': 0})(x)['params']
  for name, channels in POSE_HEADS:
    finals = ([params[name]['2']['bias']] if arch == 'dla_34' else
              [params[name][s]['1']['bias'] for s in ('0', '1')])
    for bias in finals:
      assert bias.shape == (channels,)
      if 'hm' in name:
        np.testing.assert_array_equal(bias, np.full(channels, HM_BIAS_INIT, np.float32))
      elif arch == 'dla_34':  # pose_dla_dcn fill_fc_weights: other heads' biases are 0
        np.testing.assert_array_equal(bias, np.zeros(channels, np.float32))
      else:  # large_hourglass: PyTorch's default init
        assert np.all(bias != HM_BIAS_INIT) and np.ptp(bias) > 0


# ----------------------------------------------------------------------------------------------
# config.init from the ctdet model (official --load_model ctdet_coco_dla_2x.pth / _hg.pth).


def test_ctdet_checkpoint_initialises_the_pose_model(tmp_path, caplog):
  official = json.loads((DATA / 'official_dla_34.json').read_text())
  rng = np.random.default_rng(0)
  sd = {e['key']: rng.standard_normal(e['shape']).astype(np.float32)
        for e in official['state_dict']}
  np.savez(tmp_path / 'ctdet_coco_dla_2x.npz', **sd)
  convert.convert_file(str(tmp_path / 'ctdet_coco_dla_2x.npz'), str(tmp_path / 'ctdet'), 'dla_34')
  converted = convert.convert_state_dict(sd, 'dla_34')

  cfg = _config('dla_34')
  abstract = inference.abstract_variables(build_model(cfg.model), (128, 128))
  target = jax.tree.map(lambda a: np.asarray(rng.standard_normal(a.shape), a.dtype), abstract)
  with caplog.at_level(logging.WARNING):
    step, variables = checkpoint.init_variables_from(str(tmp_path / 'ctdet'), target,
                                                     {'model': cfg.model.to_dict()})
  assert step == 0
  fresh = {('hm', '2', 'kernel'), ('hm', '2', 'bias')}  # 80 classes -> 1
  for col in ('params', 'batch_stats'):
    flat = {tuple(getattr(k, 'key', k) for k in path): v
            for path, v in jax.tree_util.tree_leaves_with_path(variables[col])}
    for path, value in flat.items():
      source = converted[col] if path[0] in ('backbone', 'dla_up', 'ida_up', 'wh', 'reg') or (
          path[0] == 'hm' and path not in fresh) else target[col]
      node = source
      for k in path:
        node = node[k]
      np.testing.assert_array_equal(np.asarray(value), node, err_msg='/'.join(path))
  assert 'params/hm/2/kernel (1, 1, 256, 80) -> (1, 1, 256, 1)' in caplog.text
  for head in ('hps', 'hm_hp', 'hp_offset'):
    assert f'params/{head} (4 arrays)' in caplog.text


def test_ctdet_hourglass_fits_the_pose_hourglass():
  """Every variable of the converted ctdet_coco_hg fits the pose model, the hm output convs
  only by their last axis (re-initialised by config.init); the pose heads are all new."""
  official = json.loads((DATA / 'official_hourglass.json').read_text())
  shapes = {e['key']: np.broadcast_to(np.float32(0), e['shape']) for e in official['state_dict']}
  plan = convert.plan_conversion(shapes, 'hourglass')
  ctdet = {path: tuple(np.transpose(shapes[k], perm).shape) if perm else shapes[k].shape
           for k, (path, perm) in plan.items()}
  cfg = _config('hourglass')
  abstract = inference.abstract_variables(build_model(cfg.model), inference.input_hw(cfg))
  pose = {(col, *(getattr(k, 'key', k) for k in path)): tuple(v.shape)
          for col in abstract for path, v in jax.tree_util.tree_leaves_with_path(abstract[col])}
  assert set(ctdet) <= set(pose)
  resized = {p for p in ctdet if ctdet[p] != pose[p]}
  assert resized == {('params', 'hm', s, '1', leaf) for s in '01' for leaf in ('kernel', 'bias')}
  assert all(ctdet[p][:-1] == pose[p][:-1] for p in resized)
  assert {p[1] for p in set(pose) - set(ctdet)} == {'hps', 'hm_hp', 'hp_offset'}


# ----------------------------------------------------------------------------------------------
# The configs: the official recipes.


@pytest.mark.parametrize('arch,schedule,batch,lr,epochs,steps', [
    ('dla_34', '1x', 128, 5e-4, 140, (90, 120)),
    ('dla_34', '3x', 128, 5e-4, 320, (270, 300)),
    ('hourglass', '1x', 24, 2.5e-4, 50, (40,)),
    ('hourglass', '3x', 24, 2.5e-4, 150, (130,)),
])
def test_configs_follow_the_official_recipes(arch, schedule, batch, lr, epochs, steps):
  cfg = _config(arch, f'schedule={schedule}')
  assert (cfg.train.batch_size, cfg.optim.lr, cfg.train.num_epochs) == (batch, lr, epochs)
  assert tuple(cfg.optim.lr_steps) == steps and cfg.optim.lr_steps_unit == 'epochs'
  assert cfg.task == 'multi_pose' and cfg.data.source == 'coco_json'
  assert (cfg.model.num_classes, cfg.data.num_joints, cfg.data.max_objs) == (1, 17, 32)
  assert cfg.eval.flip_test and cfg.data.eval_mode == 'keep_res'
  assert cfg.data.eval_pad == (127 if arch == 'hourglass' else 31)
  assert cfg.data.input_size == 512 and cfg.data.train_on_crowd
  with pytest.raises(ValueError, match="schedule must be '1x' or '3x'"):
    _config(arch, 'schedule=2x')


def test_configs_document_the_keypoint_data_and_the_ctdet_init():
  for arch, (name, *_) in ARCHS.items():
    text = (pathlib.Path(__file__).parents[1] / 'configs' / f'{name}.py').read_text()
    assert 'person_keypoints_train2017.json' in text and 'person_keypoints_val2017.json' in text
    assert '--config.init=' in text and f'--arch {arch}' in text
    assert load_config(name).task == 'multi_pose'
