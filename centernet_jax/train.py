r"""Train CenterNet: ``python -m centernet_jax.train --config configs/X.py --workdir W``.

Rerunning the same command resumes from W's latest checkpoint; the data stream continues where
it stopped (it is a pure function of the seed and the step). Multi-host: run the same command on
every host with ``--distributed`` (TPU pods, SLURM) or with ``--coordinator_address``,
``--num_processes`` and ``--process_id``.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import math
import os
import sys
import time

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from centernet_jax import checkpoint, config_lib, optim, sharding, steps, tasks
from centernet_jax.metric_writer import MetricWriter
from centernet_jax.models import build_model

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and evaluation.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (multi-host).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host).')
flags.DEFINE_integer('process_id', None, 'This process (multi-host).')


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite."""


def maybe_initialize_distributed() -> None:
  """Initialises jax.distributed from the command-line flags, if asked to."""
  if FLAGS.coordinator_address or FLAGS.num_processes:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  elif FLAGS.distributed:
    jax.distributed.initialize()


def resolve_config(config: ml_collections.ConfigDict, info) -> ml_collections.ConfigDict:
  """Fills the fields that come from the data set (number of classes)."""
  config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy
  if config.model.num_classes <= 0:
    config.model.num_classes = info.num_classes
  elif config.model.num_classes != info.num_classes:
    raise ValueError(f'config.model.num_classes={config.model.num_classes} but the data set has '
                     f'{info.num_classes} categories; set it to -1 to take it from the data')
  return config


def checkpoint_meta(config: ml_collections.ConfigDict, info) -> dict:
  """What a checkpoint records about the model and the label space."""
  return {'model': config.model.to_dict(), 'class_names': list(info.class_names),
          'category_ids': [int(c) for c in info.category_ids]}


def prefetch_to_mesh(iterator, mesh, size: int = 2):
  """Yields global device batches, keeping ``size`` transfers in flight."""
  queue = collections.deque()
  for batch in iterator:
    queue.append(sharding.host_to_global(batch, mesh))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def first_nonfinite(history: list[tuple[int, dict]]) -> tuple[int, dict] | None:
  """The first (step, metrics) whose loss is not finite, from host copies."""
  for step, metrics in history:
    if not all(math.isfinite(float(v)) for v in metrics.values()):
      return step, metrics
  return None


def create_state(config, model, tx, mesh, image_size: int) -> steps.TrainState:
  """Initialises a replicated TrainState on the mesh (compiled once)."""
  rng = jax.random.PRNGKey(config.seed)
  init = jax.jit(functools.partial(steps.init_state, model, tx,
                                   image_shape=(1, image_size, image_size, 3)),
                 out_shardings=sharding.replicated(mesh))
  return init(rng)


