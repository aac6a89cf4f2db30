r"""Export a trained detector for serving: StableHLO (``jax.export``) or a TF SavedModel.

Command line::

  python -m centernet_jax.export --config configs/X.py --workdir W \
      --format {stablehlo,savedmodel} --output DIR [--batch 0] [--height H --width W] \
      [--input {uint8,float}] [--step N]

The artifact holds the whole inference, weights included: normalisation (uint8 input), network,
sigmoid, peak extraction, top-K (and whatever else ``tasks.make_predict_fn`` decodes), and the
scaling of boxes from the output map to the input canvas. ``DIR/export.json`` records the
signature, the pre-processing and the label space (class names, original category ids).

Signature (``B`` symbolic unless ``--batch N > 0``):
  images  [B, H, W, 3] uint8 RGB (``--input uint8``), or float32 already normalised like
          ``data/transforms.py`` does (channel order, /255, mean/std; ``--input float``).
  ->  boxes   [B, K, 4] float32 x1, y1, x2, y2 in input-canvas pixels: the output-map box times
              (W / w_out, H / h_out), = down_ratio for CenterNet; not clipped.
      scores  [B, K] float32, descending.
      classes [B, K] int32 contiguous labels (``export.json`` maps them to names and ids).

The caller letterboxes each image onto the H x W canvas (:func:`letterbox`) and maps boxes back
to original pixels with the returned inverse affine (:func:`boxes_to_original`). Both are numpy
and PIL only; :func:`load` needs jax (StableHLO) or tensorflow (SavedModel), not the model
code, and this module imports the model code only when exporting.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from centernet_jax import boxes as boxes_lib
from centernet_jax import config_lib

FLAGS = flags.FLAGS

FORMATS = ('stablehlo', 'savedmodel')
INPUTS = ('uint8', 'float')
STABLEHLO_FILE = 'model.stablehlo'
METADATA_FILE = 'export.json'
# StableHLO compatibility window TensorFlow's XlaCallModule can read (see _tensorflow_compatible).
TF_STABLEHLO_REQUIREMENT = 'WEEK_12'


class ExportError(ValueError):
  """An export request or a call of an exported model that cannot be served."""


# --- Building the serving function ---------------------------------------------------------


def output_hw(model, height: int, width: int) -> tuple[int, int]:
  """The network's output map size for an H x W input (traced, nothing computed)."""
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, height, width, 3)), train=False))
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, height, width, 3)), train=False),
                       variables)[-1]
  first = next(iter(out.values()))
  return int(first.shape[1]), int(first.shape[2])


def make_serving_fn(config: ml_collections.ConfigDict, model, *, height: int, width: int,
                    input_dtype: str = 'uint8') -> Callable[[dict, jax.Array], dict]:
  """``serve(variables, images) -> {boxes, scores, classes}`` with boxes in input pixels.

  Args:
    config: experiment config (``config.data`` normalisation, ``config.model``, ``config.eval``).
    model: the flax module.
    height, width: input canvas (fixed in the artifact).
    input_dtype: 'uint8' (RGB pixels, normalised inside) or 'float' (already normalised).

  Returns:
    The function; its images are [B, height, width, 3] uint8 or float32.
  """
  from centernet_jax import tasks

  if input_dtype not in INPUTS:
    raise ExportError(f'--input must be one of {INPUTS}, got {input_dtype!r}')
  data = config.data
  if data.channel_order not in ('BGR', 'RGB'):
    raise ExportError(f"config.data.channel_order must be 'BGR' or 'RGB', "
                      f'got {data.channel_order!r}')
  if tasks.multi_scale(config):
    raise ExportError(f'config.eval.test_scales={tuple(config.eval.test_scales)}: an export '
                      'serves one scale; set --config.eval.test_scales=1.0')
  out_h, out_w = output_hw(model, height, width)
  if tasks.task_of(config.model) == 'ctdet':
    down = config.model.down_ratio
    if (out_h * down, out_w * down) != (height, width):
      raise ExportError(
          f'--height {height} --width {width} gives a {out_h}x{out_w} output map, not the input '
          f'/ config.model.down_ratio={down}: use sizes the network divides exactly (multiples '
          'of 32 for the ResNet and DLA backbones)')
  scale = jnp.array([width / out_w, height / out_h] * 2, jnp.float32)
  mean = jnp.array(data.mean, jnp.float32)
  std = jnp.array(data.std, jnp.float32)
  bgr = data.channel_order == 'BGR'
  predict = tasks.make_predict_fn(config, model)

  def serve(variables: dict, images: jax.Array) -> dict:
    if input_dtype == 'uint8':
      images = images.astype(jnp.float32) / 255.0
      if bgr:
        images = images[..., ::-1]
      images = (images - mean) / std
    out = predict(variables, images)
    served = {'boxes': out['boxes'] * scale, 'scores': out['scores'],
              'classes': out['classes'].astype(jnp.int32)}
    if 'valid' in out:  # after soft-NMS fewer than K may survive
      served['valid'] = out['valid']
    return served

  return serve


