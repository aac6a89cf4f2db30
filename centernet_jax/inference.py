"""Inference: restore a checkpoint, the compiled predictor, pre-processing and mapping back.

The one library that evaluation, predict, export and the training loop share:

- :func:`restore` builds the model a checkpoint holds (its class count resolved from the
  checkpoint) and reads its variables, against abstract variables of a full-size input
  (:func:`input_hw`: the hourglass models reject small ones).
- :class:`Predictor` jits the task's predict function once (a second evaluation compiles
  nothing) and maps every x, y array the task names (``task.POINT_KEYS``) from output-map
  coordinates back to original image pixels.
- :func:`normalize` and :func:`preprocess`: the evaluation pre-processing in numpy (letterbox
  geometry from ``boxes.py``); the tf pipeline does the same for evaluation batches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from centernet_jax import boxes, checkpoint, models, sharding, tasks
from centernet_jax.data import config as data_config

# --- Restore -------------------------------------------------------------------------------


def input_hw(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """A valid full-size input of the config's model: the training canvas (h, w).

  ``config.data.input_hw`` when set (ddd: (384, 1280)), else ``data.input_size`` square.
  Variables do not depend on the input size, but the hourglass models reject inputs their
  down-sampling cannot divide (64 px among them), so shapes are traced at this size.
  """
  return data_config.input_hw(config.data)


def abstract_variables(model, hw: Sequence[int]) -> dict:
  """Shapes and dtypes of ``{'params', 'batch_stats'}`` for an H x W input, nothing allocated."""
  images = jax.ShapeDtypeStruct((1, int(hw[0]), int(hw[1]), 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images)
  return {'params': shapes['params'], 'batch_stats': shapes.get('batch_stats', {})}


class Restored(NamedTuple):
  """What :func:`restore` returns.

  Attributes:
    config: the config with ``model.num_classes`` and ``model.heads`` resolved (unlocked copy).
    model: the flax module.
    variables: ``{'params', 'batch_stats'}`` on the host.
    step: the checkpoint's step.
    meta: the checkpoint's meta (model config, ``class_names``, ``category_ids``).
  """
  config: ml_collections.ConfigDict
  model: Any
  variables: dict
  step: int
  meta: dict


def restore(config: ml_collections.ConfigDict, path: str, step: int | None = None) -> Restored:
  """Builds the model a checkpoint holds and restores its variables.

  Args:
    config: experiment config (``model.num_classes`` may be -1: taken from the checkpoint's
      classes).
    path: a workdir, its ``checkpoints`` folder, or one ``checkpoints/<step>`` folder.
    step: which step (default: the one the path names, else the latest).

  Returns:
    A :class:`Restored`.

  Raises:
    FileNotFoundError: no checkpoint there, or none of ``step`` (the message lists the steps
      there are).
    checkpoint.ModelMismatchError: the checkpoint holds another model than the config's.
  """
  from centernet_jax.cli import READ_ONLY_FILTER

  # Orbax announces read-only opening in words that read like a permissions problem.
  logging.getLogger('absl').addFilter(READ_ONLY_FILTER)
  ckpt_dir, path_step = checkpoint.split_checkpoint_path(path)
  ckpt = checkpoint.Checkpointer(ckpt_dir, read_only=True)
  try:
    if step is not None and step not in (steps := ckpt.all_steps()):
      raise FileNotFoundError(
          f'no checkpoint of step {step} in {ckpt_dir}; ' +
          (f'the steps there are {", ".join(str(s) for s in sorted(steps))}' if steps
           else 'there is no checkpoint there'))
    step = step if step is not None else path_step
    step = step if step is not None else ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f'no checkpoint found in {ckpt_dir}')
    meta = ckpt.restore_meta(step)
    config = tasks.resolve_config(config, len(meta['class_names']))
    model = models.build_model(config.model)
    step, variables = ckpt.restore_variables(step, abstract_variables(model, input_hw(config)),
                                             {'model': config.model.to_dict()})
  finally:
    ckpt.close()
  return Restored(config, model, variables, step, meta)


def local_mesh() -> Mesh:
  """A mesh over this process's devices: inference shards images, not hosts."""
  return sharding.make_mesh(jax.local_devices())


