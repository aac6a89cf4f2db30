r"""Train CenterNet: ``python -m centernet_jax.train --config configs/X.py --workdir W``.

Rerunning the same command resumes from W's latest checkpoint; the data stream continues where
it stopped (it is a pure function of the seed and the step). Multi-host: run the same command on
every host with ``--distributed`` (TPU pods, SLURM) or with ``--coordinator_address``,
``--num_processes`` and ``--process_id``.

Fault tolerance (experiments/fault_tolerance.md):
  * SIGTERM / SIGINT: the current step finishes, a checkpoint is written and committed, and the
    process exits with status 128 + signal (143 / 130) and a message naming the step; rerunning
    resumes there. A second signal exits at once (same status); the checkpoint being written
    then is left as an Orbax temporary directory, which is never restored from.
  * Any kill (-9 included): the next run moves incomplete checkpoint directories to
    ``<workdir>/checkpoints_partial/`` (logged) and resumes from the newest complete one.
  * Non-finite loss or gradients: ``config.train.nonfinite_policy``.
  * Unreadable images and invalid annotations: skipped, logged and counted
    (``config.data.max_skip_fraction``).
  * A failed checkpoint write stops with :class:`checkpoint.CheckpointWriteError` (exit status
    1); a failed evaluation is logged and training goes on.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import math
import os
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
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


class TrainingInterrupted(Exception):  # noqa: N818 - not an error: a requested stop
  """Training stopped on a signal after committing a checkpoint (``step``)."""

  def __init__(self, message: str, step: int, signum: int):
    super().__init__(message)
    self.step = step
    self.signum = signum


HOST_KEYS = ('image_id', 'skipped')  # batch entries that stay on the host


def guard_nonfinite(train_step):
  """Wraps ``train_step(state, batch) -> (state, metrics)`` so non-finite updates are skipped.

  The candidate state is computed as usual; if any metric (loss terms, gradient norm) or any
  new parameter is not finite, the old parameters, batch statistics and optimiser state are
  kept (only ``step`` advances, so the data stream and the schedule go on). The metrics gain
  ``skipped_update`` (1.0 when the update was skipped). Jittable; no host round trip.
  """

  def guarded(state, batch):
    new_state, metrics = train_step(state, batch)
    leaves = jax.tree.leaves(metrics) + jax.tree.leaves(new_state.params)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
    kept = state.replace(step=new_state.step)
    out = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, kept)
    return out, dict(metrics, skipped_update=jnp.logical_not(finite).astype(jnp.float32))

  return guarded


class NonFiniteMonitor:
  """Host side of ``config.train.nonfinite_policy``, fed the metrics of every step in order.

  'stop': raises at the first step whose metrics are not all finite. 'skip' (the jitted step is
  wrapped by :func:`guard_nonfinite`): counts skipped updates (``skipped_updates``) and raises
  when more than ``max_consecutive`` steps in a row were skipped. The error names the step and
  the image ids of its batch.
  """

  def __init__(self, policy: str, max_consecutive: int, last_checkpoint=lambda: 'none'):
    self.policy = policy
    self.max_consecutive = max_consecutive
    self.last_checkpoint = last_checkpoint
    self.skipped_updates = 0
    self.consecutive = 0

  def _error(self, text: str) -> NonFiniteLossError:
    return NonFiniteLossError(
        f'{text}. Last checkpoint: {self.last_checkpoint()}. Lower config.optim.lr, add '
        "config.optim.warmup_steps or config.optim.grad_clip, or set "
        "config.train.nonfinite_policy='skip'.")

  def check(self, entries: list[tuple]) -> None:
    """``entries``: host copies of (step, metrics, image ids), in step order."""
    for step, metrics, image_ids in entries:
      if self.policy == 'stop':
        if not all(math.isfinite(float(v)) for v in metrics.values()):
          raise self._error(f'non-finite loss at step {step}: {_describe_metrics(metrics)}; '
                            f'image ids of the batch: {_ids(image_ids)}')
        continue
      if metrics['skipped_update'] > 0:
        self.skipped_updates += 1
        self.consecutive += 1
        logging.warning('Non-finite update skipped at step %d (%s); image ids %s', step,
                        _describe_metrics(metrics), _ids(image_ids))
        if self.consecutive > self.max_consecutive:
          raise self._error(
              f'non-finite loss or gradients in {self.consecutive} steps in a row (up to step '
              f'{step}; config.train.max_consecutive_skips={self.max_consecutive}); image ids '
              f'of the batch at step {step}: {_ids(image_ids)}')
      else:
        self.consecutive = 0


class StopSignals:
  """SIGTERM/SIGINT handlers: the first sets ``signum``, the second exits at once.

  A context manager; the previous handlers come back on exit. Outside the main thread (where
  Python cannot install handlers) it does nothing.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.signum is not None:
      print(f'{name} again: exiting now without waiting for the checkpoint (an unfinished one '
            'is never restored from)', file=sys.stderr, flush=True)
      os._exit(128 + signum)
    self.signum = signum
    print(f'{name} received: finishing the current step, then writing a checkpoint (send it '
          'again to exit at once)', file=sys.stderr, flush=True)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
    return False


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
  """Yields (global device batch, host-only entries), keeping ``size`` transfers in flight."""
  queue = collections.deque()
  for batch in iterator:
    host = {k: batch.pop(k) for k in HOST_KEYS if k in batch}
    queue.append((sharding.host_to_global(batch, mesh), host))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def _describe_metrics(metrics: dict) -> str:
  return ', '.join(f'{k}={float(v):.4g}' for k, v in metrics.items())


