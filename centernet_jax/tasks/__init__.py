"""The task registry: one module per task, named by ``config.task``.

A task module owns everything that depends on what is detected: its config keys, heads, target
rendering, loss, decoding, flip merge, train step, predict function and multi-scale merge. Each
defines

  NAME, POINT_KEYS                      registry key; detection arrays holding (x, y) pairs
  add_config(c)                         its keys in the shared config sections
  heads(num_classes, config=None)       ((name, channels), ...) for ``config.model.heads``
  make_train_step(config, model, tx, schedule=None) -> train_step(state, batch)
  make_predict_fn(config, model, *, merge_later=False) -> predict(variables, images)
  make_merge(config) -> merge(dets)     multi-scale merge of detections in original pixels
  coco_results(dets, image_id, category_ids, config) -> [result]   one image's COCO results
  evaluate(gt, results, image_ids, config, log) -> metrics          the task's metrics
  write_results(gt, results, image_ids, config, out_dir) (optional) extra result files (ddd:
                                        the KITTI label-format files of eval/step_<N>/kitti/)
  OUTPUT_UNITS (optional)               {output: units} of detection arrays other than
                                        POINT_KEYS, for export.json (ddd: depth, dims, rot)

Adding a task is one new module and one line in ``TASKS``; the training loop, evaluation,
export and conversion call these names only.
"""

from __future__ import annotations

from types import ModuleType

import ml_collections

from centernet_jax.tasks import cornernet, ctdet, ddd, multi_pose

TASKS: dict[str, ModuleType] = {'ctdet': ctdet, 'cornernet': cornernet,
                                'multi_pose': multi_pose, 'ddd': ddd}


def get(name: str) -> ModuleType:
  """The task module registered as ``name`` (``config.task``)."""
  if name not in TASKS:
    raise ValueError(f'config.task={name!r} is not a known task; known: {sorted(TASKS)}')
  return TASKS[name]


def resolve_config(config: ml_collections.ConfigDict,
                   num_classes: int) -> ml_collections.ConfigDict:
  """The config with its class count and heads known (entry points call it once).

  The heads are the task's ``heads(num_classes)``, or the part of them a config already names
  (e.g. a converted checkpoint's, read from its weights, without the optional offset head);
  heads that do not fit the class count (a COCO config with another ``num_classes``) are
  replaced.

  Args:
    config: an experiment config (``task``, ``model.num_classes``, ``model.heads``).
    num_classes: the class count of the data set (training) or of the checkpoint (inference).

  Returns:
    An unlocked copy with ``model.num_classes`` and ``model.heads`` set.

  Raises:
    ValueError: unknown ``config.task``, num_classes < 1, or a config that names another
      positive ``model.num_classes``.
  """
  task = get(config.task)
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1, got {num_classes}')
  named = int(config.model.num_classes)
  if named > 0 and named != num_classes:
    raise ValueError(f'config.model.num_classes={named}, but the data set or checkpoint has '
                     f'{num_classes} classes: set --config.model.num_classes={num_classes} or '
                     '-1 (taken from the data)')
  d = config.to_dict()
  heads = tuple((str(name), int(ch)) for name, ch in d['model']['heads'])
  computed = task.heads(num_classes, config)
  if not heads or not set(heads) <= set(computed):
    heads = computed
  d['model']['num_classes'] = num_classes
  d['model']['heads'] = heads  # a JSON meta's lists of lists become a tuple of pairs
  return ml_collections.ConfigDict(d)


def multi_scale(config: ml_collections.ConfigDict) -> bool:
  """Whether evaluation merges several test scales (then NMS runs after the merge).

  Raises:
    ValueError: naming ``config.eval.test_scales`` when it is empty or not all positive.
  """
  scales = tuple(config.eval.test_scales)
  if not scales or any(s <= 0 for s in scales):
    raise ValueError(f'config.eval.test_scales={scales!r}: give one or more positive scales')
  return len(scales) > 1


__all__ = ['TASKS', 'cornernet', 'ctdet', 'multi_pose', 'get', 'multi_scale', 'resolve_config']
