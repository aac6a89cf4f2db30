r"""Export a trained detector for serving: StableHLO (``jax.export``) or a TF SavedModel.

Command line::

  python -m centernet_jax.export --workdir W --format {stablehlo,savedmodel} --output DIR \
      [--batch 0] [--height H --width W] [--input {uint8,float}] [--step N] [--config X]

(without ``--config``, the run's saved config ``W/config.json``).

The artifact holds the whole inference, weights included: normalisation (uint8 input), network,
sigmoid, peak extraction, top-K (whatever the task's ``make_predict_fn`` decodes), and the
scaling of boxes (every x, y array of the task's ``POINT_KEYS``) from the output map to the input
canvas. ``DIR/export.json`` records the
signature, the pre-processing and the label space (class names, original category ids).

Signature (``B`` symbolic unless ``--batch N > 0``):
  images  [B, H, W, 3] uint8 RGB (``--input uint8``), or float32 already normalised like
          ``data/transforms.py`` does (channel order, /255, mean/std; ``--input float``).
  ->  boxes   [B, K, 4] float32 x1, y1, x2, y2 in input-canvas pixels: the output-map box times
              (W / w_out, H / h_out), = down_ratio for CenterNet; not clipped.
      scores  [B, K] float32, descending.
      classes [B, K] int32 contiguous labels (``export.json`` maps them to names and ids).
      multi_pose also: keypoints [B, K, J, 2] float32 x, y in input-canvas pixels (scaled as the
              boxes), keypoint_scores [B, K, J] float32 (joint-heatmap score of the peak a joint
              snapped to, 0 where the regressed position was kept); ``export.json`` names the
              joints and the skeleton.

This module only builds artifacts. ``serving.py`` loads them (``serving.load``) without the model
code; the caller letterboxes each image onto the H x W canvas (``serving.letterbox``) and maps
boxes back to original pixels with the returned inverse affine (``serving.boxes_to_original``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from centernet_jax import boxes, cli
from centernet_jax.serving import METADATA_FILE, STABLEHLO_FILE

FLAGS = flags.FLAGS

FORMATS = ('stablehlo', 'savedmodel')
INPUTS = ('uint8', 'float')
# StableHLO compatibility window TensorFlow's XlaCallModule can read (see _tensorflow_compatible).
TF_STABLEHLO_REQUIREMENT = 'WEEK_12'


class ExportError(ValueError):
  """An export request that cannot be built."""


# --- Building the serving function ---------------------------------------------------------


def make_serving_fn(config: ml_collections.ConfigDict, model, *, height: int, width: int,
                    input_dtype: str = 'uint8') -> Callable[[dict, jax.Array], dict]:
  """``serve(variables, images) -> {boxes, scores, classes, ...}`` in input-canvas pixels.

  Every output of the task's predict function is served; its ``POINT_KEYS`` (boxes, keypoints)
  scaled from the output map to the input canvas, classes as int32.

  Args:
    config: experiment config (``config.data`` normalisation, ``config.model``, ``config.eval``).
    model: the flax module.
    height, width: input canvas (fixed in the artifact).
    input_dtype: 'uint8' (RGB pixels, normalised inside) or 'float' (already normalised).

  Returns:
    The function; its images are [B, height, width, 3] uint8 or float32.
  """
  from centernet_jax import inference, models, tasks

  if input_dtype not in INPUTS:
    raise ExportError(f'--input must be one of {INPUTS}, got {input_dtype!r}')
  data = config.data
  if data.channel_order not in ('BGR', 'RGB'):
    raise ExportError(f"config.data.channel_order must be 'BGR' or 'RGB', "
                      f'got {data.channel_order!r}')
  if tasks.multi_scale(config):
    raise ExportError(f'config.eval.test_scales={tuple(config.eval.test_scales)}: an export '
                      'serves one scale; set --config.eval.test_scales=1.0')
  out_h, out_w = models.output_hw(model, height, width)
  # The boxes are scaled by input / output map below: right only when the map covers the input
  # at the network's stride (a map padded by rounding, e.g. ResNet on 48 px, would stretch them).
  down = config.model.down_ratio
  if (out_h, out_w) != (-(-height // down), -(-width // down)):
    raise ExportError(
        f'--height {height} --width {width} gives a {out_h}x{out_w} output map, not the input '
        f'/ config.model.down_ratio={down}: use sizes the network divides exactly (multiples '
        'of 32 for the ResNet and DLA backbones)')
  stride = jnp.array([width / out_w, height / out_h], jnp.float32)  # per x, y pair
  task = tasks.get(config.task)
  predict = task.make_predict_fn(config, model)

  def serve(variables: dict, images: jax.Array) -> dict:
    if input_dtype == 'uint8':
      images = inference.normalize(images, mean=data.mean, std=data.std,
                                   channel_order=data.channel_order)
    out = dict(predict(variables, images))  # 'valid' after soft-NMS: fewer than K may survive
    for key in task.POINT_KEYS:
      if key in out:  # a task's optional point arrays (ddd's centers3d) come with their head
        out[key] = out[key] * jnp.tile(stride, out[key].shape[-1] // 2)
    out['classes'] = out['classes'].astype(jnp.int32)
    return out

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
  """What a server needs besides the artifact: signature, pre-processing, labels.

  Keypoint models add ``num_joints``, ``keypoint_names`` (null when unknown), the 0-based
  ``skeleton`` and ``flip_pairs``.
  """
  from centernet_jax import tasks

  data = config.data
  outputs = {k: {'dtype': str(v.dtype), 'shape': ['B', *v.shape[1:]]}
             for k, v in sorted(out_shapes.items())}
  task = tasks.get(config.task)
  for key, units in getattr(task, 'OUTPUT_UNITS', {}).items():
    outputs[key]['units'] = units
  for key in task.POINT_KEYS:
    if key in outputs:
      outputs[key]['units'] = 'x, y pairs in input-canvas pixels'
  outputs['boxes']['units'] = 'x1, y1, x2, y2 in input-canvas pixels'
  if 'valid' in outputs:
    outputs['valid']['units'] = 'False: no detection (score 0)'
  if 'keypoint_scores' in outputs:
    outputs['keypoint_scores']['units'] = ('joint-heatmap score of the peak a joint snapped to, '
                                           '0 where the regressed position was kept')
  keypoints = {}
  if 'num_joints' in data:
    from centernet_jax.evaluation import visualize

    names, skeleton = visualize.keypoint_layout(data.num_joints, meta.get('keypoint_names'),
                                                meta.get('skeleton'))
    keypoints = {'num_joints': int(data.num_joints), 'keypoint_names': names,
                 'skeleton': [list(limb) for limb in skeleton],
                 'flip_pairs': [[int(a), int(b)] for a, b in data.flip_pairs]}

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
      'task': config.task,
      'channel_order': data.channel_order,
      'mean': [float(v) for v in data.mean],
      'std': [float(v) for v in data.std],
      'eval_mode': data.eval_mode,
      'eval_pad': int(data.eval_pad),
      'eval_size': int(data.eval_size),
      'down_ratio': int(config.model.down_ratio),
      'K': int(config.eval.K),
      'flip_test': bool(config.eval.flip_test),
      'class_names': list(meta['class_names']),
      'category_ids': [int(c) for c in meta['category_ids']],
      **keypoints,
      'model': config.model.to_dict(),
      'step': int(step),
      'jax_version': jax.__version__,
      'created': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
  }


def default_hw(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """The evaluation canvas (H, W) of a training-canvas image (``boxes.canvas_hw``): the
  'fit_width' canvas ``data.input_hw``, the 'fixed_res' side, or the keep_res pad of
  ``data.input_size``."""
  from centernet_jax.data import config as data_config

  data = config.data
  return boxes.canvas_hw(data_config.input_hw(data), data.eval_mode, pad=data.eval_pad,
                         size=data_config.eval_canvas_size(data))


def run(config: ml_collections.ConfigDict, workdir: str, fmt: str, output: str, *,
        batch: int = 0, height: int | None = None, width: int | None = None,
        input_dtype: str = 'uint8', step: int | None = None) -> dict:
  """Restores the checkpoint and writes the artifact and ``export.json`` into ``output``.

  Returns:
    The metadata written.
  """
  from centernet_jax import inference

  if fmt not in FORMATS:
    raise ExportError(f'--format must be one of {FORMATS}, got {fmt!r}')
  if input_dtype not in INPUTS:
    raise ExportError(f'--input must be one of {INPUTS}, got {input_dtype!r}')
  height = height or default_hw(config)[0]
  width = width or default_hw(config)[1]
  if height <= 0 or width <= 0:
    raise ExportError(f'--height and --width must be positive, got {height} x {width}')
  config, model, variables, step, meta = inference.restore(config, workdir, step)
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


def main(argv):
  del argv
  from centernet_jax import checkpoint

  try:
    info = run(FLAGS.config, FLAGS.workdir, FLAGS.format, FLAGS.output, batch=FLAGS.batch,
               height=FLAGS.height, width=FLAGS.width, input_dtype=FLAGS.input, step=FLAGS.step)
  except (checkpoint.ModelMismatchError, ValueError, FileNotFoundError) as e:
    cli.fail(e, 1)
  print(json.dumps({k: info[k] for k in ('format', 'input', 'step')}
                   | {'output': os.path.abspath(FLAGS.output)}))


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'Work directory holding checkpoints/ and config.json (or '
                      'one checkpoint).')
  flags.DEFINE_string('format', 'stablehlo', f'One of {FORMATS}.')
  flags.DEFINE_string('output', None, 'Output folder.')
  flags.DEFINE_integer('batch', 0, 'Fixed batch size; 0 or -1: symbolic (any batch).')
  flags.DEFINE_integer('height', None, 'Input canvas height (default: data.eval_size for '
                       'fixed_res, data.input_hw for fit_width, else (data.input_size | '
                       'data.eval_pad) + 1).')
  flags.DEFINE_integer('width', None, 'Input canvas width (same default).')
  flags.DEFINE_string('input', 'uint8', f'Input: {INPUTS} (uint8 RGB, or normalised float32).')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
  cli.run(main, run_flags=('workdir',), required=('workdir', 'output'))
