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

from centernet_jax import decode, steps


def task_of(model_cfg: Mapping[str, Any]) -> str:
  """'cornernet' for CornerNet architectures, else 'ctdet'."""
  return 'cornernet' if str(model_cfg['arch']).startswith('cornernet') else 'ctdet'


def make_train_step(config, model: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule | None = None) -> Callable:
  """``train_step(state, batch) -> (state, metrics)`` for the config's task (not jitted)."""
  task = task_of(config.model)
  if task == 'cornernet':
    return steps.make_cornernet_train_step(
        model, tx, num_classes=config.model.num_classes, down_ratio=config.model.down_ratio,
        min_overlap=config.loss.min_overlap, pull_weight=config.loss.pull_weight,
        push_weight=config.loss.push_weight, regr_weight=config.loss.regr_weight,
        images_per_chunk=config.loss.ae_images_per_chunk or None, schedule=schedule)
  return steps.make_train_step(
      model, tx, num_classes=config.model.num_classes, down_ratio=config.model.down_ratio,
      min_overlap=config.loss.min_overlap, hm_weight=config.loss.hm_weight,
      wh_weight=config.loss.wh_weight, off_weight=config.loss.off_weight, schedule=schedule)


def make_nms(config, *, merge_boxes: bool = False, box_scale: float = 1.0
             ) -> Callable[[dict], dict]:
  """Per-class soft-NMS over a batch of detections, then the top ``eval.K`` across classes.

  Args:
    config: the experiment config (``eval.nms_*``, ``eval.K``).
    merge_boxes: also average each kept box with those it suppresses, weighted by the corner
      scores (official CornerNet multi-scale ``soft_nms_merge``, weight_exp 10); needs
      detections carrying ``tl_scores`` and ``br_scores``.
    box_scale: boxes are multiplied by this before NMS and divided after: the official IoU
      counts pixels (+1 in widths), so NMS must see image pixels, not output-map units
      (``down_ratio`` for output-map boxes; 1 for boxes already in image pixels).

  Returns:
    ``nms(dets) -> dets``: dets hold boxes [B, N, 4], scores [B, N] (negative: absent),
    classes [B, N]; the result holds K of each plus ``valid`` [B, K].
  """
  e = config.eval
  if e.nms_method not in ('gaussian', 'linear', 'hard'):
    raise ValueError(f"config.eval.nms_method={e.nms_method!r}: use 'gaussian', 'linear' or "
                     "'hard'")

  def nms(dets: dict) -> dict:
    corners = (dets['tl_scores'], dets['br_scores']) if merge_boxes else None
    out = decode.nms_top_k(dets['boxes'] * box_scale, dets['scores'], dets['classes'], K=e.K,
                           iou_threshold=e.nms_iou, sigma=e.nms_sigma,
                           score_threshold=e.nms_threshold, method=e.nms_method,
                           corner_scores=corners)
    return dict(out, boxes=out['boxes'] / box_scale)

  return nms


def multi_scale(config) -> bool:
  """Whether evaluation merges several test scales (then NMS runs after the merge)."""
  scales = tuple(config.eval.test_scales)
  if not scales or any(s <= 0 for s in scales):
    raise ValueError(f'config.eval.test_scales={scales!r}: give one or more positive scales')
  return len(scales) > 1


def make_predict_fn(config, model: nn.Module, *, merge_later: bool | None = None) -> Callable:
  """``predict(variables, images) -> {boxes, scores, classes}`` for the config's task.

  Boxes are in output-map coordinates. With ``merge_later`` (default: when several
  ``eval.test_scales`` are set) the detections are returned before NMS, for the caller to map
  every scale back to the image and merge them with :func:`make_nms`.
  """
  if merge_later is None:
    merge_later = multi_scale(config)
  e = config.eval
  if task_of(config.model) == 'cornernet':
    return steps.make_cornernet_predict_fn(
        model, K=e.K, corner_K=e.corner_K, num_dets=e.num_dets, ae_threshold=e.ae_threshold,
        flip_test=e.flip_test,
        nms=None if merge_later else make_nms(config, box_scale=config.model.down_ratio))
  nms = (make_nms(config, box_scale=config.model.down_ratio) if e.nms and not merge_later
         else None)
  return steps.make_predict_fn(model, K=e.K, flip_test=e.flip_test, nms=nms)