def input_spec(batch: int, height: int, width: int, input_dtype: str):
  """(shape spec string for jax.export / jax2tf, numpy dtype). ``batch <= 0``: symbolic."""
  b = 'b' if batch <= 0 else str(batch)
  return f'({b}, {height}, {width}, 3)', np.uint8 if input_dtype == 'uint8' else np.float32


def export_stablehlo(serve: Callable, variables: dict, *, batch: int, height: int, width: int,
                     input_dtype: str) -> jax.export.Exported:
  """Lowers ``serve`` with the variables embedded as constants (CPU and CUDA platforms)."""
  shape, dtype = input_spec(batch, height, width, input_dtype)
  spec = jax.export.symbolic_args_specs(
      [jax.ShapeDtypeStruct((max(batch, 1), height, width, 3), dtype)], [shape])[0]
  variables = jax.device_put(variables)
  return jax.export.export(jax.jit(lambda images: serve(variables, images)),
                           platforms=('cpu', 'cuda'))(spec)


def _top_k_by_sort(operand: jax.Array, *, k: int, axis: int = -1) -> list[jax.Array]:
  """lax.top_k as a stable descending sort + slice (the same values, indices and tie order)."""
  axis = axis % operand.ndim
  iota = jax.lax.broadcasted_iota(jnp.int32, operand.shape, axis)
  neg, idx = jax.lax.sort((-operand, iota), dimension=axis, num_keys=1, is_stable=True)
  return [-jax.lax.slice_in_dim(neg, 0, k, axis=axis), jax.lax.slice_in_dim(idx, 0, k, axis=axis)]


@contextlib.contextmanager
def _tensorflow_compatible(requirement: str, sort_top_k: bool = True):
  """Within the block, jax.export writes StableHLO that TensorFlow's XlaCallModule can run.

  jax 0.10.2 writes StableHLO 1.15 (its WEEK_4 window); TensorFlow 2.21 reads up to 1.13.7 and
  fails at run time ("failed to deserialize portable artifact": the ``chlo.top_k`` composite).
  Serialised for the 1.13.7 window, the composite is read, but TF's shape refinement rejects its
  decomposition under a symbolic batch ("'stablehlo.sort' op has dynamic shapes"; with a fixed
  batch it runs). So this block (1) swaps jax's private serialiser for one targeting the
  ``requirement`` window (WEEK_12 = 1.13.7 here; jax has no public knob) and (2) if
  ``sort_top_k``, lowers ``lax.top_k`` as a stable sort + slice (slower: a full sort).
  :func:`export_savedmodel` runs the saved model once, so a mismatch fails at export time.
  """
  from jax._src.export import _export
  from jax._src.interpreters import mlir
  from jax._src.lax import lax as lax_internal
  from jax._src.lib.mlir.dialects import hlo

  version = hlo.get_version_from_compatibility_requirement(
      getattr(hlo.StablehloCompatibilityRequirement, requirement))
  original_bytecode = _export._module_to_bytecode
  original_top_k = mlir._lowerings[lax_internal.top_k_p]

  def to_bytecode(module):
    return _export._jax.mlir.serialize_portable_artifact(
        module, version, _export.xb.get_backend().serialize_with_sdy)

  _export._module_to_bytecode = to_bytecode
  if sort_top_k:
    mlir.register_lowering(lax_internal.top_k_p,
                           mlir.lower_fun(_top_k_by_sort, multiple_results=True))
  try:
    yield version
  finally:
    _export._module_to_bytecode = original_bytecode
    mlir._lowerings[lax_internal.top_k_p] = original_top_k


