r"""Train a detector: ``python -m centernet_jax.train --config configs/X.py --workdir W``.

``--config`` also takes a shipped config's name (``--config ctdet_resnet18_coco``). Rerunning
the same command resumes from W's latest checkpoint (``--workdir W`` alone resumes with the
run's saved ``W/config.json``); the data stream continues where it stopped (it is a pure
function of the seed and the step). Rerunning a finished run (last checkpoint and its
evaluation written) says there is nothing to do, before anything is built or compiled.
Multi-host: run the same command on every host with ``--distributed`` (TPU pods, SLURM) or with
``--coordinator_address``, ``--num_processes`` and ``--process_id``.

Fault tolerance (``fault.py``; experiments/fault_tolerance.md):
  * SIGTERM / SIGINT (to any process): every process finishes the same step, a checkpoint of it
    is committed, and each exits with status 128 + signal (143 / 130) and a message naming the
    step; rerunning resumes there. A second signal exits at once (same status); the checkpoint
    being written then is left as an Orbax temporary directory, which is never restored from.
  * Any kill (-9 included): the next run moves incomplete checkpoint directories to
    ``<workdir>/checkpoints_partial/`` (logged) and resumes from the newest complete one.
  * Non-finite loss or gradients: ``config.train.nonfinite_policy``.
  * Unreadable images and invalid annotations: skipped, logged and counted
    (``config.data.max_skip_fraction``); past it, every process stops after the same step
    (status 1) with the message, and nothing after the last checkpoint is saved.
  * A failed checkpoint write stops with :class:`checkpoint.CheckpointWriteError` (exit status
    1); a failed evaluation (on any process) is logged and training goes on.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time

import jax
import ml_collections
from absl import flags

from centernet_jax import (
  checkpoint,
  cli,
  config_lib,
  fault,
  models,
  optim,
  sharding,
  state,
  tasks,
)
from centernet_jax.data import config as data_config
from centernet_jax.data import errors
from centernet_jax.metric_writer import MetricWriter

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and evaluation.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (multi-host).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host).')
flags.DEFINE_integer('process_id', None, 'This process (multi-host).')

# batch entries that stay on the host (messages, counts)
HOST_KEYS = ('image_id', 'skipped', 'skip_reasons', 'dropped_objects')


def checkpoint_meta(config: ml_collections.ConfigDict, info) -> dict:
  """What a checkpoint records about the task, the model and the label space (pose: the joint
  names and the skeleton, which predict draws)."""
  meta = {'task': config.task, 'model': config.model.to_dict(),
          'class_names': list(info.class_names),
          'category_ids': [int(c) for c in info.category_ids]}
  if getattr(info, 'keypoint_names', None):
    meta['keypoint_names'] = list(info.keypoint_names)
    meta['skeleton'] = [[int(a), int(b)] for a, b in info.skeleton or ()]
  return meta


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, checkpoints and evaluates; returns the last evaluation metrics (may be empty).

  Raises:
    fault.TrainingInterrupted: SIGTERM or SIGINT arrived (from the start of this call on, on
      any process); the checkpoint of the step it names is committed.
    fault.NonFiniteLossError, checkpoint.CheckpointWriteError, DataError, fault.InputFailed:
      see the module docstring.
  """
  with fault.StopSignals() as signals:
    return _train_and_evaluate(config, workdir, signals)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        signals: fault.StopSignals) -> dict:
  # Imported here so that model, loss and step code never needs tensorflow.
  from centernet_jax import evaluate
  from centernet_jax.data import pipeline

  # --- Workdir and config: the class count comes from the data set ---------------------------
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  info = pipeline.get_dataset_info(config.data, workdir=workdir)
  config = tasks.resolve_config(config, info.num_classes)
  global_batch = config.train.batch_size
  steps_per_epoch = max(info.num_train // global_batch, 1)
  total_steps = (config.train.num_steps if config.train.num_steps > 0
                 else config.train.num_epochs * steps_per_epoch)
  finished = finished_run(workdir, total_steps, checkpoint_meta(config, info))
  if finished is not None:  # before anything is built or compiled
    return finished
  if jax.process_index() == 0:
    config_lib.save_config(config, workdir)

  # --- Mesh: the batch is split over every device of every process ---------------------------
  mesh = sharding.make_mesh()
  sharding.check_global_batch(global_batch)

  # --- Model and optimiser -------------------------------------------------------------------
  model = models.build_model(config.model)
  tx, schedule = optim.make_optimizer(config.optim, batch_size=global_batch,
                                      steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  logging.info('%d devices, %d processes, global batch %d, %d steps (%d per epoch), peak lr %g',
               jax.device_count(), jax.process_count(), global_batch, total_steps,
               steps_per_epoch, optim.learning_rate(config.optim, global_batch))

  # --- State: resume, or initialise (config.resume, config.init, scratch) --------------------
  meta = checkpoint_meta(config, info)
  height, width = data_config.input_hw(config.data)
  init = jax.jit(functools.partial(state.init_state, model, tx,
                                   image_shape=(1, height, width, 3)),
                 out_shardings=sharding.replicated(mesh))
  ckpt = checkpoint.open_for_training(workdir, config.train.keep_checkpoints)
  train_state = checkpoint.restore_or_init(ckpt, init(jax.random.PRNGKey(config.seed)), meta,
                                           resume=config.resume, init=config.init)
  start_step = int(jax.device_get(train_state.step))

  # --- Update step: one compile, state donated, stop flags agreed inside ---------------------
  monitor = fault.NonFiniteMonitor(config.train.nonfinite_policy,
                                   config.train.max_consecutive_skips,
                                   lambda: f'step {ckpt.latest_step()} in {ckpt.directory}')
  train_step = tasks.get(config.task).make_train_step(config, model, tx, schedule)
  if monitor.policy == 'skip':
    train_step = fault.guard_nonfinite(train_step)
  rep, dat = sharding.replicated(mesh), sharding.data_sharding(mesh)
  train_step = jax.jit(fault.with_stop_flags(train_step), donate_argnums=(0,),
                       in_shardings=(rep, dat, dat), out_shardings=(rep, rep, rep))

  # --- Evaluator: built once, its predict function compiled once -----------------------------
  evaluator = evaluate.Evaluator(config, model, info)

  # --- Input: transferred to the mesh on a background thread ---------------------------------
  batches = sharding.Prefetcher(pipeline.create_train_iterator(
      config.data, info=info, global_batch_size=global_batch, seed=config.seed,
      start_step=start_step, process_index=jax.process_index(),
      process_count=jax.process_count(), log_skips=False), mesh, HOST_KEYS)
  agreement = fault.StopAgreement(signals, mesh, batches)
  in_flight = fault.InFlightLimit(2)  # a signal waits for at most 2 queued steps

  # --- Loop ----------------------------------------------------------------------------------
  writer = MetricWriter(workdir)
  loader_counts = pipeline.data_counts(info)
  if loader_counts:
    writer.write(start_step, loader_counts, prefix='data/')
  input_counts = errors.TrainInputCounts(config.data.max_objs)  # rows the loop consumed
  progress = _Progress(start_step, total_steps)
  eval_metrics: dict = {}
  history: list[tuple] = []  # (step, device metrics, image ids) not yet checked
  saved_step = start_step if ckpt.latest_step() == start_step else None
  t_log, step_log = time.time(), start_step
  step = start_step
  try:
    stop = agreement.start(start_step)
    while stop is None and step < total_steps:
      step += 1
      batch, host = agreement.next_batch()
      train_state, metrics, stop_flags = train_step(train_state, batch, agreement.flags())
      in_flight.add(metrics)
      input_counts.update(host)
      history.append((step, metrics, host.get('image_id', ())))
      is_last = step == total_steps
      due_log = step % config.train.log_every == 0 or is_last
      due_ckpt = step % config.train.checkpoint_every == 0 or is_last
      stop = agreement.decide(step, stop_flags, now=due_log or due_ckpt)
      if stop is not None and stop.error:
        break  # the failed process trained on a repeated batch: nothing more is checked or saved
      if due_log or due_ckpt or stop is not None:
        entries, history = jax.device_get(history), []
        monitor.check(entries)  # before any checkpoint of these steps is written
      if due_log:
        now = time.time()
        ips = (step - step_log) * global_batch / max(now - t_log, 1e-9)
        t_log, step_log = now, step
        last = {k: float(v) for k, v in entries[-1][1].items()}
        extra = input_counts.metrics()
        if monitor.policy == 'skip':
          extra['skipped_updates'] = monitor.skipped_updates
        writer.write(step, dict(last, images_per_sec=ips, **extra), prefix='train/')
        progress.update(step, last['loss'], ips)
      if due_ckpt:
        ckpt.save(train_state, meta, force=is_last)
        saved_step = step
      if stop is None and ((config.train.eval_every > 0 and step % config.train.eval_every == 0)
                           or is_last):
        result = _evaluate(evaluator, train_state, workdir, step)  # None: failed (any process)
        eval_metrics = eval_metrics if result is None else result
        writer.write(step, {'failed': 1.0} if result is None else result, prefix='eval/')

    # --- Stop: an input failure, or a signal (checkpoint committed first) --------------------
    if stop is not None and stop.error:
      agreement.raise_input_error(stop)
    if stop is not None:
      if saved_step != stop.step and stop.step > 0:
        ckpt.save(train_state, meta, force=True)
      ckpt.wait()
      raise fault.TrainingInterrupted.after(stop, ckpt.directory)
    ckpt.wait()
    _log_input_summary(input_counts, loader_counts)
  except BaseException:
    try:  # let a save in flight commit (or fail) before the error propagates
      ckpt.wait()
    except Exception as e:  # noqa: BLE001 - the original error is the one to report
      logging.error('%s', e)
    raise
  finally:
    batches.close()
    progress.close()
    writer.close()
  ckpt.close()
  return eval_metrics


def _log_input_summary(input_counts: errors.TrainInputCounts, loader_counts: dict) -> None:
  """The end-of-run line on what the input left out: a warning when anything was."""
  left_out = {k: v for k, v in loader_counts.items() if v and k != 'exif_oriented_images'}
  line = input_counts.summary()
  if left_out:
    line += '; loader: ' + ', '.join(f'{k} {v}' for k, v in left_out.items())
    line += ' (data/ in metrics.jsonl)'
  if input_counts.skipped_images or input_counts.max_dropped or left_out:
    logging.warning('%s', line)
  else:
    logging.info('%s', line)


def finished_run(workdir: str, total_steps: int, meta: dict) -> dict | None:
  """The final metrics when ``workdir`` holds this run finished, else None.

  Finished: the latest complete checkpoint is of step ``total_steps``, of the same model and
  label space (``meta``; a difference is left to the resume path, which reports it), and
  ``eval/step_<total_steps>/metrics.json`` is written. Says so (process 0) when it is.
  """
  ckpt_dir = checkpoint.checkpoint_dir(workdir)
  metrics_path = os.path.join(workdir, 'eval', f'step_{total_steps}', 'metrics.json')
  try:
    steps = [int(n) for n in os.listdir(ckpt_dir)
             if n.isdigit() and checkpoint.why_incomplete(os.path.join(ckpt_dir, n)) is None]
  except OSError:
    return None
  if not steps or max(steps) != total_steps or not os.path.isfile(metrics_path):
    return None
  logging.getLogger('absl').addFilter(cli.READ_ONLY_FILTER)  # Orbax's read-only notices
  ckpt = checkpoint.Checkpointer(ckpt_dir, read_only=True)
  try:
    saved = ckpt.restore_meta(total_steps)
    checkpoint.check_meta(saved, meta, ckpt_dir)
  except Exception:  # noqa: BLE001 - not a finished run of this config: the normal path decides
    return None
  finally:
    ckpt.close()
  if any(json.loads(json.dumps(saved.get(k))) != json.loads(json.dumps(meta.get(k)))
         for k in ('class_names', 'category_ids')):
    return None
  with open(metrics_path) as f:
    metrics = json.load(f)
  if jax.process_index() == 0:
    summary = ', '.join(f'{k} {v:.4f}' for k, v in list(metrics.items())[:1])
    print(f'nothing to do: {workdir} holds the checkpoint of the last step ({total_steps}) and '
          f'its evaluation ({metrics_path}{": " + summary if summary else ""}); raise '
          'config.train.num_steps (or num_epochs) to train longer, or use another --workdir',
          file=sys.stderr, flush=True)
  return metrics


def _evaluate(evaluator, train_state, workdir: str, step: int) -> dict | None:
  """Evaluates; None if that failed on any process (logged; training goes on everywhere)."""
  variables = {'params': train_state.params, 'batch_stats': train_state.batch_stats}
  result = None
  try:
    result = evaluator(variables, os.path.join(workdir, 'eval', f'step_{step}'))
  except Exception as e:  # noqa: BLE001 - whatever evaluation does, training goes on
    logging.exception('Evaluation at step %d failed (%s: %s); training goes on', step,
                      type(e).__name__, e)
    print(f'warning: evaluation at step {step} failed ({type(e).__name__}: {e}); training goes '
          'on', file=sys.stderr)
  if fault.agree_any(result is None) and result is not None:  # one result for all processes
    logging.warning('Evaluation at step %d failed on another process; its metrics are not '
                    'used', step)
    result = None
  return result


class _Progress:
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
  if FLAGS.coordinator_address or FLAGS.num_processes:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  elif FLAGS.distributed:
    jax.distributed.initialize()
  try:
    train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except fault.TrainingInterrupted as e:
    logging.warning('%s', e)
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)
  except (checkpoint.ModelMismatchError, checkpoint.CheckpointWriteError, fault.InputFailed,
          fault.NonFiniteLossError, ValueError, FileNotFoundError) as e:
    cli.fail(e, 1)


if __name__ == '__main__':
  # --config: a file or a shipped config's name; without it, W/config.json (resume a run).
  cli.run(main, run_flags=('workdir',), required=('workdir',))