def _ids(image_ids) -> str:
  return '[' + ', '.join(str(int(i)) for i in image_ids) + ']'


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
    # Backbone-only or other-class-count checkpoints (e.g. converted official weights) fit too.
    step, variables = checkpoint.init_variables_from(
        config.init, {'params': state.params, 'batch_stats': state.batch_stats}, meta)
    logging.info('Initialised from config.init=%s (step %d)', config.init, step)
    return state.replace(params=variables['params'], batch_stats=variables['batch_stats'])
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, checkpoints and evaluates; returns the last evaluation metrics (may be empty).

  Raises:
    TrainingInterrupted: SIGTERM or SIGINT arrived (from the start of this call on); the
      checkpoint of the step it names is committed.
    NonFiniteLossError, checkpoint.CheckpointWriteError, DataError: see the module docstring.
  """
  with StopSignals() as stopper:
    return _train_and_evaluate(config, workdir, stopper)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        stopper: StopSignals) -> dict:
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
  ckpt_dir = checkpoint.checkpoint_dir(workdir)
  if jax.process_index() == 0:
    checkpoint.set_aside_partial(ckpt_dir, checkpoint.partial_dir(workdir))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('centernet_jax: partial checkpoints set aside')
  ckpt = checkpoint.Checkpointer(ckpt_dir, max_to_keep=config.train.keep_checkpoints)
  state = restore_or_init(config, ckpt, state, meta)
  start_step = int(jax.device_get(state.step))

  # --- Update step: one compile, state donated -----------------------------------------------
  policy = config.train.nonfinite_policy
  if policy not in ('stop', 'skip'):
    raise ValueError(f"config.train.nonfinite_policy must be 'stop' or 'skip', got {policy!r}")
  train_step = tasks.make_train_step(config, model, tx, schedule)
  if policy == 'skip':
    train_step = guard_nonfinite(train_step)
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
  skipped_annotations = info.train_data.num_invalid if info.train_data is not None else 0
  if skipped_annotations:
    writer.write(start_step, {'skipped_annotations': skipped_annotations}, prefix='data/')
  eval_metrics: dict = {}
  history: list[tuple] = []  # (step, device metrics, image ids) since the last check
  skipped_images = 0
  monitor = NonFiniteMonitor(policy, config.train.max_consecutive_skips,
                             lambda: f'step {ckpt.latest_step()} in {ckpt.directory}')
  saved_step = start_step if ckpt.latest_step() == start_step else None
  progress = _progress(start_step, total_steps)
  t_log, step_log = time.time(), start_step

  def stop_on_signal(step: int) -> None:
    """After a signal: commits a checkpoint of ``step`` and raises TrainingInterrupted."""
    nonlocal saved_step, history
    entries = jax.device_get(history)
    history = []
    monitor.check(entries)
    name = signal.Signals(stopper.signum).name
    if saved_step != step and step > 0:
      ckpt.save(state, meta, force=True)
      saved_step = step
    ckpt.wait()
    where = (f'checkpoint of step {step} committed in {ckpt.directory}' if step > 0 else
             'no step was trained, nothing to save')
    raise TrainingInterrupted(f'stopped by {name} after step {step}: {where}; rerun the same '
                              'command to resume', step, stopper.signum)

  step = start_step
  try:
    for step in range(start_step + 1, total_steps + 1):
      if stopper.signum is not None:
        stop_on_signal(step - 1)
      batch, host = next(batches)
      state, metrics = train_step(state, batch)
      skipped_images += int(host['skipped'].sum()) if 'skipped' in host else 0
      history.append((step, metrics, host.get('image_id', ())))
      is_last = step == total_steps
      due_log = step % config.train.log_every == 0 or is_last
      due_ckpt = step % config.train.checkpoint_every == 0 or is_last
      if due_log or due_ckpt or stopper.signum is not None:
        entries = jax.device_get(history)
        history = []
        monitor.check(entries)  # before any checkpoint of these steps is written
        if due_log:
          now = time.time()
          ips = (step - step_log) * global_batch / max(now - t_log, 1e-9)
          t_log, step_log = now, step
          last = {k: float(v) for k, v in entries[-1][1].items()}
          extra = {'skipped_images': skipped_images}
          if policy == 'skip':
            extra['skipped_updates'] = monitor.skipped_updates
          writer.write(step, dict(last, images_per_sec=ips, **extra), prefix='train/')
          progress.update(step, last['loss'], ips)
      if due_ckpt:
        ckpt.save(state, meta, force=is_last)
        saved_step = step
      if stopper.signum is not None:
        stop_on_signal(step)
      if (config.train.eval_every > 0 and step % config.train.eval_every == 0) or is_last:
        result = _evaluate_safely(evaluate_lib, config, model, state, info, workdir, step)
        if result is not None:
          eval_metrics = result
          writer.write(step, eval_metrics, prefix='eval/')
        else:
          writer.write(step, {'failed': 1.0}, prefix='eval/')
    ckpt.wait()
  except BaseException:
    try:  # let a save in flight commit (or fail) before the error propagates
      ckpt.wait()
    except Exception as e:  # noqa: BLE001 - the original error is the one to report
      logging.error('%s', e)
    raise
  finally:
    progress.close()
    writer.close()
  ckpt.close()
  return eval_metrics


def _evaluate_safely(evaluate_lib, config, model, state, info, workdir: str, step: int
                     ) -> dict | None:
  """Evaluates; a failure is logged (with its traceback) and returns None: training goes on."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  try:
    return evaluate_lib.evaluate_variables(config, model, variables, info,
                                           os.path.join(workdir, 'eval', f'step_{step}'))
  except Exception as e:  # noqa: BLE001 - whatever evaluation does, training goes on
    logging.exception('Evaluation at step %d failed (%s: %s); training goes on', step,
                      type(e).__name__, e)
    print(f'warning: evaluation at step {step} failed ({type(e).__name__}: {e}); training goes '
          'on', file=sys.stderr)
    return None


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
  except TrainingInterrupted as e:
    logging.warning('%s', e)
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)
  except (checkpoint.ModelMismatchError, checkpoint.CheckpointWriteError, NonFiniteLossError,
          ValueError, FileNotFoundError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=config_lib.parse_flags)
