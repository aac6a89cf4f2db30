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

Monocular 3D models (``config.task == 'ddd'``) need the camera: each image's P2 [3, 4] (KITTI's
rectified left colour camera) turns the detected centre, depth and angle into a 3D box in metres.
It is, in this order: the ``calib`` argument (``--calib FILE``: a KITTI calib file, one P2 for
every image; in Python also an array, or one per image), the KITTI calib file of an image in the
KITTI layout (``.../image_2/<id>.png`` -> ``.../calib/<id>.txt``), the Detector's own ``calib``,
else the official demo's P2 (``tasks.ddd.DEFAULT_CALIB``, a KITTI 2011_09_26 camera) with a
warning. Each detection adds ``dimensions`` (h, w, l), ``location`` (x, y, z: the bottom centre,
camera coordinates), ``rotation_y``, ``alpha``, ``corners`` [8, 3], ``corners_2d`` [8, 2] (the
corners projected into the image) and ``kitti`` (the KITTI result line); the json names the P2
used (``calib``, ``calib_source``), and the picture is the image with the projected 3D boxes
(front face crossed) and, beside it, a bird's-eye view of them::

  python -m centernet_jax.predict --workdir runs/ddd --images kitti/training/image_2/000008.png
  python -m centernet_jax.predict --workdir runs/ddd --images street.jpg --calib my_camera.txt

The command line and :class:`Detector` keep detections scoring at least
:data:`DEFAULT_SCORE_THRESHOLD` unless told otherwise. Pre-processing (letterbox,
normalisation), the compiled predictor and the mapping back to original pixels are
``inference.py``'s; the network is compiled once per input size.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

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
DEFAULT_CALIB_SOURCE = 'default'  # calib_source of the official demo's P2 (tasks.ddd.DEFAULT_CALIB)

Calib = Any  # a [3, 4] (or [3, 3]) array-like, or a KITTI calib file path


def as_calib(calib: Calib) -> np.ndarray:
  """A camera as the [3, 4] float32 P2.

  Args:
    calib: a KITTI calib file path (its ``P2:`` line), a [3, 4] projection matrix, or [3, 3]
      intrinsics K (taken as [K | 0]).

  Raises:
    ValueError (DataError for files): another shape, non-finite numbers, focal lengths <= 0, a
      missing or malformed file.
  """
  from centernet_jax.data import kitti

  if isinstance(calib, str | os.PathLike):
    return kitti.read_calib(os.fspath(calib))
  try:
    p2 = np.asarray(calib, np.float32)
  except (TypeError, ValueError):
    raise ValueError(f'calib must be a [3, 4] P2, [3, 3] intrinsics or a calib file path, got '
                     f'{type(calib).__name__}') from None
  if p2.shape == (3, 3):
    p2 = np.concatenate([p2, np.zeros((3, 1), np.float32)], axis=1)
  if p2.shape != (3, 4):
    raise ValueError(f'calib must be a [3, 4] P2 or [3, 3] intrinsics, got shape {p2.shape}')
  if not np.all(np.isfinite(p2)) or p2[0, 0] <= 0 or p2[1, 1] <= 0:
    raise ValueError(f'calib {p2.tolist()} has non-finite numbers or focal lengths <= 0')
  return p2


def kitti_calib_path(image: str | os.PathLike) -> str | None:
  """The calib file of an image in the KITTI object layout (``<d>/image_2/<id>.png`` ->
  ``<d>/calib/<id>.txt``; any image folder next to a ``calib`` folder), or None."""
  folder = os.path.dirname(os.path.abspath(os.fspath(image)))
  stem = os.path.splitext(os.path.basename(os.fspath(image)))[0]
  path = os.path.join(os.path.dirname(folder), 'calib', stem + '.txt')
  return path if os.path.isfile(path) else None


def _per_image(calib, n: int) -> list:
  """``calib`` (one camera for every image, or one entry per image) as a list of n entries."""
  if calib is None or isinstance(calib, str | os.PathLike) or (
      isinstance(calib, np.ndarray) and calib.ndim <= 2):
    return [calib] * n
  try:
    shape = np.asarray(calib, np.float32).shape
  except (TypeError, ValueError):
    shape = None  # a list of paths, arrays or None: one per image
  if shape in ((3, 4), (3, 3)):
    return [calib] * n
  calibs = list(calib)
  if len(calibs) != n:
    raise ValueError(f'{len(calibs)} calibrations for {n} images: give one (for every image) '
                     'or one per image')
  return calibs


