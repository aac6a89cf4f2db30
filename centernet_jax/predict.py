r"""Detect objects in images.

Command line::

  python -m centernet_jax.predict --workdir W --images a.jpg b.png FOLDER ... --output OUT \
      [--score_threshold 0.3] [--grid] [--config X] [--checkpoint W/checkpoints/N]

writes ``OUT/<image stem>.json`` (boxes ``bbox_xyxy`` [x1, y1, x2, y2] in original pixels with
category id, name and score; multi_pose adds each person's keypoints) and ``OUT/<image
stem>.png`` (the boxes, and skeletons, drawn). A folder stands for its images (sorted); two
images of the same stem get distinct names (``x.json``, ``x_1.json``). Without ``--config`` the
run's saved config (``W/config.json``) is used. From Python, for notebooks and services::

  detector = Detector.from_checkpoint(config, 'W')   # or 'W/checkpoints/1000'
  detections = detector(['a.jpg', rgb_uint8_array])  # one list of dicts per image

The command line and :class:`Detector` keep detections scoring at least
:data:`DEFAULT_SCORE_THRESHOLD` unless told otherwise. Pre-processing (letterbox,
normalisation), the compiled predictor and the mapping back to original pixels are
``inference.py``'s; the network is compiled once per input size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import flags

from centernet_jax import checkpoint, cli, inference
from centernet_jax.evaluation import coco as coco_eval
from centernet_jax.evaluation import visualize

FLAGS = flags.FLAGS

DEFAULT_SCORE_THRESHOLD = 0.3  # the command line's and the Python API's (official demo: 0.3)
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')  # what the decoder reads


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

  def __call__(self, images: Sequence[str | np.ndarray],
               score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> list[list[dict]]:
    """Detects objects.

    Args:
      images: file paths, or uint8 arrays [H, W, 3] in RGB order (or [H, W] grayscale).
      score_threshold: drop detections scoring below this (0.0: all K).

    Returns:
      For each image, detections sorted by score: dicts with ``bbox_xyxy`` [x1, y1, x2, y2] in
      original pixels (COCO's ``bbox`` is [x, y, w, h]: a different key for a different
      format), ``score``, ``label`` (contiguous), ``category_id`` (original id) and
      ``category_name``; multi_pose adds ``keypoints`` [[x, y]] * J in original pixels (clipped
      to the image, as boxes) and ``keypoint_scores`` [J] (the joint heatmap's score of the peak
      a joint snapped to; 0 where the regressed position was kept).
    """
    results = []
    for image in images:
      batch = inference.preprocess(inference.read_image(
          image, str(self.config.data.get('exif_orientation', 'apply'))), self.config.data)
      out = self._predictor.detect(self._variables, batch, clip=True)
      dets = []
      for k, (box, score, label) in enumerate(zip(out['boxes'][0], out['scores'][0],
                                                  out['classes'][0], strict=True)):
        if score < score_threshold or score <= 0:  # CornerNet: rejected / suppressed
          continue
        det = {'bbox_xyxy': [float(v) for v in box], 'score': float(score),
               'label': int(label), 'category_id': self.category_ids[int(label)],
               'category_name': self.class_names[int(label)]}
        if 'keypoints' in out:
          det['keypoints'] = np.asarray(out['keypoints'][0, k], np.float32).tolist()
          det['keypoint_scores'] = np.asarray(out['keypoint_scores'][0, k], np.float32).tolist()
        dets.append(det)
      results.append(dets)
    return results

  def draw(self, image: np.ndarray, dets: list[dict],
           score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> np.ndarray:
    """``image`` [H, W, 3] uint8 RGB with one image's detections (``__call__``'s) drawn."""
    pose = {}
    if dets and 'keypoints' in dets[0]:
      pose = {'keypoints': np.array([d['keypoints'] for d in dets], np.float32),
              'keypoint_scores': np.array([d['keypoint_scores'] for d in dets], np.float32),
              'skeleton': self.skeleton, 'keypoint_names': self.keypoint_names,
              'flip_pairs': self.config.data.get('flip_pairs')}
    return visualize.draw_detections(
        image, np.array([d['bbox_xyxy'] for d in dets], np.float32).reshape(-1, 4),
        np.array([d['score'] for d in dets], np.float32),
        np.array([d['label'] for d in dets], np.int32), self.class_names,
        score_threshold=score_threshold, **pose)


def read_rgb(path: str) -> np.ndarray:
  """An image file as uint8 RGB [H, W, 3] (PIL). 16-bit images are scaled to 8 bits (PIL's own
  conversion clips them to 255: a 16-bit grayscale PNG would come out white)."""
  from PIL import Image

  with Image.open(path) as im:
    if im.mode.startswith('I'):  # 'I;16', 'I;16B', 'I' (16-bit gray read as 32-bit ints)
      gray = np.asarray(im, np.float64)
      if im.mode != 'I' or gray.max() > 255:
        gray = gray * (255.0 / 65535.0)
      gray = np.clip(np.round(gray), 0, 255).astype(np.uint8)
      return np.repeat(gray[..., None], 3, axis=-1)
    return np.asarray(im.convert('RGB'))


def expand_images(paths: Sequence[str]) -> list[str]:
  """Image paths; a folder stands for its image files (``IMAGE_EXTENSIONS``, sorted).

  Raises:
    FileNotFoundError: naming every path that does not exist, or a folder without images.
  """
  out, missing = [], []
  for path in paths:
    if os.path.isdir(path):
      found = sorted(os.path.join(path, n) for n in os.listdir(path)
                     if n.lower().endswith(IMAGE_EXTENSIONS)
                     and os.path.isfile(os.path.join(path, n)))
      if not found:
        raise FileNotFoundError(f'no image files ({", ".join(IMAGE_EXTENSIONS)}) in the folder '
                                f'{path}')
      out.extend(found)
    elif os.path.exists(path):
      out.append(path)
    else:
      missing.append(path)
  if missing:
    raise FileNotFoundError(f'image file(s) not found: {", ".join(missing)}')
  return out


def output_names(paths: Sequence[str]) -> list[str]:
  """One distinct file stem per image: its own, then ``<stem>_1``, ``<stem>_2`` ... for repeats
  (``a/x.jpg``, ``b/x.jpg`` -> ``x``, ``x_1``); ``grid`` is kept for the grid picture."""
  taken, names = {'grid'}, []
  for path in paths:
    stem = os.path.splitext(os.path.basename(path))[0]
    name, k = stem, 0
    while name in taken:
      k += 1
      name = f'{stem}_{k}'
    taken.add(name)
    names.append(name)
  return names


def predict_files(detector: Detector, paths: Sequence[str], output: str,
                  score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                  grid: bool = False) -> list[str]:
  """Writes ``<name>.json`` and ``<name>.png`` per image (and ``grid.png``); returns the paths.

  Args:
    detector: the detector.
    paths: image files, or folders standing for their images (:func:`expand_images`).
    output: the output folder (created).
    score_threshold: detections scoring below are neither kept nor drawn.
    grid: also write ``grid.png`` with every picture.

  The names are the images' stems, made distinct (:func:`output_names`). The json holds the
  image path and :class:`Detector`'s detections (and for keypoint models ``keypoint_names`` and
  the 0-based ``skeleton``). The pictures are drawn on the pixels the detector saw.
  """
  paths = expand_images(paths)
  os.makedirs(output, exist_ok=True)
  written, drawn = [], []
  for path, name in zip(paths, output_names(paths), strict=True):
    # decoded once, as evaluation decodes (EXIF orientation, 16-bit too)
    pixels = inference.read_image(path, str(detector.config.data.get('exif_orientation', 'apply')))
    dets = detector([pixels], score_threshold=score_threshold)[0]
    json_path = os.path.join(output, name + '.json')
    record = {'image': os.path.abspath(path), 'detections': dets}
    if detector.skeleton is not None:
      record.update(keypoint_names=detector.keypoint_names, skeleton=detector.skeleton)
    coco_eval.write_json(json_path, record)
    picture = detector.draw(pixels, dets, score_threshold=score_threshold)
    png_path = os.path.join(output, name + '.png')
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
    cli.fail('give at least one image or folder with --images')
  if not (FLAGS.workdir or FLAGS.checkpoint):
    cli.fail('give --workdir (a training run) or --checkpoint (a checkpoint folder, e.g. '
             'W/checkpoints/2000) to predict with')
  try:
    images = expand_images(images)
    detector = Detector.from_checkpoint(FLAGS.config, FLAGS.checkpoint or FLAGS.workdir,
                                        FLAGS.step)
    written = predict_files(detector, images, FLAGS.output, FLAGS.score_threshold, FLAGS.grid)
  except (checkpoint.ModelMismatchError, ValueError, FileNotFoundError) as e:
    cli.fail(e, 1)
  print(json.dumps({'written': written}, indent=1))


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'Work directory holding checkpoints/ (and config.json).')
  flags.DEFINE_string('checkpoint', None, 'A checkpoint folder (instead of --workdir).')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
  flags.DEFINE_multi_string('images', None, 'Image files or folders (more may follow as '
                            'arguments).')
  flags.DEFINE_string('output', 'predictions', 'Output folder.')
  flags.DEFINE_float('score_threshold', DEFAULT_SCORE_THRESHOLD,
                     'Minimum score to keep and draw.')
  flags.DEFINE_bool('grid', False, 'Also write grid.png with every picture.')
  cli.run(main, run_flags=('checkpoint', 'workdir'))
