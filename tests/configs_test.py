"""Every config file loads, carries exactly the keys of its task's base config, builds its model
and says how to run it; a task's config has no key of another task; resolve_config."""

import glob
import os

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from centernet_jax import config_lib, tasks
from centernet_jax.models import build_model
from tests.conftest import ROOT, load_config

NAMES = sorted(os.path.splitext(os.path.basename(p))[0]
               for p in glob.glob(os.path.join(ROOT, 'configs', '*.py')))


def _keys(cfg, prefix=''):
  out = set()
  for k, v in cfg.items():
    out.add(prefix + k)
    if hasattr(v, 'items'):
      out |= _keys(v, prefix + k + '.')
  return out


@pytest.mark.parametrize('name', NAMES)
def test_config_complete_and_documented(name):
  cfg = load_config(name)
  assert cfg.task in tasks.TASKS
  assert _keys(cfg) == _keys(config_lib.base_config(cfg.task))
  with open(os.path.join(ROOT, 'configs', name + '.py')) as f:
    text = f.read()
  assert 'centernet_jax.train' in text or 'make demo' in text
  assert cfg.train.batch_size % 8 == 0  # splits over 1, 2, 4 or 8 devices
  if cfg.model.num_classes > 0:  # COCO: the heads are known, the model builds as it is
    assert tuple(cfg.model.heads) == tasks.get(cfg.task).heads(cfg.model.num_classes)
    build_model(cfg.model)
  else:
    assert tuple(cfg.model.heads) == ()
    build_model(tasks.resolve_config(cfg, 3).model)


def test_parse_arg():
  out = config_lib.parse_arg('a=3,b=x,c=true', a=1, b='y', c=False)
  assert (out.a, out.b, out.c) == (3, 'x', True)
  with pytest.raises(ValueError, match='unknown config argument'):
    config_lib.parse_arg('z=1', a=1)


@pytest.mark.parametrize('task, foreign', [
    ('ctdet', ('loss', 'pull_weight')), ('ctdet', ('eval', 'corner_K')),
    ('cornernet', ('loss', 'hm_weight')), ('cornernet', ('eval', 'nms')),
])
def test_a_task_config_rejects_another_tasks_key(task, foreign):
  section, key = foreign
  other = config_lib.base_config('cornernet' if task == 'ctdet' else 'ctdet')
  assert key in other[section]  # the key exists, in the other task
  cfg = config_lib.base_config(task)
  assert key not in cfg[section]
  with pytest.raises(AttributeError, match=key):
    setattr(cfg[section], key, other[section][key])


@pytest.mark.parametrize('name, override', [
    ('smoke', '--config.loss.pull_weight=0.2'),
    ('shapes_cornernet', '--config.loss.hm_weight=2.0'),
])
def test_command_line_override_of_another_tasks_key_fails(name, override):
  path = os.path.join(ROOT, 'configs', name + '.py')

  def parse(*overrides):
    argv = ['prog', f'--config={path}', *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file('config', flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    return flag_values.config

  assert parse('--config.train.num_steps=7').train.num_steps == 7  # a key of the task is fine
  with pytest.raises((AttributeError, KeyError, flags.Error)):
    parse(override)


def test_resolve_config_sets_classes_and_heads_on_a_copy():
  cfg = config_lib.base_config('cornernet')
  out = tasks.resolve_config(cfg, 5)
  assert out.model.num_classes == 5 and cfg.model.num_classes == -1
  assert out.model.heads == (('tl_heat', 5), ('br_heat', 5), ('tl_tag', 1), ('br_tag', 1),
                             ('tl_regr', 2), ('br_regr', 2))
  assert cfg.model.heads == ()
  out.model.extra = 1  # unlocked
  with pytest.raises(ValueError, match='config.model.num_classes=5'):
    tasks.resolve_config(tasks.resolve_config(cfg, 5), 7)
  with pytest.raises(ValueError, match='num_classes'):
    tasks.resolve_config(cfg, 0)


def test_resolve_config_keeps_the_heads_a_config_names_for_its_classes():
  cfg = config_lib.base_config('ctdet').to_dict()
  cfg['model']['num_classes'] = 4
  cfg['model']['heads'] = [['hm', 4], ['wh', 2]]  # a converted model without 'reg' (JSON meta)
  out = tasks.resolve_config(ml_collections.ConfigDict(cfg), 4)
  assert out.model.heads == (('hm', 4), ('wh', 2))
  cfg['model']['num_classes'] = -1
  cfg['model']['heads'] = [['hm', 80], ['wh', 2], ['reg', 2]]  # stale: another class count
  out = tasks.resolve_config(ml_collections.ConfigDict(cfg), 4)
  assert out.model.heads == (('hm', 4), ('wh', 2), ('reg', 2))
