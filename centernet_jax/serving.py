r"""Serving side of an export: load an artifact and run it, without the model code.

``export.py`` builds an export directory (a StableHLO file or a TF SavedModel, and
``export.json``); this module loads it and needs numpy, jax (StableHLO) or tensorflow
(SavedModel) only, plus the numpy letterbox geometry of ``boxes.py``::

  from centernet_jax import serving

  served = serving.load('DIR')                                # either format; checks the input
  H, W = served.input_hw
  canvas, inverse = serving.letterbox(image, (H, W), served.metadata['eval_mode'])
  out = served(canvas[None])                                  # boxes [1, K, 4] on the canvas
  boxes = serving.boxes_to_original(out['boxes'][0], inverse, image.shape[:2])
  one = served.to_original({k: v[0] for k, v in out.items()}, inverse, image.shape[:2])

The artifact's boxes are x1, y1, x2, y2 in input-canvas pixels (a pose model's keypoints
[B, K, J, 2] x, y too); the letterbox's inverse affine maps them back to the original image.
Every evaluation mode letterboxes the same way: 'keep_res' pads, 'fixed_res' fits the whole
image, 'fit_width' (ddd) scales it to the canvas width, cropped or bordered above and below.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np

from centernet_jax.boxes import boxes_to_original, letterbox, points_to_original

STABLEHLO_FILE = 'model.stablehlo'
METADATA_FILE = 'export.json'

__all__ = ['METADATA_FILE', 'STABLEHLO_FILE', 'ServedModel', 'ServingError', 'boxes_to_original',
           'letterbox', 'load', 'points_to_original']


class ServingError(ValueError):
  """A call of an exported model that cannot be served (wrong shape or dtype)."""


class ServedModel:
  """A loaded artifact that checks its input before calling it.

  ``model(images)`` -> dict of numpy boxes [B, K, 4], scores [B, K], classes [B, K] (and
  ``valid`` [B, K] after soft-NMS; keypoints [B, K, J, 2] and keypoint_scores [B, K, J] for
  multi_pose); the raw callable is ``model.fn`` (``jax.export.Exported.call`` or the TF
  ``serving_default``).
  """

  def __init__(self, directory: str, fn: Callable, metadata: dict):
    self.directory = directory
    self.fn = fn
    self.metadata = metadata
    spec = metadata['input']
    self.shape = tuple(spec['shape'])
    self.dtype = np.dtype(spec['dtype'])

  @property
  def input_hw(self) -> tuple[int, int]:
    """(H, W) of the canvas the artifact takes."""
    return int(self.shape[1]), int(self.shape[2])

  def check(self, images) -> np.ndarray:
    """``images`` as an array, or a ServingError naming the expected shape and dtype."""
    images = np.asarray(images)
    want = '[' + ', '.join('B' if d is None else str(d) for d in self.shape) + ']'
    if images.ndim != len(self.shape) or any(
        d is not None and d != n for d, n in zip(self.shape, images.shape, strict=True)):
      raise ServingError(f'{self.directory}: images must be {self.dtype} {want}, got shape '
                         f'{list(images.shape)}')
    if images.dtype != self.dtype:
      raise ServingError(f'{self.directory}: images must be {self.dtype} {want}, got dtype '
                         f'{images.dtype}')
    return images

  def __call__(self, images) -> dict:
    out = self.fn(self.check(images))
    return {k: np.asarray(v) for k, v in out.items()}

  @property
  def point_keys(self) -> tuple[str, ...]:
    """Outputs holding x, y pairs in input-canvas pixels (boxes; keypoints for multi_pose)."""
    return tuple(k for k, v in sorted(self.metadata['outputs'].items())
                 if 'input-canvas pixels' in v.get('units', ''))

  def to_original(self, outputs: dict, inverse_affine: np.ndarray, orig_hw,
                  clip: bool | None = None) -> dict:
    """One image's outputs (no batch axis) with every :attr:`point_keys` array mapped to the
    original image's pixels by the letterbox's inverse affine.

    ``clip``: clip the points to the image. Default as predict: yes, except for ddd, whose 3D
    post-process (``centernet_jax.tasks.ddd.objects_3d``) takes the unclipped centres, as the
    official ``ddd_post_process_2d``.
    """
    if clip is None:
      clip = self.metadata.get('task') != 'ddd'
    out = dict(outputs)
    for key in self.point_keys:
      out[key] = points_to_original(out[key], inverse_affine, orig_hw if clip else None)
    return out


def load(directory: str) -> ServedModel:
  """Loads an export directory (either format) with its ``export.json``."""
  meta_path = os.path.join(directory, METADATA_FILE)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f'{meta_path} not found: not an export directory')
  with open(meta_path) as f:
    info = json.load(f)
  if info['format'] == 'stablehlo':
    import jax

    with open(os.path.join(directory, STABLEHLO_FILE), 'rb') as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    return ServedModel(directory, exported.call, info)
  import tensorflow as tf

  loaded = tf.saved_model.load(directory)
  signature = loaded.signatures['serving_default']

  def fn(images):
    return signature(images=tf.constant(images))

  fn.loaded = loaded  # the signature's variables live as long as the loaded object
  return ServedModel(directory, fn, info)