def to_local(variables: dict, mesh: Mesh) -> dict:
  """Copies (replicated, possibly multi-host) variables onto ``mesh``, replicated."""
  host = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array)
                      else np.asarray(x), variables)
  return jax.device_put(host, NamedSharding(mesh, P()))


# --- Pre-processing ------------------------------------------------------------------------


def normalize(images, *, mean: Sequence[float], std: Sequence[float], channel_order: str):
  """RGB pixels on the 0-255 scale -> the network's input (numpy, or jnp for a jax array).

  ``/ 255``, the model's channel order, then ``(x - mean) / std`` with statistics in that order
  (the order of ``data/transforms.py``, so float32 results are equal bit for bit).

  Args:
    images: [..., 3] uint8 or float RGB, 0-255.
    mean, std: [3] per channel of the model's channel order.
    channel_order: 'BGR' (official weights) or 'RGB'.

  Returns:
    [..., 3] float32.
  """
  xp = jnp if isinstance(images, jax.Array) else np  # tracers are jax.Arrays too
  if channel_order not in ('BGR', 'RGB'):
    raise ValueError(f"config.data.channel_order must be 'BGR' or 'RGB', got {channel_order!r}")
  images = images.astype(xp.float32) / xp.float32(255.0)
  if channel_order == 'BGR':
    images = images[..., ::-1]
  return (images - xp.asarray(mean, xp.float32)) / xp.asarray(std, xp.float32)


def read_image(image: str | os.PathLike | np.ndarray, exif_orientation: str = 'apply'
               ) -> np.ndarray:
  """An image file or array as uint8 RGB [H, W, 3].

  Files are decoded with TensorFlow as the evaluation pipeline decodes them (PIL's JPEG decoder
  differs by a few levels), so predict sees the pixels evaluation sees.

  Args:
    image: a file path, or a uint8 array [H, W, 3] RGB, [H, W, 4] RGBA or [H, W] grayscale.
    exif_orientation: 'apply' (a JPEG's EXIF orientation is applied, as training and evaluation
      do: ``config.data.exif_orientation``) or 'ignore'.

  Raises:
    DataError: missing or undecodable file, or an array of another dtype or shape.
  """
  from centernet_jax.data import sources  # TensorFlow only when an image is read

  return sources.read_image(image, exif_orientation)


def preprocess(image: np.ndarray, data_cfg: ml_collections.ConfigDict) -> dict:
  """One uint8 RGB image as an evaluation batch of 1 (the keys of the eval iterator).

  Args:
    image: [h, w, 3] uint8 RGB (:func:`read_image`).
    data_cfg: ``config.data`` (``eval_mode``, ``eval_pad``, ``eval_size``, ``input_hw`` for
      'fit_width', normalisation).

  Returns:
    dict: image [1, H, W, 3] float32 normalised on its letterbox canvas, center [1, 2] and
    scale [1, 2] float32 (the letterbox affine), input_hw [1, 2] and orig_hw [1, 2] int32.
  """
  orig_hw = image.shape[:2]
  mode = data_cfg.eval_mode
  canvas = boxes.canvas_hw(orig_hw, mode, pad=data_cfg.eval_pad,
                           size=data_config.eval_canvas_size(data_cfg))
  pixels, _ = boxes.letterbox(image, canvas, mode)
  center, scale = boxes.letterbox_center_scale(orig_hw, canvas, mode)
  pixels = normalize(pixels, mean=data_cfg.mean, std=data_cfg.std,
                     channel_order=data_cfg.channel_order)
  return {'image': pixels[None], 'center': center[None], 'scale': scale[None],
          'input_hw': np.array([canvas], np.int32), 'orig_hw': np.array([orig_hw], np.int32)}