def restore_or_init(config, ckpt, state, meta):
  """Resume order: the workdir's latest > config.resume > config.init > scratch."""
  if ckpt.latest_step() is not None:
    logging.info('Resuming from %s step %d', ckpt.directory, ckpt.latest_step())
    return ckpt.restore_state(None, state, meta)
  if config.resume:
    src_dir, step = checkpoint.split_checkpoint_path(config.resume)
    logging.info('Resuming from config.resume=%s', config.resume)
    return checkpoint.Checkpointer(src_dir, read_only=True).restore_state(step, state, meta)
  if config.init:
    src_dir, step = checkpoint.split_checkpoint_path(config.init)
    src = checkpoint.Checkpointer(src_dir, read_only=True)
    step, variables = src.restore_variables(
        step, {'params': state.params, 'batch_stats': state.batch_stats}, meta)
    logging.info('Initialised from config.init=%s (step %d)', config.init, step)
    return state.replace(params=variables['params'], batch_stats=variables['batch_stats'])
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, checkpoints and evaluates; returns the last evaluation metrics (may be empty)."""
  # Imported here so model/loss/step code never needs tensorflow.
  from centernet_jax import evaluate as evaluate_lib
  from centernet_jax.data import pipeline

  # --- Workdir, data set information, config -------------------------------------------------
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  info = pipeline.get_dataset_info(config.data, workdir=workdir)
  config = resolve_config(config, info)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump(config.to_dict(), f, indent=2, default=str)

  # --- Mesh, model, optimiser ----------------------------------------------------------------
  mesh = sharding.make_mesh()
  global_batch = config.train.batch_size
  sharding.check_global_batch(global_batch)
  steps_per_epoch = max(info.num_train // global_batch, 1)
  total_steps = (config.train.num_steps if config.train.num_steps > 0
                 else config.train.num_epochs * steps_per_epoch)
  model = build_model(config.model)
  tx, schedule = optim.make_optimizer(config.optim, batch_size=global_batch,
                                      steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  logging.info('%d devices, %d processes, global batch %d, %d steps (%d per epoch), peak lr %g',
               jax.device_count(), jax.process_count(), global_batch, total_steps,
               steps_per_epoch, optim.learning_rate(config.optim, global_batch))

  # --- State: restore or initialise ----------------------------------------------------------
  meta = checkpoint_meta(config, info)
  state = create_state(config, model, tx, mesh, config.data.input_size)
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir),
                                 max_to_keep=config.train.keep_checkpoints)
  state = restore_or_init(config, ckpt, state, meta)
  start_step = int(jax.device_get(state.step))

  # --- Update step: one compile, state donated -----------------------------------------------
  train_step = tasks.make_train_step(config, model, tx, schedule)
  train_step = jax.jit(train_step, donate_argnums=(0,),
                       in_shardings=(sharding.replicated(mesh), sharding.data_sharding(mesh)),
                       out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)))

  # --- Input ---------------------------------------------------------------------------------
  train_iter = pipeline.create_train_iterator(
      config.data, info=info, global_batch_size=global_batch, seed=config.seed,
      start_step=start_step, process_index=jax.process_index(),
      process_count=jax.process_count())
  batches = prefetch_to_mesh(train_iter, mesh)

  # --- Loop ----------------------------------------------------------------------------------
  writer = MetricWriter(workdir)
  eval_metrics: dict = {}
  history: list[tuple[int, dict]] = []  # device metrics since the last log step
  progress = _progress(start_step, total_steps)
  t_log, step_log = time.time(), start_step
  step = start_step
  for step in range(start_step + 1, total_steps + 1):
    state, metrics = train_step(state, next(batches))
    history.append((step, metrics))
    is_last = step == total_steps
    if step % config.train.log_every == 0 or is_last:
      host = jax.device_get(history)
      history = []
      bad = first_nonfinite(host)
      if bad is not None:
        raise NonFiniteLossError(
            f'non-finite loss at step {bad[0]}: ' +
            ', '.join(f'{k}={float(v):.4g}' for k, v in bad[1].items()) +
            f'. Last checkpoint: step {ckpt.latest_step()} in {ckpt.directory}. Lower '
            'config.optim.lr, add config.optim.warmup_steps or config.optim.grad_clip.')
      now = time.time()
      ips = (step - step_log) * global_batch / max(now - t_log, 1e-9)
      t_log, step_log = now, step
      last = {k: float(v) for k, v in host[-1][1].items()}
      writer.write(step, dict(last, images_per_sec=ips), prefix='train/')
      progress.update(step, last['loss'], ips)
    if step % config.train.checkpoint_every == 0 or is_last:
      ckpt.save(state, meta, force=is_last)
    if (config.train.eval_every > 0 and step % config.train.eval_every == 0) or is_last:
      variables = {'params': state.params, 'batch_stats': state.batch_stats}
      eval_metrics = evaluate_lib.evaluate_variables(
          config, model, variables, info, os.path.join(workdir, 'eval', f'step_{step}'))
      writer.write(step, eval_metrics, prefix='eval/')
  progress.close()
  ckpt.wait()
  ckpt.close()
  writer.close()
  return eval_metrics


class _progress:
  """A tqdm bar on process 0 with loss, images/s and ETA (tqdm computes the ETA)."""

  def __init__(self, start: int, total: int):
    self._bar = None
    if jax.process_index() == 0:
      from tqdm import tqdm
      self._bar = tqdm(total=total, initial=start, desc='train', unit='step', file=sys.stderr,
                       dynamic_ncols=True, mininterval=1.0)
      self._at = start

  def update(self, step: int, loss: float, ips: float) -> None:
    if self._bar is not None:
      self._bar.set_postfix(loss=f'{loss:.3f}', img_s=f'{ips:.1f}', refresh=False)
      self._bar.update(step - self._at)
      self._at = step

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def main(argv):
  del argv
  maybe_initialize_distributed()
  logging.getLogger().setLevel(logging.INFO)
  try:
    train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (checkpoint.ModelMismatchError, NonFiniteLossError, ValueError, FileNotFoundError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=config_lib.parse_flags)
