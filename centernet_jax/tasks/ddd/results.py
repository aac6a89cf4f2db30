"""ddd results and the KITTI evaluation binding: the 2D-stage results of each image, the 3D
stage with each image's P2, the official result files, and the benchmark metrics
(docs/parity.md 4.13; the metrics themselves: ``centernet_jax.evaluation.kitti``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import ml_collections
import numpy as np

from centernet_jax.data import kitti as kitti_data
from centernet_jax.tasks.ddd.post import alpha_from_rot, boxes_2d, locate

CLASS_NAMES = kitti_data.CLASS_NAMES


def coco_results(dets: Mapping[str, np.ndarray], image_id: int, category_ids: Sequence[int],
                 config: ml_collections.ConfigDict) -> list[dict]:
  """One image's 2D-stage results (official ``ddd_post_process_2d`` + ``merge_outputs``).

  The 3D stage needs the image's P2, which :func:`evaluate` reads from the ground truth. Each
  result: image_id, category_id, type (``CLASS_NAMES``), score, bbox xywh (the corrected box,
  or with ``eval.ddd_official_2d_box`` the official one), center (u, v), alpha, depth,
  dimensions (h, w, l), in original pixels, radians and metres; detections scoring <=
  ``eval.peak_thresh`` are dropped.

  Args:
    dets: one image's detections in original pixels (:func:`ddd_decode` keys).
    image_id: its image id.
    category_ids: contiguous label -> category id.
    config: the experiment config.
  """
  e = config.eval
  scores = np.asarray(dets['scores'], np.float32)
  boxes = boxes_2d(dets, bool(e.ddd_official_2d_box))
  alpha = alpha_from_rot(dets['rot'])
  centers = dets.get('centers3d', dets['centers'])  # the 3D stage's centre (amodel_offset)
  out = []
  for k in np.flatnonzero(scores > e.peak_thresh):
    label = int(dets['classes'][k])
    x1, y1, x2, y2 = (float(v) for v in boxes[k])
    out.append({'image_id': int(image_id), 'category_id': int(category_ids[label]),
                'type': CLASS_NAMES[label], 'score': float(scores[k]),
                'bbox': [x1, y1, x2 - x1, y2 - y1],
                'center': [float(v) for v in centers[k]], 'alpha': float(alpha[k]),
                'depth': float(dets['depth'][k]),
                'dimensions': [float(v) for v in dets['dims'][k]]})
  return out


def results_to_kitti(results: Sequence[Mapping], calib: np.ndarray, *,
                     decimals: int | None = 2) -> list[dict]:
  """KITTI object dicts of one image's :func:`coco_results`: the 3D stage with its P2.

  truncated 0.0 and occluded 0 as the official ``save_results``; ``decimals`` rounds every
  number as the official result files do (None: no rounding).
  """
  if not results:
    return []
  bbox = np.array([r['bbox'] for r in results], np.float32)
  dims = np.array([r['dimensions'] for r in results], np.float32)
  alpha = np.array([r['alpha'] for r in results], np.float32)
  locations, rotation_y = locate(np.array([r['center'] for r in results], np.float32),
                                 np.array([r['depth'] for r in results], np.float32), dims,
                                 alpha, calib)

  def rnd(v) -> float:
    return round(float(v), decimals) if decimals is not None else float(v)

  return [{'type': r['type'], 'truncated': 0.0, 'occluded': 0, 'alpha': rnd(alpha[k]),
           'bbox': [rnd(v) for v in (*bbox[k, :2], *(bbox[k, :2] + bbox[k, 2:]))],
           'dimensions': [rnd(v) for v in dims[k]],
           'location': [rnd(v) for v in locations[k]], 'rotation_y': rnd(rotation_y[k]),
           'score': rnd(r['score'])} for k, r in enumerate(results)]


def write_results(gt: Mapping[int, Mapping], results: Sequence[Mapping],
                  image_ids: Sequence[int], config: ml_collections.ConfigDict,
                  out_dir: str) -> list[str]:
  """Writes the official KITTI result files: ``out_dir/<image id, 6 digits>.txt`` per image.

  One label-format line per detection with its score (:func:`results_to_kitti`, 2 decimals),
  an empty file for an image without detections, as the official ``save_results``.

  Args:
    gt, results, image_ids, config: as :func:`evaluate` (``gt`` gives each image's P2).
    out_dir: created if needed.

  Returns:
    The paths written, in ``image_ids`` order.
  """
  per_image = _results_per_image(gt, results, image_ids)
  decimals = 2 if config.eval.round_results else None
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for i, rs in per_image.items():
    paths.append(os.path.join(out_dir, f'{i:06d}.txt'))
    kitti_data.write_label_file(paths[-1], results_to_kitti(rs, gt[i]['calib'],
                                                            decimals=decimals))
  return paths


def _results_per_image(gt: Mapping[int, Mapping], results: Sequence[Mapping],
                       image_ids: Sequence[int]) -> dict[int, list]:
  """{image id: its results} for ``image_ids``; raises naming image ids without ground truth."""
  per_image: dict[int, list] = {int(i): [] for i in image_ids}
  for r in results:
    if int(r['image_id']) in per_image:
      per_image[int(r['image_id'])].append(r)
  missing = [i for i in per_image if i not in gt]
  if missing:
    raise ValueError(f'no KITTI ground truth (calib, objects) for image ids {missing[:10]}'
                     + (f' and {len(missing) - 10} more' if len(missing) > 10 else ''))
  return per_image


def evaluate(gt: Mapping[int, Mapping], results: Sequence[Mapping], image_ids: Sequence[int],
             config: ml_collections.ConfigDict, log: Callable[[str], object] | None = print
             ) -> dict[str, float]:
  """KITTI object benchmark of ``results`` over ``image_ids`` (docs/parity.md 4.13).

  Args:
    gt: image id -> {'calib': [3, 4] P2, 'objects': KITTI object dicts (type, truncated,
      occluded, alpha, bbox, dimensions, location, rotation_y)}.
    results: :func:`coco_results` of every image.
    image_ids: the images evaluated (every image of the split).
    config: the experiment config (``eval.round_results``: 2 decimals as the official files;
      ``eval.kitti_overlaps``: the minimum-overlap table).
    log: prints the metrics, or None.

  Returns:
    ``evaluation.kitti.evaluate_kitti``'s metrics ({2d,aos,bev,3d}_AP_<class>_<difficulty>
    and their ``_r11`` twins).

  Raises:
    ValueError: naming image ids without ground truth, or ``config.eval.kitti_overlaps``.
  """
  from centernet_jax.evaluation import kitti as kitti_eval

  per_image = _results_per_image(gt, results, image_ids)
  decimals = 2 if config.eval.round_results else None
  dets = {i: results_to_kitti(rs, gt[i]['calib'], decimals=decimals)
          for i, rs in per_image.items()}
  tables = {'devkit': kitti_eval.MIN_OVERLAPS, 'centernet': kitti_eval.CENTERNET_MIN_OVERLAPS}
  if config.eval.kitti_overlaps not in tables:
    raise ValueError(f'config.eval.kitti_overlaps={config.eval.kitti_overlaps!r}: use one of '
                     f'{sorted(tables)}')
  metrics = kitti_eval.evaluate_kitti(
      {i: list(gt[i]['objects']) for i in per_image}, dets,
      min_overlaps=tables[config.eval.kitti_overlaps],
      min_height_scale=float(config.eval.kitti_min_height_scale))
  if log is not None:
    log(metrics_table(metrics))
  return metrics


def metrics_table(metrics: Mapping[str, float]) -> str:
  """The 40-point KITTI metrics as a text table: one row per metric and class, columns easy,
  moderate, hard (-1: no ground truth counted at that difficulty)."""
  rows = [f'{"KITTI AP|R40":<16}' + ''.join(f'{d:>9}' for d in ('easy', 'moderate', 'hard'))]
  for metric in ('2d', 'aos', 'bev', '3d'):
    for cls in CLASS_NAMES:
      values = [metrics.get(f'{metric}_AP_{cls}_{d}') for d in ('easy', 'moderate', 'hard')]
      if all(v is None for v in values):
        continue
      cells = ''.join(f'{v:>9.4f}' if v is not None else f'{"-":>9}' for v in values)
      rows.append(f'{metric.upper():<4}{cls:<12}{cells}')
  return '\n'.join(rows)