def export_savedmodel(serve: Callable, variables: dict, output: str, *, batch: int, height: int,
                      width: int, input_dtype: str) -> None:
  """Writes a TF SavedModel with a ``serving_default`` signature (weights as tf.Variables)."""
  import tensorflow as tf
  from jax.experimental import jax2tf

  shape, dtype = input_spec(batch, height, width, input_dtype)
  module = tf.Module()
  # Weights as variables (not graph constants): the SavedModel keeps them under variables/.
  module.variables_ = tf.nest.map_structure(lambda x: tf.Variable(np.asarray(x),
                                                                  trainable=False), variables)
  converted = jax2tf.convert(serve, polymorphic_shapes=[None, shape], with_gradient=False,
                             native_serialization_platforms=('cpu', 'cuda'))
  signature = tf.TensorSpec([batch if batch > 0 else None, height, width, 3],
                            tf.as_dtype(dtype), name='images')

  @tf.function(input_signature=[signature], autograph=False)
  def serving_default(images):
    return converted(module.variables_, images)

  module.serving_default = serving_default
  # Saving traces and serialises; only a symbolic batch needs top_k as a sort.
  with _tensorflow_compatible(TF_STABLEHLO_REQUIREMENT, sort_top_k=batch <= 0):
    tf.saved_model.save(module, output, signatures={'serving_default': serving_default})
  # Run the reloaded model once so a StableHLO version TF cannot read fails here, not in serving.
  probe = np.zeros([max(batch, 1), height, width, 3], dtype)
  try:
    tf.saved_model.load(output).signatures['serving_default'](images=tf.constant(probe))
  except tf.errors.OpError as e:
    raise ExportError(f'{output}: the SavedModel does not run in TensorFlow {tf.__version__}: '
                      f'{_first_error(e.message)}') from None


def _first_error(message: str) -> str:
  lines = [ln.strip() for ln in (message or '').splitlines() if 'error' in ln.lower()]
  return lines[0] if lines else (message or '').strip()


# --- Restoring and writing -----------------------------------------------------------------


def metadata(config: ml_collections.ConfigDict, meta: dict, *, step: int, fmt: str, batch: int,
             height: int, width: int, input_dtype: str, out_shapes: dict) -> dict:
  """What a server needs besides the artifact: signature, pre-processing, labels."""
  data = config.data
  outputs = {k: {'dtype': str(v.dtype), 'shape': ['B', *v.shape[1:]]}
             for k, v in sorted(out_shapes.items())}
  outputs['boxes']['units'] = 'x1, y1, x2, y2 in input-canvas pixels'
  if 'valid' in outputs:
    outputs['valid']['units'] = 'False: no detection (score 0)'

  return {
      'format': fmt,
      'file': STABLEHLO_FILE if fmt == 'stablehlo' else 'saved_model.pb',
      'signature': 'serving_default' if fmt == 'savedmodel' else 'call',
      'input': {'name': 'images', 'dtype': 'uint8' if input_dtype == 'uint8' else 'float32',
                'shape': [batch if batch > 0 else None, height, width, 3],
                'pixels': ('RGB 0..255, normalised inside' if input_dtype == 'uint8' else
                           f'already normalised: {data.channel_order} order, /255, '
                           '(x - mean) / std')},
      'outputs': outputs,
      'channel_order': data.channel_order,
      'mean': [float(v) for v in data.mean],
      'std': [float(v) for v in data.std],
      'eval_mode': data.eval_mode,
      'down_ratio': int(config.model.down_ratio),
      'K': int(config.eval.K),
      'flip_test': bool(config.eval.flip_test),
      'class_names': list(meta['class_names']),
      'category_ids': [int(c) for c in meta['category_ids']],
      'model': config.model.to_dict(),
      'step': int(step),
      'jax_version': jax.__version__,
      'created': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
  }


def default_hw(config: ml_collections.ConfigDict) -> int:
  """The evaluation canvas of an input_size image: eval_size (fixed_res) or (size | pad) + 1."""
  data = config.data
  if data.eval_mode == 'fixed_res':
    return int(data.eval_size)
  return (int(data.input_size) | int(data.eval_pad)) + 1


