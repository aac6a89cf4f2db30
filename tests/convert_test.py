"""Tests of centernet_jax.convert: converted PyTorch modules (written from the published
architectures, tests/helpers/torch_models/) give the same raw outputs as the originals, the
full-size official names map completely, the heads are read from the file, the Orbax round trip
restores in inference/predict and as config.init, and bad inputs get one clear message each."""

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

from centernet_jax import checkpoint, config_lib, convert, inference, tasks  # noqa: E402
from centernet_jax.models import build_model, dla, resnet  # noqa: E402
from tests.helpers.torch_models import centernet as t_centernet  # noqa: E402
from tests.helpers.torch_models import cornernet as t_cornernet  # noqa: E402
from tests.helpers.torch_models import dla as t_dla  # noqa: E402
from tests.helpers.torch_models import hourglass as t_hourglass  # noqa: E402
from tests.helpers.torch_models import mmdet as t_mmdet  # noqa: E402
from tests.helpers.torch_models import resnet as t_resnet  # noqa: E402
from tests.helpers.torch_models import resnet_dcn as t_resdcn  # noqa: E402
from tests.helpers.torch_models.randomize import randomize  # noqa: E402

torch.set_num_threads(1)  # the machine is shared; one thread is also the fastest for tiny nets
DATA = pathlib.Path(__file__).parent / 'data'
HEADS = (('hm', 3), ('wh', 2), ('reg', 2))
HEAD_CONV = 8
TINY = dict(width=8, filters=(16, 16, 16))
BB = t_resnet.BasicBlock
_HG_TINY = (3, 2, (16, 16, 24, 32), (1, 1, 1, 1))  # n, stacks, dims, modules (HOURGLASS_TINY)

# (format, arch) -> the PyTorch module of the same network (tiny widths, official structure).
FULL_MODELS = {
    ('centernet', 'res_tiny'): lambda: t_centernet.MSRAResNet(BB, (1, 1, 1, 1), HEADS, HEAD_CONV,
                                                              **TINY),
    ('centernet', 'resdcn_tiny'): lambda: t_resdcn.ResNetDCN(BB, (1, 1, 1, 1), HEADS, HEAD_CONV,
                                                             **TINY),
    ('centernet', 'dla_tiny'): lambda: t_dla.DLASeg(*dla.TINY_SPEC, HEADS, HEAD_CONV),
    ('mmdet', 'resnet_tiny_dcnv2'): lambda: t_mmdet.MMDetCenterNet(
        BB, (1, 1, 1, 1), 3, use_dcn=True, feat=HEAD_CONV, **TINY),
    ('mmdet', 'resnet_tiny'): lambda: t_mmdet.MMDetCenterNet(
        BB, (1, 1, 1, 1), 3, use_dcn=False, feat=HEAD_CONV, **TINY),
    ('centernet', 'hourglass_tiny'): lambda: t_hourglass.ExKp(*_HG_TINY, HEADS, pre_dim=8,
                                                              cnv_dim=16),
    ('cornernet', 'tiny'): lambda: t_cornernet.CornerNetKp(*_HG_TINY, 3, pre_dim=8, cnv_dim=16,
                                                           pool_dim=8),
    ('mmdet', 'cornernet_tiny'): lambda: t_mmdet.MMDetCornerNet(
        3, 2, (16, 16, 24, 32), (1, 1, 1, 1), 3, feat_channel=16, pool_channels=8),
}
SIZES = [(64, 64), (64, 96)]


def _images(hw, seed=1):
  return np.random.default_rng(seed).standard_normal((2, 3, *hw)).astype(np.float32)


def _nhwc(x):
  return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


def _assert_close(ours, ref, rtol=1e-4):
  """Max abs error within rtol of the reference's max magnitude (float32)."""
  ours, ref = np.asarray(ours), np.asarray(ref)
  assert ours.shape == ref.shape
  scale = float(np.abs(ref).max())
  assert float(np.abs(ref).std()) > 1e-3 * scale  # not a constant map (a weak comparison)
  np.testing.assert_allclose(ours, ref, rtol=0, atol=rtol * scale)


