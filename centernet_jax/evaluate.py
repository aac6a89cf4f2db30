r"""Evaluate a checkpoint with pycocotools.

``python -m centernet_jax.evaluate --config configs/X.py --workdir W [--step N]`` writes
``W/eval/step_<N>/detections.json`` (COCO results: original category ids, [x, y, w, h] in
original image pixels) and ``W/eval/step_<N>/metrics.json`` (AP ... AR100 over every image of the
validation split) and prints the standard pycocotools summary.
"""

from __future__ import annotations

import logging
import os
import sys

import jax
import ml_collections
import numpy as np
from absl import app, flags
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from centernet_jax import boxes as boxes_lib
from centernet_jax import checkpoint, config_lib, sharding, tasks
from centernet_jax.evaluation import coco as coco_eval
from centernet_jax.models import build_model

FLAGS = flags.FLAGS


def local_mesh() -> Mesh:
  """A mesh over this process's devices: evaluation shards images, not hosts."""
  return sharding.make_mesh(jax.local_devices())


def to_local(variables: dict, mesh: Mesh) -> dict:
  """Copies (replicated, possibly multi-host) variables onto this process's devices."""
  host = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array)
                      else np.asarray(x), variables)
  return jax.device_put(host, NamedSharding(mesh, P()))


def predict_dataset(config, model, variables, info) -> list[dict]:
  """Runs model + decode over this process's share of the validation split.

  With several ``config.eval.test_scales`` every scale is predicted, mapped back to original
  pixels, and the scales are merged with per-class soft-NMS and the top ``eval.K`` (official
  multi-scale testing).

  Returns COCO result dicts for every image of the split (gathered over processes).
  """
  from centernet_jax.data import pipeline

  mesh = local_mesh()
  n_local = len(jax.local_devices())
  batch_size = -(-max(config.eval.batch_size, 1) // n_local) * n_local
  scales = tuple(float(s) for s in config.eval.test_scales)
  merge = tasks.multi_scale(config)
  predict = jax.jit(tasks.make_predict_fn(config, model),
                    in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))))
  cornernet = tasks.task_of(config.model) == 'cornernet'
  nms = jax.jit(tasks.make_nms(config, merge_boxes=cornernet)) if merge else None
  variables = to_local(variables, mesh)
  down = config.model.down_ratio
  rows = []  # per image: image_id, boxes [K, 4] original pixels, scores [K], labels [K]
  iterators = [pipeline.create_eval_iterator(
      config.data, info=info, batch_size=batch_size, num_images=config.eval.num_images,
      process_index=jax.process_index(), process_count=jax.process_count(), test_scale=s)
      for s in scales]
  for batches in _progress(zip(*iterators, strict=True), info, config.eval.num_images):
    per_scale = []  # [scale] -> detections, boxes [b, N, 4] in original pixels
    for batch in batches:
      out = jax.device_get(predict(variables, batch['image']))
      boxes = np.stack([
          boxes_lib.transform_preds(out['boxes'][i], batch['center'][i], batch['scale'][i],
                                    (int(batch['input_hw'][i][1]) // down,
                                     int(batch['input_hw'][i][0]) // down))
          for i in range(len(out['boxes']))])
      per_scale.append(dict(out, boxes=boxes))
    merged = {k: np.concatenate([d[k] for d in per_scale], axis=1) for k in per_scale[0]}
    if nms is not None:
      merged = jax.device_get(nms(merged))
    boxes, scores, classes = merged['boxes'], merged['scores'], merged['classes']
    first = batches[0]
    for i in np.flatnonzero(first['valid']):
      rows.append((int(first['image_id'][i]), boxes[i], scores[i], classes[i]))
  rows = _gather(rows, config.eval.K)
  dets = []
  for image_id, boxes, scores, labels in rows:
    keep = scores > 0  # CornerNet: rejected pairs (-1) and entries soft-NMS suppressed (0)
    dets.extend(coco_eval.detections_to_coco(boxes[keep], scores[keep], labels[keep], image_id,
                                             info.category_ids,
                                             round_results=config.eval.round_results))
  return dets


def _gather(rows: list, K: int) -> list:
  """All processes' rows, on every process (fixed-size arrays for the collective)."""
  if jax.process_count() == 1:
    return rows
  n = np.array([len(rows)])
  n_max = int(multihost_utils.process_allgather(n).max())
  pad = n_max - len(rows)
  ids = np.array([r[0] for r in rows] + [-1] * pad, np.int64)
  def stack(j, shape, dtype):
    return np.stack([r[j] for r in rows] + [np.zeros(shape, dtype)] * pad).astype(dtype)
  arrays = (ids, stack(1, (K, 4), np.float32), stack(2, (K,), np.float32),
            stack(3, (K,), np.int32))
  ids, bx, sc, lb = (np.asarray(multihost_utils.process_allgather(a, tiled=True))
                     for a in arrays)
  return [(int(i), b, s, lab) for i, b, s, lab in zip(ids, bx, sc, lb, strict=True) if i >= 0]


def _progress(it, info, num_images):
  total = info.num_val if num_images is None or num_images < 0 else min(num_images, info.num_val)
  if jax.process_index() != 0:
    return it
  from tqdm import tqdm
  return tqdm(it, desc='eval', unit='batch', file=sys.stderr, mininterval=1.0,
              postfix={'images': total})


def evaluate_variables(config: ml_collections.ConfigDict, model, variables: dict, info,
                       out_dir: str) -> dict:
  """Predicts the validation split, writes detections.json + metrics.json, returns metrics."""
  dets = predict_dataset(config, model, variables, info)
  image_ids = list(info.val_image_ids)
  if config.eval.num_images > 0:
    image_ids = image_ids[:config.eval.num_images]
  metrics = coco_eval.evaluate_detections(
      info.val_gt, dets, image_ids=image_ids, log=print if jax.process_index() == 0 else None)
  if jax.process_index() == 0:
    coco_eval.write_json(os.path.join(out_dir, 'detections.json'), dets)
    coco_eval.write_json(os.path.join(out_dir, 'metrics.json'), metrics)
    logging.info('eval: %s -> %s', ', '.join(f'{k}={v:.4f}' for k, v in metrics.items()),
                 out_dir)
  return metrics


def abstract_variables(model, image_size: int = 64) -> dict:
  """Shapes and dtypes of {'params', 'batch_stats'} without allocating them."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             np.zeros((1, image_size, image_size, 3), np.float32),
                                             train=False))
  return {'params': shapes['params'], 'batch_stats': shapes.get('batch_stats', {})}


def load_for_inference(config: ml_collections.ConfigDict, checkpoint_path: str,
                       step: int | None = None):
  """Builds the model and restores its variables.

  Args:
    config: experiment config (``config.model.num_classes`` may be -1: taken from the checkpoint).
    checkpoint_path: a workdir, its ``checkpoints`` folder, or one ``checkpoints/<step>`` folder.
    step: which step (default: the one named by the path, else the latest).

  Returns:
    (config with num_classes resolved, model, variables on the host, step, meta).
  """
  ckpt_dir, path_step = checkpoint.split_checkpoint_path(checkpoint_path)
  ckpt = checkpoint.Checkpointer(ckpt_dir, read_only=True)
  step = step if step is not None else path_step
  step = step if step is not None else ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f'no checkpoint found in {ckpt_dir}')
  meta = ckpt.restore_meta(step)
  config = ml_collections.ConfigDict(config.to_dict())
  if config.model.num_classes <= 0:
    config.model.num_classes = len(meta['class_names'])
  model = build_model(config.model)
  step, variables = ckpt.restore_variables(step, abstract_variables(model),
                                           {'model': config.model.to_dict()})
  return config, model, variables, step, meta


def run(config: ml_collections.ConfigDict, workdir: str, step: int | None = None) -> dict:
  """Evaluates ``workdir``'s checkpoint at ``step`` (default latest); returns metrics."""
  from centernet_jax.data import pipeline

  info = pipeline.get_dataset_info(config.data, workdir=workdir)
  if config.model.num_classes > 0 and config.model.num_classes != info.num_classes:
    raise ValueError(f'config.model.num_classes={config.model.num_classes} but the data set has '
                     f'{info.num_classes} categories')
  config, model, variables, step, meta = load_for_inference(config, workdir, step)
  if [int(c) for c in meta['category_ids']] != [int(c) for c in info.category_ids]:
    raise ValueError(f'the checkpoint in {workdir} was trained on categories '
                     f'{meta["category_ids"]}, the validation data has {list(info.category_ids)}')
  return evaluate_variables(config, model, variables, info,
                            os.path.join(workdir, 'eval', f'step_{step}'))


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  try:
    run(FLAGS.config, FLAGS.workdir, FLAGS.step)
  except (checkpoint.ModelMismatchError, ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Work directory holding checkpoints/.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=config_lib.parse_flags)