def run(config: ml_collections.ConfigDict, workdir: str, fmt: str, output: str, *,
        batch: int = 0, height: int | None = None, width: int | None = None,
        input_dtype: str = 'uint8', step: int | None = None) -> dict:
  """Restores the checkpoint and writes the artifact and ``export.json`` into ``output``.

  Returns:
    The metadata written.
  """
  from centernet_jax import evaluate

  if fmt not in FORMATS:
    raise ExportError(f'--format must be one of {FORMATS}, got {fmt!r}')
  if input_dtype not in INPUTS:
    raise ExportError(f'--input must be one of {INPUTS}, got {input_dtype!r}')
  height = height or default_hw(config)
  width = width or default_hw(config)
  if height <= 0 or width <= 0:
    raise ExportError(f'--height and --width must be positive, got {height} x {width}')
  config, model, variables, step, meta = evaluate.load_for_inference(config, workdir, step)
  serve = make_serving_fn(config, model, height=height, width=width, input_dtype=input_dtype)
  os.makedirs(output, exist_ok=True)
  if fmt == 'stablehlo':
    exported = export_stablehlo(serve, variables, batch=batch, height=height, width=width,
                                input_dtype=input_dtype)
    with open(os.path.join(output, STABLEHLO_FILE), 'wb') as f:
      f.write(exported.serialize())
  else:
    export_savedmodel(serve, variables, output, batch=batch, height=height, width=width,
                      input_dtype=input_dtype)
  _, dtype = input_spec(batch, height, width, input_dtype)
  out_shapes = jax.eval_shape(serve, variables,
                              jax.ShapeDtypeStruct((max(batch, 1), height, width, 3), dtype))
  info = metadata(config, meta, step=step, fmt=fmt, batch=batch, height=height, width=width,
                  input_dtype=input_dtype, out_shapes=out_shapes)
  with open(os.path.join(output, METADATA_FILE), 'w') as f:
    json.dump(info, f, indent=1)
  return info


# --- Serving side: no model code ------------------------------------------------------------


class ServedModel:
  """A loaded artifact that checks its input before calling it.

  ``model(images)`` -> dict of numpy boxes [B, K, 4], scores [B, K], classes [B, K]; the raw
  callable is ``model.fn`` (``jax.export.Exported.call`` or the TF ``serving_default``).
  """

  def __init__(self, directory: str, fn: Callable, metadata_: dict):
    self.directory = directory
    self.fn = fn
    self.metadata = metadata_
    spec = metadata_['input']
    self.shape = tuple(spec['shape'])
    self.dtype = np.dtype(spec['dtype'])

  def check(self, images) -> np.ndarray:
    images = np.asarray(images)
    want = '[' + ', '.join('B' if d is None else str(d) for d in self.shape) + ']'
    if images.ndim != len(self.shape) or any(
        d is not None and d != n for d, n in zip(self.shape, images.shape, strict=True)):
      raise ExportError(f'{self.directory}: images must be {self.dtype} {want}, got shape '
                        f'{list(images.shape)}')
    if images.dtype != self.dtype:
      raise ExportError(f'{self.directory}: images must be {self.dtype} {want}, got dtype '
                        f'{images.dtype}')
    return images

  def __call__(self, images) -> dict:
    out = self.fn(self.check(images))
    return {k: np.asarray(v) for k, v in out.items()}


def load(directory: str) -> ServedModel:
  """Loads an exported directory (either format) with its ``export.json``."""
  meta_path = os.path.join(directory, METADATA_FILE)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f'{meta_path} not found: not an export directory')
  with open(meta_path) as f:
    info = json.load(f)
  if info['format'] == 'stablehlo':
    with open(os.path.join(directory, STABLEHLO_FILE), 'rb') as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    return ServedModel(directory, exported.call, info)
  import tensorflow as tf
  loaded = tf.saved_model.load(directory)
  signature = loaded.signatures['serving_default']
  return ServedModel(directory, lambda images: signature(images=tf.constant(images)), info)