def _apply(module, variables, x, **kwargs):
  """module.apply(variables, x, train=False), compiled without XLA's backend optimisations
  (half the compile time of these small nets; the maths is the same)."""
  fn = jax.jit(functools.partial(module.apply, train=False, **kwargs))
  return fn.lower(variables, x).compile({'xla_backend_optimization_level': 0})(variables, x)


@functools.cache
def _converted(fmt, arch):
  """(torch module, our model, our variables) for one full architecture; the model config
  (heads, head_conv) is read from the state_dict."""
  module = randomize(FULL_MODELS[fmt, arch](), seed=0)
  variables = convert.convert_state_dict(module.state_dict(), arch, fmt)
  model = build_model(convert.config_from_state_dict(module.state_dict(), arch, fmt))
  return module, model, variables


# ----------------------------------------------------------------------------------------------
# Output parity with the PyTorch modules.


@pytest.mark.parametrize('hw', SIZES)
@pytest.mark.parametrize('fmt,arch', sorted(FULL_MODELS))
def test_converted_outputs_match_pytorch(fmt, arch, hw):
  module, model, variables = _converted(fmt, arch)
  x = _images(hw)
  with torch.no_grad():
    ref = module(torch.from_numpy(x))
  ours = _apply(model, variables, _nhwc(x))
  assert len(ours) == len(ref) == (2 if 'hourglass' in arch or 'cornernet' in fmt + arch else 1)
  for ours_stack, ref_stack in zip(ours, ref, strict=True):
    assert set(ours_stack) == set(ref_stack)
    for name, value in ref_stack.items():
      _assert_close(ours_stack[name], value.numpy().transpose(0, 2, 3, 1))


@pytest.mark.parametrize('hw', SIZES)
@pytest.mark.parametrize('fmt', ['torchvision', 'dla_imagenet'])
def test_converted_backbones_match_pytorch(fmt, hw):
  if fmt == 'torchvision':
    module = randomize(t_resnet.ResNet(BB, (1, 1, 1, 1), width=8), seed=2)
    ours_module = resnet.TinyResNet()
  else:
    module = randomize(t_dla.DLA(*dla.TINY_SPEC), seed=2)
    ours_module = dla.DLA(*dla.TINY_SPEC)
  arch = {'torchvision': 'resnet_tiny', 'dla_imagenet': 'dla_tiny'}[fmt]
  variables = convert.convert_state_dict(module.state_dict(), arch, fmt)
  assert set(variables['params']) == {'backbone'}  # the ImageNet classifier is dropped
  x = _images(hw, seed=3)
  with torch.no_grad():
    ref = module(torch.from_numpy(x))
  ref = [ref] if fmt == 'torchvision' else ref
  ours = _apply(ours_module, {col: tree['backbone'] for col, tree in variables.items()},
                _nhwc(x))
  ours = ours[-1:] if fmt == 'torchvision' else ours
  assert len(ours) == len(ref)
  for a, b in zip(ours, ref, strict=True):
    _assert_close(a, b.numpy().transpose(0, 2, 3, 1))


# ----------------------------------------------------------------------------------------------
# Full-size official names and shapes.


def _random_state_dict(entries, seed=0):
  rng = np.random.default_rng(seed)
  return {e['key']: rng.standard_normal(e['shape']).astype(np.float32) if e['shape'] else
          np.zeros((), np.float32) for e in entries}


def _shapes_only(entries):
  """Zero-stride arrays: the official shapes without the memory."""
  return {e['key']: np.broadcast_to(np.float32(0), e['shape']) for e in entries}


def _plan_params(plan, shapes):
  """Parameters (not BN statistics) the plan fills."""
  return sum(math.prod(shapes[k].shape) for k, (path, _) in plan.items()
             if path[0] == 'params')


