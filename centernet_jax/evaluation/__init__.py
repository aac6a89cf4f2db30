"""COCO evaluation (pycocotools) and detection drawing. No TensorFlow or JAX here."""

from centernet_jax.evaluation.coco import (
  METRIC_NAMES,
  detections_to_coco,
  evaluate_detections,
  load_gt,
  write_json,
)
from centernet_jax.evaluation.visualize import draw_detections, save_grid

__all__ = [
  'METRIC_NAMES',
  'detections_to_coco',
  'draw_detections',
  'evaluate_detections',
  'load_gt',
  'save_grid',
  'write_json',
]
