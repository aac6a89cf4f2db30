r"""Evaluate a checkpoint with pycocotools.

``python -m centernet_jax.evaluate --workdir W [--step N] [--config X] [--config.a.b=v ...]``
writes ``W/eval/step_<N>/detections.json`` (COCO results: original category ids, [x, y, w, h]
in original image pixels, and for multi_pose the keypoints) and ``W/eval/step_<N>/metrics.json``
(AP ... AR100 over every image of the validation split, and multi_pose's kp_AP ... kp_ARl) and
prints the standard pycocotools summaries. Without ``--config`` the run's saved config
(``W/config.json``) is used. An evaluation whose settings differ from the run's own (flip,
test scales, eval mode, K, ...: :func:`eval_setting`) writes ``W/eval/step_<N>_<setting>/``
(e.g. ``step_2200_flip``) with a ``setting.json``, so it overwrites neither the training-time
evaluation nor an evaluation with other settings.

What is evaluated is the task's: its ``coco_results(dets, image_id, category_ids, config)`` turns
one image's detections into COCO results and its ``evaluate(gt, results, image_ids, config,
log)`` computes the metrics.

From Python (the training loop does this)::

  evaluator = Evaluator(config, model, info)       # once per run: compiles on first use
  metrics = evaluator(variables, out_dir)          # each evaluation; no new compilation
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys

import jax
import ml_collections
import numpy as np
from absl import flags
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from centernet_jax import checkpoint, cli, config_lib, fault, inference, tasks
from centernet_jax.evaluation import coco as coco_eval

FLAGS = flags.FLAGS


def local_batch_size(requested: int, num_devices: int) -> int:
  """``requested`` rounded up to a multiple of the local devices (each gets equal rows).

  A change is logged at WARNING: the batch evaluated is not the one the config names.
  """
  batch = -(-max(requested, 1) // num_devices) * num_devices
  if batch != requested:
    logging.warning('config.eval.batch_size=%d rounded up to %d, a multiple of the %d local '
                    'devices', requested, batch, num_devices)
  return batch


class Evaluator:
  """COCO evaluation of the validation split, built once per run.

  The predictor (and the multi-scale merge) are jitted here, once: every later call with the
  same shapes reuses their compilations (a periodic evaluation during training compiles
  nothing after the first).
  """

  def __init__(self, config: ml_collections.ConfigDict, model, info):
    """
    Args:
      config: resolved config (``config.eval``, ``config.data``, ``config.task``).
      model: the flax module.
      info: ``data.pipeline.DatasetInfo`` of the data set (validation images, ground truth).
    """
    self.config = config
    self.info = info
    self.mesh = inference.local_mesh()
    self.batch_size = local_batch_size(config.eval.batch_size, self.mesh.size)
    self.scales = tuple(float(s) for s in config.eval.test_scales)
    multi = tasks.multi_scale(config)
    self.predictor = inference.Predictor(config, model, merge_later=multi)
    self.task = self.predictor.task
    # Multi-scale (official): every scale mapped back to original pixels, then merged.
    self._merge = jax.jit(self.predictor.task.make_merge(config)) if multi else None
    self._images = NamedSharding(self.mesh, P('data'))

  def __call__(self, variables: dict, out_dir: str) -> dict:
    """Predicts the split, writes detections.json + metrics.json into ``out_dir``.

    Args:
      variables: ``{'params', 'batch_stats'}``, on the host or replicated on any mesh.
      out_dir: written by process 0.

    Returns:
      The task's metrics (``coco_eval.METRIC_NAMES``, and for multi_pose
      ``coco_eval.KEYPOINT_METRIC_NAMES`` too; for ddd the KITTI metrics, with the result
      files in ``out_dir/kitti/``).
    """
    dets = self.predict_dataset(variables)
    image_ids = list(self.info.val_image_ids)
    if self.config.eval.num_images > 0:
      image_ids = image_ids[:self.config.eval.num_images]
    metrics = self.task.evaluate(self.info.val_gt, dets, image_ids, self.config,
                                 print if jax.process_index() == 0 else None)
    if jax.process_index() == 0:
      coco_eval.write_json(os.path.join(out_dir, 'detections.json'), dets)
      coco_eval.write_json(os.path.join(out_dir, 'metrics.json'), metrics)
      write_results = getattr(self.task, 'write_results', None)
      if write_results is not None:  # ddd: the KITTI result files, one per image
        write_results(self.info.val_gt, dets, image_ids, self.config,
                      os.path.join(out_dir, 'kitti'))
      logging.info('eval: %s -> %s', ', '.join(f'{k}={v:.4f}' for k, v in metrics.items()),
                   out_dir)
    return metrics

  def predict_dataset(self, variables: dict) -> list[dict]:
    """COCO result dicts for every image of the split (gathered over processes).

    A failure on one process is agreed before the gather, so every process raises (the others
    with the failing process's message) instead of waiting in the collective.
    """
    error = None
    try:
      rows, spec = self._predict_rows(variables)
    except Exception as e:  # noqa: BLE001 - agreed across processes, then raised on each
      error, rows, spec = e, [], None
    message = fault.agree_message(f'{type(error).__name__}: {error}' if error else None)
    if error is not None:
      raise error
    if message is not None:
      raise RuntimeError(f'evaluation failed on another process: {message}')
    rows = _gather(rows, spec)
    category_ids = [int(c) for c in self.info.category_ids]
    results = []
    for image_id, dets in rows:
      results.extend(self.task.coco_results(dets, image_id, category_ids, self.config))
    return results

  def _predict_rows(self, variables: dict) -> tuple[list[tuple[int, dict]], dict | None]:
    """This process's detections, one row per image, and their layout.

    Returns:
      rows: (image_id, dets) per valid image; dets maps every key of the task's detections
        except 'valid' to this image's array (boxes [K, 4], keypoints [K, J, 2] ... in original
        pixels).
      spec: {key: (per-image shape, dtype)} of those arrays (None when there was no batch):
        the same on every process, which all see the same number of batches.
    """
    from centernet_jax.data import pipeline

    config, info = self.config, self.info
    variables = inference.to_local(variables, self.mesh)
    rows, spec = [], None
    iterators = [pipeline.create_eval_iterator(
        config.data, info=info, batch_size=self.batch_size, num_images=config.eval.num_images,
        process_index=jax.process_index(), process_count=jax.process_count(), test_scale=s)
        for s in self.scales]
    for batches in _progress(zip(*iterators, strict=True), info, config.eval.num_images):
      per_scale = []  # [scale] -> host detections in original pixels
      for batch in batches:
        dets = jax.device_get(self.predictor(
            variables, jax.device_put(batch['image'], self._images)))
        per_scale.append(self.predictor.to_original(dets, batch))
      merged = {k: np.concatenate([d[k] for d in per_scale], axis=1) for k in per_scale[0]}
      if self._merge is not None:
        merged = jax.device_get(self._merge(merged))
      merged = {k: np.asarray(v) for k, v in merged.items() if k != 'valid'}
      spec = spec or {k: (v.shape[1:], v.dtype) for k, v in merged.items()}
      first = batches[0]
      for i in np.flatnonzero(first['valid']):
        rows.append((int(first['image_id'][i]), {k: v[i] for k, v in merged.items()}))
    return rows, spec


def _gather(rows: list[tuple[int, dict]], spec: dict | None) -> list[tuple[int, dict]]:
  """All processes' rows, on every process.

  Args:
    rows: (image_id, {key: array}) of this process.
    spec: {key: (shape, dtype)} of every row's arrays, equal on every process (fixed shapes are
      what the collective needs); None when no process predicted a batch.
  """
  if jax.process_count() == 1 or spec is None:
    return rows
  n_max = int(multihost_utils.process_allgather(np.array([len(rows)])).max())
  if n_max == 0:
    return []
  pad = n_max - len(rows)
  ids = np.array([r[0] for r in rows] + [-1] * pad, np.int64)
  keys = sorted(spec)
  arrays = [np.stack([np.asarray(r[1][k], spec[k][1]) for r in rows]
                     + [np.zeros(spec[k][0], spec[k][1])] * pad) for k in keys]
  ids, *arrays = (np.asarray(multihost_utils.process_allgather(a, tiled=True))
                  for a in [ids, *arrays])
  return [(int(i), {k: a[n] for k, a in zip(keys, arrays, strict=True)})
          for n, i in enumerate(ids) if i >= 0]


def _progress(it, info, num_images):
  total = info.num_val if num_images is None or num_images < 0 else min(num_images, info.num_val)
  if jax.process_index() != 0:
    return it
  from tqdm import tqdm
  return tqdm(it, desc='eval', unit='batch', file=sys.stderr, mininterval=1.0,
              postfix={'images': total})


# --- Where an evaluation is written: eval/step_<N>[_<setting>] ---------------------------------

SAVED = 'saved'  # run()'s default reference: the run's own config (W/config.json)
# Keys outside config.eval that change what an evaluation computes (every eval key does, except
# the batch size).
_EVAL_KEYS_OUTSIDE_EVAL = ('data.eval_mode', 'data.eval_pad', 'data.eval_size', 'data.input_hw',
                           'data.channel_order', 'data.mean', 'data.std', 'model.dtype')
# Keys naming the evaluated images: another split evaluates other images, so it gets its own
# folder too (named 'data-<hash of these values>': paths make poor folder names).
_EVAL_DATA_KEYS = ('data.source', 'data.val_annotations', 'data.val_images', 'data.tfds_name',
                   'data.tfds_data_dir', 'data.tfds_val_split', 'data.kitti_root',
                   'data.val_split', 'data.shapes_dir', 'data.shapes_num_val', 'data.shapes_seed',
                   'data.shapes_image_size', 'data.shapes_ddd_hw')
_ON_OFF = {'eval.flip_test': ('flip', 'noflip'), 'eval.round_results': ('rounded', 'unrounded')}


def _value(config: ml_collections.ConfigDict, path: str):
  """The value at a dotted path, as JSON sees it (tuples as lists); None when absent."""
  node = config
  for part in path.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return None
    node = node[part]
  return json.loads(json.dumps(node.to_dict() if isinstance(node, ml_collections.ConfigDict)
                               else node, default=str))


def eval_setting(config: ml_collections.ConfigDict,
                 reference: ml_collections.ConfigDict | None) -> dict:
  """{dotted key: value} of the evaluation settings in which ``config`` differs from ``reference``.

  Every ``eval`` key except ``batch_size``, and the data and model keys that change the input or
  the arithmetic (``eval_pad`` only for ``keep_res``, ``eval_size`` only for ``fixed_res``), and
  the keys naming the evaluated split (another folder, another annotation file).
  Empty when ``reference`` is None or evaluates the same way.
  """
  if reference is None:
    return {}
  paths = [f'eval.{k}' for k in config.eval if k != 'batch_size']
  paths += [p for p in _EVAL_KEYS_OUTSIDE_EVAL if p != ('data.eval_size' if
            config.data.eval_mode == 'keep_res' else 'data.eval_pad')]
  paths += list(_EVAL_DATA_KEYS)
  return {p: _value(config, p) for p in paths if _value(config, p) != _value(reference, p)}


def eval_setting_name(setting: dict) -> str:
  """A folder-name suffix for an :func:`eval_setting`: 'flip', 'K20_fixed_res', 'scales0.5-1'.

  '' for an empty setting.
  """
  parts = []
  data = {p: v for p, v in setting.items() if p in _EVAL_DATA_KEYS}
  if data:
    digest = hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]
    parts.append(f'data-{digest}')
  for path, value in setting.items():
    if path in _EVAL_DATA_KEYS:
      continue
    key = path.split('.')[-1].removeprefix('eval_')
    if path in _ON_OFF:
      parts.append(_ON_OFF[path][0 if value else 1])
    elif path in ('data.eval_mode', 'model.dtype'):
      parts.append(str(value))
    elif path == 'eval.test_scales':
      parts.append('scales' + '-'.join(f'{float(v):g}' for v in value))
    else:
      values = value if isinstance(value, list) else [value]
      parts.append(key + '-'.join(f'{v:g}' if isinstance(v, float) else str(v).lower()
                                  if isinstance(v, bool) else str(v) for v in values))
  return re.sub(r'[^A-Za-z0-9._-]+', '-', '_'.join(parts))


def eval_dir(workdir: str, step: int, setting: dict | None = None) -> str:
  """``<workdir>/eval/step_<step>``, with ``_<setting name>`` when the setting is not empty."""
  name = eval_setting_name(setting or {})
  return os.path.join(workdir, 'eval', f'step_{step}' + (f'_{name}' if name else ''))


def run(config: ml_collections.ConfigDict, workdir: str, step: int | None = None, *,
        reference: ml_collections.ConfigDict | str | None = SAVED) -> dict:
  """Evaluates ``workdir``'s checkpoint at ``step`` (default latest); returns metrics.

  Args:
    config: the config to evaluate with.
    workdir: a training workdir (or its checkpoints folder, or one checkpoint folder).
    step: the checkpoint's step; default: the latest.
    reference: what ``config``'s evaluation settings are compared with to name the output
      folder (:func:`eval_dir`): a config, :data:`SAVED` (the run's ``config.json``, when there
      is one) or None (always ``eval/step_<N>/``).

  Raises:
    FileNotFoundError: no checkpoint (of that step: the message lists the steps there are).
    ValueError: the data set's categories differ from the checkpoint's.
  """
  from centernet_jax.data import pipeline

  if isinstance(reference, str):
    reference = config_lib.saved_config(workdir)
  info = pipeline.get_dataset_info(config.data, workdir=workdir)
  if config.model.num_classes > 0 and config.model.num_classes != info.num_classes:
    raise ValueError(f'config.model.num_classes={config.model.num_classes} but the data set has '
                     f'{info.num_classes} categories')
  restored = inference.restore(config, workdir, step)
  meta = restored.meta
  if [int(c) for c in meta['category_ids']] != [int(c) for c in info.category_ids]:
    raise ValueError(f'the checkpoint in {workdir} was trained on categories '
                     f'{meta["category_ids"]}, the validation data has {list(info.category_ids)}')
  setting = eval_setting(config, reference)
  out_dir = eval_dir(config_lib.run_dir(workdir), restored.step, setting)
  if setting and jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    coco_eval.write_json(os.path.join(out_dir, 'setting.json'), setting)
  evaluator = Evaluator(restored.config, restored.model, info)
  return evaluator(restored.variables, out_dir)


def main(argv):
  del argv
  try:
    run(FLAGS.config, FLAGS.workdir, FLAGS.step, reference=_reference())
  except (checkpoint.ModelMismatchError, ValueError, FileNotFoundError) as e:
    cli.fail(e, 1)


def _reference() -> ml_collections.ConfigDict | str | None:
  """The run's saved config; without one, the --config file as written (no overrides)."""
  saved = config_lib.saved_config(FLAGS.workdir)
  if saved is not None:
    return saved
  filename = getattr(FLAGS['config'], '_config_filename', None)  # 'path[:arg]' once parsed
  return config_lib.load_config_file(filename) if isinstance(filename, str) else None


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'Work directory holding checkpoints/ (and config.json).')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
  cli.run(main, run_flags=('workdir',), required=('workdir',))