class Detector:
  """A restored detector that maps images to detections in original pixels."""

  def __init__(self, config: ml_collections.ConfigDict, model, variables: dict, meta: dict,
               calib: Calib | None = None):
    """
    Args:
      config: resolved config (``inference.restore`` returns one).
      model: the flax module.
      variables: ``{'params', 'batch_stats'}``.
      meta: the checkpoint's meta (``class_names``, ``category_ids``; multi_pose:
        ``keypoint_names`` and ``skeleton``, the COCO ones when absent and J = 17).
      calib: ddd only: the camera of images that come without one (:func:`as_calib`); None:
        the official demo's P2, with a warning.
    """
    self.config = config
    self.class_names = list(meta['class_names'])
    self.category_ids = [int(c) for c in meta['category_ids']]
    self.keypoint_names, self.skeleton = visualize.keypoint_layout(
        config.data.get('num_joints'), meta.get('keypoint_names'), meta.get('skeleton'))
    self.is_3d = config.task == 'ddd'
    if calib is not None and not self.is_3d:
      raise ValueError(f"calib is for monocular 3D models (config.task='ddd'), not "
                       f'{config.task!r}')
    self.calib = None if calib is None else as_calib(calib)
    self._variables = jax.device_put(variables)
    self._predictor = inference.Predictor(config, model)
    self._warned_default_calib = False
    if self.is_3d:
      from centernet_jax.tasks import ddd

      # The task's 3D post-process (docs/parity.md 4.13) keeping every detection: the
      # Detector's own score_threshold decides, as for the other tasks.
      post = config.copy_and_resolve_references()
      post.eval.peak_thresh = float('-inf')
      self._post_process = ddd.make_post_process(post)

  @classmethod
  def from_checkpoint(cls, config: ml_collections.ConfigDict, path: str,
                      step: int | None = None, calib: Calib | None = None) -> Detector:
    """Restores from a workdir, its checkpoints folder or one ``checkpoints/<step>`` folder."""
    restored = inference.restore(config, path, step)
    return cls(restored.config, restored.model, restored.variables, restored.meta, calib)

  def calibration(self, image: str | np.ndarray, calib: Calib | None = None
                  ) -> tuple[np.ndarray, str]:
    """The camera a ddd model uses for one image, and where it came from.

    Args:
      image: the image (a path is looked up in the KITTI layout: :func:`kitti_calib_path`).
      calib: this image's camera (:func:`as_calib`), first choice.

    Returns:
      (P2 [3, 4] float32, source): source is the calib file's path, 'given' (an array),
      'detector' (the Detector's ``calib``) or :data:`DEFAULT_CALIB_SOURCE`.
    """
    if calib is not None:
      return as_calib(calib), (os.fspath(calib) if isinstance(calib, str | os.PathLike)
                               else 'given')
    found = kitti_calib_path(image) if isinstance(image, str | os.PathLike) else None
    if found is not None:
      return as_calib(found), found
    if self.calib is not None:
      return self.calib, 'detector'
    from centernet_jax.tasks import ddd

    if not self._warned_default_calib:
      self._warned_default_calib = True
      logging.warning('no camera calibration given for a monocular 3D (ddd) model: using the '
                      "official demo's KITTI P2 (tasks.ddd.DEFAULT_CALIB); the 3D boxes are only "
                      'right for images from that camera. Give --calib FILE (a KITTI calib file) '
                      'or keep the images in the KITTI layout (image_2/<id>.png, calib/<id>.txt)')
    return ddd.DEFAULT_CALIB.copy(), DEFAULT_CALIB_SOURCE

  def __call__(self, images: Sequence[str | np.ndarray],
               score_threshold: float = DEFAULT_SCORE_THRESHOLD,
               calib: Calib | Sequence[Calib | None] | None = None) -> list[list[dict]]:
    """Detects objects.

    Args:
      images: file paths, or uint8 arrays [H, W, 3] in RGB order (or [H, W] grayscale).
      score_threshold: drop detections scoring below this (0.0: all K).
      calib: ddd only: one camera for every image or one per image (entries may be None), as
        :meth:`calibration` takes; None: each image's (:meth:`calibration`).

    Returns:
      For each image, detections sorted by score: dicts with ``bbox_xyxy`` [x1, y1, x2, y2] in
      original pixels (COCO's ``bbox`` is [x, y, w, h]: a different key for a different
      format), ``score``, ``label`` (contiguous), ``category_id`` (original id) and
      ``category_name``; multi_pose adds ``keypoints`` [[x, y]] * J in original pixels (clipped
      to the image, as boxes) and ``keypoint_scores`` [J] (the joint heatmap's score of the peak
      a joint snapped to; 0 where the regressed position was kept); ddd adds ``alpha``,
      ``dimensions`` [h, w, l], ``location`` [x, y, z] (the bottom centre), ``rotation_y``,
      ``corners`` [8, 3] (metres, camera coordinates), ``corners_2d`` [8, 2] (their projection,
      image pixels) and ``kitti`` (the KITTI result line), its 2D box not clipped (as the
      evaluation's).

    Raises:
      ValueError: ``calib`` for a model other than ddd, or a camera :func:`as_calib` rejects.
    """
    if calib is not None and not self.is_3d:
      raise ValueError(f"calib is for monocular 3D models (config.task='ddd'), not "
                       f'{self.config.task!r}')
    calibs = _per_image(calib, len(images))
    results = []
    for image, one_calib in zip(images, calibs, strict=True):
      batch = inference.preprocess(inference.read_image(
          image, str(self.config.data.get('exif_orientation', 'apply'))), self.config.data)
      if self.is_3d:
        p2, _ = self.calibration(image, one_calib)
        # Mapped back unclipped, as the evaluation (the official ddd_post_process_2d).
        out = self._predictor.detect(self._variables, batch, clip=False)
        results.append(self._detections_3d(self._post_process(out, p2[None])[0], p2,
                                           score_threshold))
        continue
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

  def _detections_3d(self, objects: dict, p2: np.ndarray, score_threshold: float) -> list[dict]:
    """One image's ``tasks.ddd`` post-processed objects as detection dicts, sorted by score.

    Each: bbox_xyxy, score, label, category_id, category_name (as the other tasks), alpha,
    dimensions [h, w, l], location [x, y, z] (bottom centre), rotation_y, corners [8, 3]
    (metres, camera coordinates), corners_2d [8, 2] (image pixels) and kitti (the KITTI result
    line: truncated 0, occluded 0, 2 decimals, as the official save_results; docs/parity.md
    4.13).
    """
    from centernet_jax.data import kitti

    dets = []
    for k in np.argsort(-objects['scores'], kind='stable'):
      score = float(objects['scores'][k])
      if score < score_threshold or score <= 0:
        continue
      label = int(objects['classes'][k])
      corners = np.asarray(objects['corners'][k], np.float32)
      det = {'bbox_xyxy': [float(v) for v in objects['boxes'][k]], 'score': score,
             'label': label, 'category_id': self.category_ids[label],
             'category_name': self.class_names[label], 'alpha': float(objects['alpha'][k]),
             'dimensions': [float(v) for v in objects['dims'][k]],
             'location': [float(v) for v in objects['locations'][k]],
             'rotation_y': float(objects['rotation_y'][k]), 'corners': corners.tolist(),
             'corners_2d': np.asarray(kitti.project(corners, p2), np.float32).tolist()}
      det['kitti'] = kitti.format_label_line({
          'type': det['category_name'], 'truncated': 0.0, 'occluded': 0, 'alpha': det['alpha'],
          'bbox': det['bbox_xyxy'], 'dimensions': det['dimensions'],
          'location': det['location'], 'rotation_y': det['rotation_y'], 'score': score})
      dets.append(det)
    return dets

  def draw(self, image: np.ndarray, dets: list[dict],
           score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> np.ndarray:
    """``image`` [H, W, 3] uint8 RGB with one image's detections (``__call__``'s) drawn; ddd: the
    projected 3D boxes, with a bird's-eye view panel to the right (``visualize.draw_ddd``)."""
    if self.is_3d:
      return visualize.draw_ddd(
          image, np.array([d['corners_2d'] for d in dets], np.float32).reshape(-1, 8, 2),
          np.array([d['corners'] for d in dets], np.float32).reshape(-1, 8, 3),
          np.array([d['score'] for d in dets], np.float32),
          np.array([d['label'] for d in dets], np.int32), self.class_names,
          score_threshold=score_threshold)
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
                  grid: bool = False, calib: Calib | None = None) -> list[str]:
  """Writes ``<name>.json`` and ``<name>.png`` per image (and ``grid.png``); returns the paths.

  Args:
    detector: the detector.
    paths: image files, or folders standing for their images (:func:`expand_images`).
    output: the output folder (created).
    score_threshold: detections scoring below are neither kept nor drawn.
    grid: also write ``grid.png`` with every picture.
    calib: ddd only: one camera for every image (:func:`as_calib`); None: each image's
      (:meth:`Detector.calibration`: its KITTI calib file, else the default).

  The names are the images' stems, made distinct (:func:`output_names`). The json holds the
  image path and :class:`Detector`'s detections (and for keypoint models ``keypoint_names`` and
  the 0-based ``skeleton``; for ddd models ``calib``, the P2 used, and ``calib_source``). The
  pictures are drawn on the pixels the detector saw.
  """
  paths = expand_images(paths)
  if calib is not None and not detector.is_3d:
    raise ValueError(f"--calib is for monocular 3D models (config.task='ddd'), not "
                     f'{detector.config.task!r}')
  os.makedirs(output, exist_ok=True)
  written, drawn = [], []
  for path, name in zip(paths, output_names(paths), strict=True):
    # decoded once, as evaluation decodes (EXIF orientation, 16-bit too)
    pixels = inference.read_image(path, str(detector.config.data.get('exif_orientation', 'apply')))
    camera = {}
    if detector.is_3d:
      p2, source = detector.calibration(path, calib)
      camera = {'calib': p2.tolist(), 'calib_source': source}
      dets = detector([pixels], score_threshold=score_threshold, calib=p2)[0]
    else:
      dets = detector([pixels], score_threshold=score_threshold)[0]
    json_path = os.path.join(output, name + '.json')
    record = {'image': os.path.abspath(path), **camera, 'detections': dets}
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
    written = predict_files(detector, images, FLAGS.output, FLAGS.score_threshold, FLAGS.grid,
                            calib=FLAGS.calib)
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
  flags.DEFINE_string('calib', None, 'ddd models: a KITTI calib file (its P2) for every image '
                      '(default: each image\'s KITTI calib/<id>.txt, else the official demo\'s '
                      'camera).')
  cli.run(main, run_flags=('checkpoint', 'workdir'))
