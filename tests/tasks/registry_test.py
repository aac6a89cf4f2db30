"""The task registry: every task module has the names the loop, evaluation and export call, and
an unknown config.task is a clear error."""

import inspect

import ml_collections
import pytest

from centernet_jax import config_lib, tasks

# name -> the parameters its signature must have (contract of tasks/__init__.py).
CONTRACT = {
    'add_config': ['c'],
    'heads': ['num_classes', 'config'],
    'make_train_step': ['config', 'model', 'tx', 'schedule'],
    'make_predict_fn': ['config', 'model', 'merge_later'],
    'make_merge': ['config'],
    'coco_results': ['dets', 'image_id', 'category_ids', 'config'],
    'evaluate': ['gt', 'results', 'image_ids', 'config', 'log'],
}


@pytest.mark.parametrize('name', sorted(tasks.TASKS))
def test_task_module_has_the_contract_names(name):
  task = tasks.get(name)
  assert task is tasks.TASKS[name] and task.NAME == name
  assert isinstance(task.POINT_KEYS, tuple) and 'boxes' in task.POINT_KEYS
  for fn_name, params in CONTRACT.items():
    fn = getattr(task, fn_name)
    assert list(inspect.signature(fn).parameters) == params, fn_name
  sig = inspect.signature(task.make_predict_fn).parameters
  assert sig['merge_later'].kind is inspect.Parameter.KEYWORD_ONLY
  assert sig['merge_later'].default is False
  assert inspect.signature(task.make_train_step).parameters['schedule'].default is None


@pytest.mark.parametrize('name', sorted(tasks.TASKS))
def test_heads_and_config_keys(name):
  task = tasks.get(name)
  heads = task.heads(7, config_lib.base_config(name))
  assert len({h for h, _ in heads}) == len(heads) and all(c > 0 for _, c in heads)
  assert any(c == 7 for _, c in heads)
  # Besides config.task itself, add_config only adds keys to the loss and eval sections, and
  # data keys (pose: joints, flip pairs) with the task's official data defaults.
  shared = config_lib.base_config(name).to_dict()
  for section in shared:
    for other in tasks.TASKS:
      theirs = config_lib.base_config(other).to_dict()[section]
      if section == 'data':
        assert set(theirs) & set(shared[section]) >= set(config_lib.base_config().data), other
      elif section not in ('task', 'loss', 'eval'):
        assert theirs == shared[section], section


def test_unknown_task_names_config_task_and_the_known_tasks():
  known = r"\['cornernet', 'ctdet', 'ddd', 'multi_pose'\]"
  with pytest.raises(ValueError, match=r"config.task='pose'.*" + known):
    tasks.get('pose')
  with pytest.raises(ValueError, match='config.task'):
    config_lib.base_config('pose')
  cfg = config_lib.base_config().to_dict()
  cfg['task'] = 'Ctdet'
  with pytest.raises(ValueError, match='config.task'):
    tasks.resolve_config(ml_collections.ConfigDict(cfg), 3)


@pytest.mark.parametrize('scales, expected', [((1.0,), False), ((0.5, 1.0), True)])
def test_multi_scale(scales, expected):
  c = config_lib.base_config()
  c.eval.test_scales = scales
  assert tasks.multi_scale(c) is expected


@pytest.mark.parametrize('scales', [(), (1.0, -0.5)])
def test_multi_scale_names_bad_scales(scales):
  c = config_lib.base_config()
  c.eval.test_scales = scales
  with pytest.raises(ValueError, match='config.eval.test_scales'):
    tasks.multi_scale(c)