@pytest.mark.parametrize('fmt,arch,json_name', [
    ('centernet', 'res_18', 'res_18'),
    ('centernet', 'resdcn_18', 'resdcn_18'),
    ('centernet', 'dla_34', 'dla_34'),
    ('cornernet', 'hg104', 'cornernet_hg104'),
])
def test_official_state_dicts_map_completely(fmt, arch, json_name):
  """Every official name maps, with the published parameter count (CenterNet's Hourglass has
  CornerNet's backbone names; its heads are covered by the tiny parity test)."""
  official = json.loads((DATA / f'official_{json_name}.json').read_text())
  shapes = _shapes_only(official['state_dict'])
  plan = convert.plan_conversion({f'module.{k}': v for k, v in shapes.items()}, arch, fmt)
  expected = official.get('num_params_excluding_base_fc', official['num_params'])
  assert _plan_params(plan, shapes) == expected


@pytest.mark.parametrize('fmt,arch,make', [
    ('mmdet', 'resnet18_dcnv2', lambda: t_mmdet.MMDetCenterNet(BB, (2, 2, 2, 2), 80,
                                                               use_dcn=True)),
    ('mmdet', 'resnet18', lambda: t_mmdet.MMDetCenterNet(BB, (2, 2, 2, 2), 80, use_dcn=False)),
    ('mmdet', 'cornernet_hg104', lambda: t_mmdet.MMDetCornerNet(
        5, 2, (256, 256, 384, 384, 384, 512), (2, 2, 2, 2, 2, 4), 80)),
    ('torchvision', 'resnet50', lambda: t_resnet.ResNet(t_resnet.Bottleneck, (3, 4, 6, 3))),
    ('dla_imagenet', 'dla34', lambda: t_dla.DLA(*dla.DLA_SPECS[34])),
])
def test_full_size_module_names_map_completely(fmt, arch, make):
  with torch.device('meta'):  # shapes only
    module = make()
  sd = module.state_dict()
  plan = convert.plan_conversion(sd, arch, fmt)
  n_torch = sum(p.numel() for name, p in module.named_parameters() if not name.startswith('fc.'))
  assert _plan_params(plan, sd) == n_torch
  if arch == 'cornernet_hg104':  # mmdet's CornerNet is the official one, renamed
    official = json.loads((DATA / 'official_cornernet_hg104.json').read_text())
    assert n_torch == official['num_params']


@pytest.mark.parametrize('fmt,arch,json_name,heads,head_conv', [
    ('centernet', 'res_18', 'res_18', (('hm', 80), ('wh', 2), ('reg', 2)), 64),
    ('centernet', 'dla_34', 'dla_34', (('hm', 80), ('wh', 2), ('reg', 2)), 256),
    ('centernet', 'hourglass', 'hourglass', (('hm', 80), ('wh', 2), ('reg', 2)), 256),
    ('cornernet', 'hg104', 'cornernet_hg104', (('tl_heat', 80), ('br_heat', 80), ('tl_tag', 1),
                                               ('br_tag', 1), ('tl_regr', 2), ('br_regr', 2)),
     256),
])
def test_model_config_reads_heads_from_official_state_dicts(fmt, arch, json_name, heads,
                                                            head_conv):
  """Heads and their width come from the file, in the configs' order (msra_resnet registers its
  heads sorted: hm, reg, wh)."""
  official = json.loads((DATA / f'official_{json_name}.json').read_text())
  cfg = convert.config_from_state_dict(_shapes_only(official['state_dict']), arch, fmt)
  assert (cfg.heads, cfg.head_conv, cfg.num_classes) == (heads, head_conv, 80)
  assert cfg.to_dict() == convert.model_config(arch, fmt).to_dict()  # the official defaults


def test_heads_of_different_widths_are_named():
  module = t_centernet.MSRAResNet(BB, (1, 1, 1, 1), HEADS, HEAD_CONV, **TINY)
  sd = {k: v.numpy() for k, v in module.state_dict().items()}
  sd['wh.0.weight'], sd['wh.0.bias'] = np.zeros((4, 16, 3, 3)), np.zeros(4)
  sd['wh.2.weight'] = np.zeros((2, 4, 1, 1))
  with pytest.raises(convert.ConversionError, match='different hidden widths'):
    convert.convert_state_dict(sd, 'res_tiny')


