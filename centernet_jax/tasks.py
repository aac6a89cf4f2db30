"""Task dispatch: the targets, losses and decoding that go with a config's model.

``config.model.arch`` names the task: CornerNet architectures (``cornernet*``) pair corners, all
others are CenterNet object-as-point detectors (ctdet). Entry points build their jitted steps
here, so adding a task touches this file and ``steps.py``, not the training loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import optax

from centernet_jax import steps


def task_of(model_cfg: Mapping[str, Any]) -> str:
  """'cornernet' for CornerNet architectures, else 'ctdet'."""
  return 'cornernet' if str(model_cfg['arch']).startswith('cornernet') else 'ctdet'


def make_train_step(config, model: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule | None = None) -> Callable:
  """``train_step(state, batch) -> (state, metrics)`` for the config's task (not jitted)."""
  task = task_of(config.model)
  if task == 'ctdet':
    return steps.make_train_step(
        model, tx, num_classes=config.model.num_classes, down_ratio=config.model.down_ratio,
        min_overlap=config.loss.min_overlap, hm_weight=config.loss.hm_weight,
        wh_weight=config.loss.wh_weight, off_weight=config.loss.off_weight, schedule=schedule)
  raise ValueError(f'config.model.arch={config.model.arch!r}: task {task!r} has no train step')


def make_predict_fn(config, model: nn.Module) -> Callable:
  """``predict(variables, images) -> {boxes, scores, classes}`` for the config's task."""
  task = task_of(config.model)
  if task == 'ctdet':
    return steps.make_predict_fn(model, K=config.eval.K, flip_test=config.eval.flip_test)
  raise ValueError(f'config.model.arch={config.model.arch!r}: task {task!r} has no predictor')
