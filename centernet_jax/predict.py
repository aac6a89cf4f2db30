r"""Detect objects in images.

Command line::

  python -m centernet_jax.predict --config configs/X.py --workdir W \
      --images a.jpg b.png ... --output OUT [--score_threshold 0.3] [--grid]

writes ``OUT/<image stem>.json`` (boxes in original pixels with category id, name and score;
multi_pose adds each person's keypoints) and ``OUT/<image stem>.png`` (the boxes, and skeletons,
drawn). From Python, for notebooks and services::

  detector = Detector.from_checkpoint(config, 'W')   # or 'W/checkpoints/1000'
  detections = detector(['a.jpg', rgb_uint8_array])  # one list of dicts per image

Pre-processing (letterbox, normalisation), the compiled predictor and the mapping back to
original pixels are ``inference.py``'s; the network is compiled once per input size.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from centernet_jax import checkpoint, config_lib, inference
from centernet_jax.evaluation import coco as coco_eval
from centernet_jax.evaluation import visualize

FLAGS = flags.FLAGS


class Detector:
  """A restored detector that maps images to detections in original pixels."""

  def __init__(self, config: ml_collections.ConfigDict, model, variables: dict, meta: dict):
    """
    Args:
      config: resolved config (``inference.restore`` returns one).
      model: the flax module.
      variables: ``{'params', 'batch_stats'}``.
      meta: the checkpoint's meta (``class_names``, ``category_ids``; multi_pose:
        ``keypoint_names`` and ``skeleton``, the COCO ones when absent and J = 17).
    """
    self.config = config
    self.class_names = list(meta['class_names'])
    self.category_ids = [int(c) for c in meta['category_ids']]
    self.keypoint_names, self.skeleton = visualize.keypoint_layout(
        config.data.get('num_joints'), meta.get('keypoint_names'), meta.get('skeleton'))
    self._variables = jax.device_put(variables)
    self._predictor = inference.Predictor(config, model)

  @classmethod
  def from_checkpoint(cls, config: ml_collections.ConfigDict, path: str,
                      step: int | None = None) -> Detector:
    """Restores from a workdir, its checkpoints folder or one ``checkpoints/<step>`` folder."""
    restored = inference.restore(config, path, step)
    return cls(restored.config, restored.model, restored.variables, restored.meta)

  def __call__(self, images: Sequence[str | np.ndarray], score_threshold: float = 0.0
               ) -> list[list[dict]]:
    """Detects objects.

    Args:
      images: file paths, or uint8 arrays [H, W, 3] in RGB order (or [H, W] grayscale).
      score_threshold: drop detections scoring below this.

    Returns:
      For each image, detections sorted by score: dicts with ``bbox`` [x1, y1, x2, y2] in
      original pixels, ``score``, ``label`` (contiguous), ``category_id`` (original id) and
      ``category_name``; multi_pose adds ``keypoints`` [[x, y]] * J in original pixels (clipped
      to the image, as boxes) and ``keypoint_scores`` [J] (the joint heatmap's score of the peak
      a joint snapped to; 0 where the regressed position was kept).
    """
    results = []
    for image in images:
      batch = inference.preprocess(inference.read_image(image), self.config.data)
      out = self._predictor.detect(self._variables, batch, clip=True)
      dets = []
      for k, (box, score, label) in enumerate(zip(out['boxes'][0], out['scores'][0],
                                                  out['classes'][0], strict=True)):
        if score < score_threshold or score <= 0:  # CornerNet: rejected / suppressed
          continue
        det = {'bbox': [float(v) for v in box], 'score': float(score), 'label': int(label),
               'category_id': self.category_ids[int(label)],
               'category_name': self.class_names[int(label)]}
        if 'keypoints' in out:
          det['keypoints'] = np.asarray(out['keypoints'][0, k], np.float32).tolist()
          det['keypoint_scores'] = np.asarray(out['keypoint_scores'][0, k], np.float32).tolist()
        dets.append(det)
      results.append(dets)
    return results

  def draw(self, image: np.ndarray, dets: list[dict], score_threshold: float = 0.0
           ) -> np.ndarray:
    """``image`` [H, W, 3] uint8 RGB with one image's detections (``__call__``'s) drawn."""
    pose = {}
    if dets and 'keypoints' in dets[0]:
      pose = {'keypoints': np.array([d['keypoints'] for d in dets], np.float32),
              'keypoint_scores': np.array([d['keypoint_scores'] for d in dets], np.float32),
              'skeleton': self.skeleton, 'keypoint_names': self.keypoint_names,
              'flip_pairs': self.config.data.get('flip_pairs')}
    return visualize.draw_detections(
        image, np.array([d['bbox'] for d in dets], np.float32).reshape(-1, 4),
        np.array([d['score'] for d in dets], np.float32),
        np.array([d['label'] for d in dets], np.int32), self.class_names,
        score_threshold=score_threshold, **pose)


def read_rgb(path: str) -> np.ndarray:
  from PIL import Image
  with Image.open(path) as im:
    return np.asarray(im.convert('RGB'))


def predict_files(detector: Detector, paths: Sequence[str], output: str,
                  score_threshold: float, grid: bool = False) -> list[str]:
  """Writes ``<stem>.json`` and ``<stem>.png`` per image (and ``grid.png``); returns the paths.

  The json holds the image path and :class:`Detector`'s detections (and for keypoint models
  ``keypoint_names`` and the 0-based ``skeleton``).
  """
  os.makedirs(output, exist_ok=True)
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f'image file(s) not found: {", ".join(missing)}')
  written, drawn = [], []
  for path in paths:
    dets = detector([path], score_threshold=score_threshold)[0]
    stem = os.path.splitext(os.path.basename(path))[0]
    json_path = os.path.join(output, stem + '.json')
    record = {'image': os.path.abspath(path), 'detections': dets}
    if detector.skeleton is not None:
      record.update(keypoint_names=detector.keypoint_names, skeleton=detector.skeleton)
    coco_eval.write_json(json_path, record)
    picture = detector.draw(read_rgb(path), dets, score_threshold=score_threshold)
    png_path = os.path.join(output, stem + '.png')
    from PIL import Image
    Image.fromarray(picture).save(png_path)
    written += [json_path, png_path]
    drawn.append(picture)
  if grid and drawn:
    grid_path = os.path.join(output, 'grid.png')
    visualize.save_grid(drawn, grid_path, cols=min(4, len(drawn)))
    written.append(grid_path)
  return written


def main(argv):
  images = list(FLAGS.images or []) + list(argv[1:])
  if not images:
    print('error: give at least one image with --images', file=sys.stderr)
    sys.exit(2)
  try:
    detector = Detector.from_checkpoint(FLAGS.config, FLAGS.checkpoint or FLAGS.workdir,
                                        FLAGS.step)
    written = predict_files(detector, images, FLAGS.output, FLAGS.score_threshold, FLAGS.grid)
  except (checkpoint.ModelMismatchError, ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(json.dumps({'written': written}, indent=1))


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Work directory holding checkpoints/.')
  flags.DEFINE_string('checkpoint', None, 'A checkpoint folder (instead of --workdir).')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
  flags.DEFINE_multi_string('images', None, 'Image files (more may follow as arguments).')
  flags.DEFINE_string('output', 'predictions', 'Output folder.')
  flags.DEFINE_float('score_threshold', 0.3, 'Minimum score to keep and draw.')
  flags.DEFINE_bool('grid', False, 'Also write grid.png with every picture.')
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=config_lib.parse_flags)
