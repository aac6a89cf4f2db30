"""experiments/cpu_side_by_side.py: the HLO classifier of its profile, its option parsing and
the official PyTorch step it times (small, so that the script cannot rot unseen)."""

from __future__ import annotations

import math

import pytest

from tests.conftest import load_experiment


@pytest.fixture(scope='module')
def sbs():
  return load_experiment('cpu_side_by_side')


# (instruction name, HLO text as XLA:CPU prints it (trimmed), expected group)
CASES = [
    ('ynn_fusion.150', 'f32[8,32,32,64]{3,2,1,0} fusion(%a, %b), kind=kCustom, calls=%f, '
     'metadata={op_name="jit(train_step)/jvp(CenterNet)/reg/0/conv_general_dilated"}',
     'conv forward'),
    ('ynn_fusion.30', 'f32[256,3,3,64]{3,2,1,0} fusion(%a, %b), kind=kCustom, metadata={op_name='
     '"jit(train_step)/transpose(jvp(CenterNet))/hm/0/conv_general_dilated"}',
     'conv weight gradient'),
    ('ynn_fusion.147', 'f32[8,32,32,256]{3,2,1,0} fusion(%a, %b), kind=kCustom, metadata={op_name='
     '"jit(train_step)/transpose(jvp(CenterNet))/reg/0/conv_general_dilated"}',
     'conv input gradient'),
    ('ynn_fusion.121', 'f32[8,4,4,512]{3,2,1,0} fusion(%a, %b), kind=kCustom, metadata={op_name='
     '"jit(train_step)/transpose(jvp(CenterNet))/backbone/layer4/0/conv2/conv_general_dilated"}',
     'conv input gradient'),  # batch 8 at 4 x 4: an activation, not a kernel
    ('convolution.6', 'f32[8,18,18,256]{3,2,1,0} convolution(%a, %b), window={size=2x2 pad=1_1x1_1}'
     ', dim_labels=b01f_01io->b01f, metadata={op_name="jit(train_step)/transpose(jvp(CenterNet))/'
     'deconv_layers/6/conv_general_dilated"}', 'conv input gradient'),
    ('dot_general.12', 'f32[256,1024]{1,0} dot(%a, %b), lhs_contracting_dims={0}, '
     'rhs_contracting_dims={0}, metadata={op_name="jit(train_step)/transpose(jvp(CenterNet))/'
     'deconv_layers/6/dot_general"}', 'conv weight gradient'),
    ('transpose_copy_fusion.11', 'f32[256,32,32,8]{3,2,1,0} fusion(%copy.655, '
     '%bitcast_rsqrt_fusion, %copy.656), kind=kLoop', 'batch norm'),
    ('wrapped_iota.1', 's32[8,66,66,64]{3,2,1,0} fusion(), kind=kLoop',
     'max pool (and its gradient)'),
    ('copy_bitcast_fusion.2', 'f32[2,2,512,1024]{3,2,1,0} fusion(%copy.648), kind=kLoop, '
     'metadata={op_name="jit(train_step)/jvp(CenterNet)/deconv_layers/0/transpose"}',
     'kernel layout (transpose / copy)'),
    ('multiply_add_fusion.111', 'f32[3,3,512,512]{3,2,1,0} fusion(%state_opt_state_inner_mu, %g)'
     ', kind=kLoop', 'optimizer'),
    ('subtract_log_fusion', 'f32[8,32,32,80]{3,2,1,0} fusion(%x), kind=kLoop, metadata={op_name='
     '"jit(train_step)/focal_loss/log"}', 'targets and losses'),
    ('add.3', 'f32[8]{0} add(%a, %b)', 'other'),
]


@pytest.mark.parametrize('name, line, group', CASES)
def test_classify(sbs, name, line, group):
  assert sbs.classify(name, line, batch=8) == group


def test_parse_options(sbs):
  assert sbs._parse_options('') == {}
  assert sbs._parse_options('xla_cpu_use_xnnpack=true,xla_cpu_prefer_vector_width=512,'
                            'xla_cpu_max_isa=AVX2') == {
                                'xla_cpu_use_xnnpack': True, 'xla_cpu_prefer_vector_width': 512,
                                'xla_cpu_max_isa': 'AVX2'}


def test_official_torch_step_runs_and_learns(sbs):
  pytest.importorskip('torch')
  step = sbs.torch_step(32, 2, num_classes=3, max_objs=4)
  losses = [step() for _ in range(4)]
  assert all(math.isfinite(v) for v in losses)
  assert losses[-1] < losses[0]  # same batch, Adam: the official loss must go down


def test_other_config_variant_trains_its_own_model(sbs):
  """``jax@<config>``: another config's step (here the tiny smoke model) beside ours."""
  fns = sbs.jax_steps(32, 2, ['jax@smoke'])
  assert set(fns) == {'jax@smoke'}
  for _ in range(2):
    fns['jax@smoke']()
  with pytest.raises(FileNotFoundError):
    sbs.jax_steps(32, 2, ['jax@no_such_config'])