@pytest.mark.parametrize('fmt,arch', sorted((f, a) for f in convert.FORMATS
                                            for a in convert.FORMATS[f]))
def test_every_format_builds_its_model(fmt, arch):
  """The tables next to the models set only options their arch takes."""
  cfg = convert.model_config(arch, fmt)
  if convert.FORMATS[fmt][arch].backbone_only:
    assert (cfg.heads, cfg.num_classes) == ((), -1)
    cfg.heads = (('hm', 1),)
  assert build_model(cfg) is not None


def test_coco_checkpoint_converts_values_with_the_right_layouts():
  official = json.loads((DATA / 'official_res_18.json').read_text())
  sd = {'epoch': 140, 'state_dict': {f'module.{k}': v for k, v in _random_state_dict(
      official['state_dict']).items()}}  # as official CenterNet saves
  variables = convert.convert_state_dict(sd, 'res_18')
  w = sd['state_dict']
  np.testing.assert_array_equal(variables['params']['hm']['2']['kernel'][0, 0],
                                w['module.hm.2.weight'][:, :, 0, 0].T)  # OIHW -> HWIO
  np.testing.assert_array_equal(variables['params']['deconv_layers']['3']['kernel'],
                                w['module.deconv_layers.3.weight'].transpose(2, 3, 0, 1))
  np.testing.assert_array_equal(variables['batch_stats']['backbone']['bn1']['var'],
                                w['module.bn1.running_var'])


# The configs the README names for evaluating converted zoo weights restore their checkpoints.
ZOO_CONFIGS = [
    ('centernet', 'res_18', 'ctdet_resnet18_coco', None),
    ('centernet', 'res_101', 'ctdet_resnet101_coco', None),
    ('centernet', 'resdcn_18', 'ctdet_resdcn18_coco', None),
    ('centernet', 'resdcn_101', 'ctdet_resdcn101_coco', None),
    ('centernet', 'dla_34', 'ctdet_dla34_coco', 'schedule=2x'),
    ('centernet', 'hourglass', 'ctdet_hg104_coco', None),
    ('cornernet', 'hg104', 'cornernet_hg104_coco', None),
    ('mmdet', 'resnet18_dcnv2', 'mmdet_centernet_r18_coco', 'dcn=true'),
    ('mmdet', 'resnet18', 'mmdet_centernet_r18_coco', 'dcn=false'),
]