# --- Prediction ----------------------------------------------------------------------------


def to_original(dets: dict, batch: dict, stride: Sequence[float], point_keys: Sequence[str], *,
                clip: bool = False) -> dict:
  """Maps detections from output-map coordinates to each image's original pixels.

  Args:
    dets: numpy detections of a batch of B images; each ``point_keys`` entry is [B, ..., 2n]
      with x, y pairs in output-map coordinates; other entries pass through.
    batch: center [B, 2], scale [B, 2], input_hw [B, 2] (each image's canvas) and, for
      ``clip``, orig_hw [B, 2] (the eval iterator's or :func:`preprocess`'s keys).
    stride: (x, y) canvas pixels per output-map pixel.
    point_keys: the task's ``POINT_KEYS``.
    clip: clip x to [0, w] and y to [0, h] of each image.

  Returns:
    ``dets`` with the point entries in original pixels (float32).
  """
  out = dict(dets)
  factor = np.asarray(stride, np.float32)
  for key in point_keys:
    if key not in dets:  # an optional point array whose head the model lacks
      continue
    points = np.asarray(dets[key], np.float32)
    on_canvas = (points.reshape(points.shape[:-1] + (-1, 2)) * factor).reshape(points.shape)
    mapped = []
    for i in range(points.shape[0]):
      in_h, in_w = (int(v) for v in batch['input_hw'][i])
      inverse = boxes.get_affine_transform(batch['center'][i], batch['scale'][i], (in_w, in_h),
                                           inv=True)
      mapped.append(boxes.points_to_original(on_canvas[i], inverse,
                                             batch['orig_hw'][i] if clip else None))
    out[key] = np.stack(mapped) if mapped else points
  return out


class Predictor:
  """The task's predict function, jitted once, with mapping back to original pixels.

  ``predictor(variables, images)`` runs the network and decoding on device (detections in
  output-map coordinates); :meth:`to_original` maps them back; :meth:`detect` does both. The
  jitted function lives as long as the predictor, so calls with shapes (and shardings) seen
  before compile nothing.
  """

  def __init__(self, config: ml_collections.ConfigDict, model, *, merge_later: bool = False):
    """
    Args:
      config: resolved config (``config.task``, ``config.eval``, ``config.data``).
      model: the flax module.
      merge_later: return detections before NMS (multi-scale: merged after mapping back).
    """
    self.config = config
    self.model = model
    self.task = tasks.get(config.task)
    self._predict = jax.jit(self.task.make_predict_fn(config, model, merge_later=merge_later))
    self._strides: dict[tuple[int, int], np.ndarray] = {}

  def __call__(self, variables: dict, images: jax.Array) -> dict:
    """images [B, H, W, 3] float32 normalised -> device detections (output-map coordinates)."""
    return self._predict(variables, images)

  def stride(self, canvas: Sequence[int]) -> np.ndarray:
    """(x, y) canvas pixels per output-map pixel for an H x W input (``models.output_hw``)."""
    key = (int(canvas[0]), int(canvas[1]))
    if key not in self._strides:
      out_h, out_w = models.output_hw(self.model, *key)
      self._strides[key] = np.array([key[1] / out_w, key[0] / out_h], np.float32)
    return self._strides[key]

  def to_original(self, dets: dict, batch: dict, *, clip: bool = False) -> dict:
    """Host detections of ``batch`` with the task's point arrays in original pixels."""
    return to_original(dets, batch, self.stride(batch['image'].shape[1:3]),
                       self.task.POINT_KEYS, clip=clip)

  def detect(self, variables: dict, batch: dict, *, clip: bool = False) -> dict:
    """Predicts ``batch['image']`` and maps back: numpy detections in original pixels."""
    dets = jax.device_get(self(variables, batch['image']))
    return self.to_original(dets, batch, clip=clip)