def _center_scale(orig_hw: tuple[int, int], input_hw: tuple[int, int], mode: str):
  h, w = orig_hw
  in_h, in_w = input_hw
  if mode == 'keep_res':
    return np.array([w // 2, h // 2], np.float32), np.array([in_w, in_h], np.float32)
  if mode == 'fixed_res':
    s = max(float(w), h * in_w / in_h)
    return np.array([w / 2, h / 2], np.float32), np.array([s, s], np.float32)
  raise ExportError(f"mode must be 'keep_res' or 'fixed_res', got {mode!r}")


def letterbox_affine(orig_hw: tuple[int, int], input_hw: tuple[int, int], mode: str,
                     inv: bool = False) -> np.ndarray:
  """[2, 3] affine from original to input-canvas pixels (``inv``: the way back).

  As the evaluation pre-processing (``data/transforms.eval_transform``): 'keep_res' is a centre
  pad (c = (w // 2, h // 2), s = input size: an integer translation); 'fixed_res' a centred resize
  keeping the aspect ratio (c = (w / 2, h / 2), s = max(h, w) for a square canvas; for H != W, s
  is widened so the whole image fits).
  """
  center, scale = _center_scale(orig_hw, input_hw, mode)
  return boxes_lib.get_affine_transform(center, scale, (input_hw[1], input_hw[0]), inv=inv)


def letterbox(image: np.ndarray, input_hw: tuple[int, int], mode: str = 'keep_res'
              ) -> tuple[np.ndarray, np.ndarray]:
  """Places a uint8 RGB [h, w, 3] image on the H x W input canvas (zero border).

  Returns:
    (canvas [H, W, 3] uint8, [2, 3] inverse affine: input-canvas -> original pixels).
  """
  h, w = image.shape[:2]
  in_h, in_w = input_hw
  inv = letterbox_affine((h, w), input_hw, mode, inv=True)
  if mode == 'keep_res':
    if h > in_h or w > in_w:
      raise ExportError(f'a {h}x{w} image does not fit the {in_h}x{in_w} canvas with '
                        "mode='keep_res' (pad only): use mode='fixed_res' or a larger canvas")
    top, left = in_h // 2 - h // 2, in_w // 2 - w // 2  # exactly the pipeline's pad
    canvas = np.zeros((in_h, in_w, 3), np.uint8)
    canvas[top:top + h, left:left + w] = image
    return canvas, inv
  from PIL import Image

  # cv2.warpAffine (and the pipeline's tf warp) sample canvas pixel p at inv @ p with pixel
  # centres on integers; PIL puts them at +0.5, so shift its offset to sample the same points.
  pil = np.array(inv, np.float64)
  pil[:, 2] += 0.5 - 0.5 * (pil[:, 0] + pil[:, 1])
  canvas = Image.fromarray(image).transform(
      (in_w, in_h), Image.Transform.AFFINE, data=tuple(float(v) for v in pil.reshape(-1)),
      resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
  return np.asarray(canvas), inv


def boxes_to_original(boxes: np.ndarray, inverse_affine: np.ndarray,
                      orig_hw: tuple[int, int]) -> np.ndarray:
  """[..., 4] input-canvas boxes -> original pixels (affine, then clipped to the image)."""
  boxes = np.asarray(boxes, np.float32)
  pts = boxes.reshape(-1, 2)
  pts = pts @ inverse_affine[:, :2].T.astype(np.float32) + inverse_affine[:, 2].astype(np.float32)
  h, w = orig_hw
  return np.clip(pts.reshape(boxes.shape), 0, [w, h, w, h])


def main(argv):
  del argv
  from centernet_jax import checkpoint

  try:
    info = run(FLAGS.config, FLAGS.workdir, FLAGS.format, FLAGS.output, batch=FLAGS.batch,
               height=FLAGS.height, width=FLAGS.width, input_dtype=FLAGS.input, step=FLAGS.step)
  except (checkpoint.ModelMismatchError, ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(json.dumps({k: info[k] for k in ('format', 'input', 'step')}
                   | {'output': os.path.abspath(FLAGS.output)}))


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Work directory holding checkpoints/ (or one checkpoint).')
  flags.DEFINE_string('format', 'stablehlo', f'One of {FORMATS}.')
  flags.DEFINE_string('output', None, 'Output folder.')
  flags.DEFINE_integer('batch', 0, 'Fixed batch size; 0 or -1: symbolic (any batch).')
  flags.DEFINE_integer('height', None, 'Input canvas height (default: data.eval_size for '
                       'fixed_res, else (data.input_size | data.eval_pad) + 1).')
  flags.DEFINE_integer('width', None, 'Input canvas width (same default).')
  flags.DEFINE_string('input', 'uint8', f'Input: {INPUTS} (uint8 RGB, or normalised float32).')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
  flags.mark_flags_as_required(['config', 'workdir', 'output'])
  app.run(main, flags_parser=config_lib.parse_flags)