@pytest.mark.parametrize('fmt,arch,config_name,arg', ZOO_CONFIGS)
def test_zoo_configs_match_converted_meta(fmt, arch, config_name, arg):
  import importlib.util

  path = pathlib.Path(__file__).parents[1] / 'configs' / f'{config_name}.py'
  spec = importlib.util.spec_from_file_location(config_name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config(arg)
  cfg = tasks.resolve_config(cfg, 80)  # as inference.restore does with the checkpoint's classes
  saved = json.loads(json.dumps({'model': convert.model_config(arch, fmt).to_dict()}))  # meta
  checkpoint.check_meta(saved, {'model': cfg.model.to_dict()}, config_name)


# ----------------------------------------------------------------------------------------------
# Orbax round trip: evaluate / predict / config.init.


def _model_section(arch, fmt='centernet'):
  cfg = config_lib.base_config()
  cfg.model = convert.model_config(arch, fmt, num_classes=-1, head_conv=HEAD_CONV)
  return cfg


@pytest.fixture(scope='module')
def res_tiny_pth(tmp_path_factory):
  """A res_tiny checkpoint saved as official CenterNet saves (epoch + DataParallel names)."""
  module, *_ = _converted('centernet', 'res_tiny')
  path = tmp_path_factory.mktemp('pth') / 'model_last.pth'
  sd = {f'module.{k}': v for k, v in module.state_dict().items()}
  torch.save({'epoch': 1, 'state_dict': sd}, path)
  return path


def test_round_trip_through_orbax_restores_in_evaluate_and_predict(res_tiny_pth, tmp_path):
  from centernet_jax import predict

  out = tmp_path / 'converted'
  rc = convert.main(['--format', 'centernet', '--arch', 'res_tiny', '--input',
                     str(res_tiny_pth), '--output', str(out), '--class_names', 'a,b,c'])
  assert rc == 0
  _, model, variables = _converted('centernet', 'res_tiny')
  cfg, model2, restored, step, meta = inference.restore(_model_section('res_tiny'), str(out))
  assert step == 0 and cfg.model.num_classes == 3
  assert tuple(map(tuple, meta['model']['heads'])) == HEADS and cfg.model.heads == HEADS
  assert meta['class_names'] == ['a', 'b', 'c'] and meta['category_ids'] == [1, 2, 3]
  x = _nhwc(_images((64, 96)))
  for a, b in zip(jax.tree.leaves(_apply(model, variables, x)), jax.tree.leaves(
      _apply(model2, restored, x)), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # predict.Detector restores through inference.restore: the same variables, class table.
  detector = predict.Detector.from_checkpoint(_model_section('res_tiny'), str(out))
  assert detector.class_names == ['a', 'b', 'c'] and detector.category_ids == [1, 2, 3]
  for a, b in zip(jax.tree.leaves(detector._variables), jax.tree.leaves(variables), strict=True):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_coco_checkpoint_meta_has_coco_names_and_ids(tmp_path):
  heads = (('hm', 80), ('wh', 2), ('reg', 2))
  module = t_centernet.MSRAResNet(BB, (1, 1, 1, 1), heads, HEAD_CONV, **TINY)
  np.savez(tmp_path / 'coco.npz', **{k: v.numpy() for k, v in module.state_dict().items()})
  convert.convert_file(str(tmp_path / 'coco.npz'), str(tmp_path / 'out'), 'res_tiny')  # no torch
  meta = checkpoint.Checkpointer(str(tmp_path / 'out' / 'checkpoints'),
                                 read_only=True).restore_meta(0)
  assert len(meta['class_names']) == 80 and meta['class_names'][0] == 'person'
  assert meta['category_ids'][:3] == [1, 2, 3] and meta['category_ids'][-1] == 90
  expected = convert.model_config('res_tiny', num_classes=80, head_conv=HEAD_CONV).to_dict()
  assert meta['model'] == json.loads(json.dumps(expected))  # the heads read from the file
  assert meta['model']['heads'] == [['hm', 80], ['wh', 2], ['reg', 2]]


def _fresh_variables(model, seed=5):
  """Stand-ins for freshly initialised variables (model.init compiles slowly on CPU)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype),
                      inference.abstract_variables(model, (64, 64)))


def test_backbone_checkpoint_initialises_a_detector(tmp_path, caplog):
  module = randomize(t_resnet.ResNet(BB, (1, 1, 1, 1), width=8), seed=4)
  torch.save(module.state_dict(), tmp_path / 'resnet_tiny.pth')
  convert.convert_file(str(tmp_path / 'resnet_tiny.pth'), str(tmp_path / 'bb'), 'resnet_tiny',
                       'torchvision')
  converted = convert.convert_state_dict(module.state_dict(), 'resnet_tiny', 'torchvision')
  cfg = tasks.resolve_config(_model_section('res_tiny'), 3)
  target = _fresh_variables(build_model(cfg.model))
  with caplog.at_level(logging.INFO):
    step, variables = checkpoint.init_variables_from(str(tmp_path / 'bb'), target,
                                                     {'model': cfg.model.to_dict()})
  assert step == 0
  for col in ('params', 'batch_stats'):
    for a, b in zip(jax.tree.leaves(variables[col]['backbone']),
                    jax.tree.leaves(converted[col]['backbone']), strict=True):
      np.testing.assert_array_equal(np.asarray(a), b)
  for a, b in zip(jax.tree.leaves(variables['params']['hm']),
                  jax.tree.leaves(target['params']['hm']), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert 'not in the checkpoint' in caplog.text and 'params/deconv_layers' in caplog.text


def test_init_reinitialises_heads_of_another_class_count_and_rejects_other_archs(
    res_tiny_pth, tmp_path, caplog):
  convert.convert_file(str(res_tiny_pth), str(tmp_path / 'c3'), 'res_tiny',
                       class_names=['a', 'b', 'c'])
  cfg = tasks.resolve_config(_model_section('res_tiny'), 5)
  target = _fresh_variables(build_model(cfg.model))
  _, _, converted = _converted('centernet', 'res_tiny')
  with caplog.at_level(logging.INFO):
    _, variables = checkpoint.init_variables_from(str(tmp_path / 'c3'), target,
                                                  {'model': cfg.model.to_dict()})
  assert 'hm/2/kernel' in caplog.text and 'hm/2/bias' in caplog.text
  np.testing.assert_array_equal(variables['params']['hm']['2']['kernel'],
                                target['params']['hm']['2']['kernel'])
  np.testing.assert_array_equal(variables['params']['hm']['0']['kernel'],
                                converted['params']['hm']['0']['kernel'])
  np.testing.assert_array_equal(variables['params']['wh']['2']['kernel'],
                                converted['params']['wh']['2']['kernel'])

  other = tasks.resolve_config(_model_section('resdcn_tiny'), 3)
  with pytest.raises(checkpoint.ModelMismatchError, match='deconv_layers/0/kernel'):
    checkpoint.init_variables_from(str(tmp_path / 'c3'), _fresh_variables(
        build_model(other.model)), {'model': other.model.to_dict()})


# ----------------------------------------------------------------------------------------------
# Bad input: one clear message each.


def test_checkpoint_of_another_architecture_is_named():
  module, *_ = _converted('centernet', 'res_tiny')
  with pytest.raises(convert.ConversionError) as e:
    convert.convert_state_dict(module.state_dict(), 'dla_tiny')
  assert 'looks like a CenterNet msra_resnet checkpoint' in str(e.value)
  with pytest.raises(convert.ConversionError, match='looks like an ImageNet ResNet'):
    convert.convert_state_dict(t_resnet.ResNet(BB, (1, 1, 1, 1), width=8).state_dict(),
                               'res_tiny')


def test_missing_unexpected_and_mismatched_keys_listed_in_one_message():
  module, *_ = _converted('centernet', 'res_tiny')
  sd = dict(module.state_dict())
  del sd['layer2.0.bn1.running_var']
  sd['layer2.0.extra.weight'] = torch.zeros(3)
  sd['wh.0.weight'] = torch.zeros(8, 16, 1, 1)
  with pytest.raises(convert.ConversionError) as e:
    convert.convert_state_dict(sd, 'res_tiny', where='x.pth')
  message = str(e.value)
  assert message.startswith("x.pth does not match centernet architecture 'res_tiny'")
  assert '1 missing' in message and 'batch_stats/backbone/layer2/0/bn1/var' in message
  assert '1 unexpected' in message and 'layer2.0.extra.weight' in message
  assert '1 shape mismatches' in message and 'wh.0.weight (8, 16, 1, 1)' in message


def test_truncated_and_missing_files(res_tiny_pth, tmp_path, capsys):
  data = res_tiny_pth.read_bytes()
  bad = tmp_path / 'truncated.pth'
  bad.write_bytes(data[:len(data) // 2])
  with pytest.raises(convert.ConversionError, match='truncated or not a .pth file'):
    convert.load_state_dict(str(bad))
  rc = convert.main(['--format', 'centernet', '--arch', 'res_tiny', '--input', str(bad),
                     '--output', str(tmp_path / 'o')])
  err = capsys.readouterr().err
  assert rc == 1 and err.startswith('error: ') and 'truncated.pth' in err
  with pytest.raises(convert.ConversionError, match='input file not found'):
    convert.load_state_dict(str(tmp_path / 'nope.pth'))


def test_unknown_format_arch_and_class_count_mismatch():
  with pytest.raises(convert.ConversionError, match="unknown centernet architecture 'res_19'"):
    convert.convert_state_dict({}, 'res_19')
  module, *_ = _converted('centernet', 'res_tiny')
  with pytest.raises(convert.ConversionError, match='3 classes, --num_classes says 80'):
    convert.convert_state_dict(module.state_dict(), 'res_tiny', num_classes=80)
