"""Fault tolerance of the training loop: non-finite updates, stop signals, and multi-host agreement.

Everything here that decides whether training stops decides it once for all processes
(experiments/fault_tolerance.md, "Multi-host agreement"):

* :class:`NonFiniteMonitor` reads metrics that are replicated outputs of one SPMD step, so every
  process sees the same values and raises at the same step; :func:`guard_nonfinite` decides a
  skip inside the jitted step, also once for all.
* Stop signals and input failures are local events. :class:`StopAgreement` feeds each process's
  events into the train step as a tiny sharded input (cached on device; it changes only when an
  event happens) whose sum over processes is a replicated output; every process reads that
  output one step later (at once on log and checkpoint steps, which sync anyway), so all of them
  stop after the same step. XLA merges the sum into the all-reduce of the gradients, so the step
  gains no collective and the host no wait (experiments/agreement_bench.py); a signal to one
  process stops all of them within two steps.
* :func:`agree_any` and :func:`agree_message`: a host collective for the rare decisions taken
  where every process already waits (evaluation results, the message of an agreed stop).

With one process nothing here communicates.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from centernet_jax import sharding

MAX_MESSAGE_BYTES = 4096  # of an input failure's message sent to the other processes


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite."""


class TrainingInterrupted(Exception):  # noqa: N818 - not an error: a requested stop
  """Training stopped on a signal after committing a checkpoint (``step``)."""

  def __init__(self, message: str, step: int, signum: int):
    super().__init__(message)
    self.step = step
    self.signum = signum

  @classmethod
  def after(cls, stop: Stop, directory: str) -> TrainingInterrupted:
    """The message for an agreed stop on a signal, the checkpoint of ``stop.step`` committed."""
    where = (f'checkpoint of step {stop.step} committed in {directory}' if stop.step > 0
             else 'no step was trained, nothing to save')
    return cls(f'stopped by {signal.Signals(stop.signum).name} after step {stop.step}: {where}; '
               'rerun the same command to resume', stop.step, stop.signum)


class InputFailed(RuntimeError):
  """Another process's training input failed; every process stopped after the same step."""


# --- Non-finite updates ----------------------------------------------------------------------


def guard_nonfinite(train_step: Callable) -> Callable:
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
  the image ids of its batch (this process's rows). The metrics are replicated outputs of the
  step, so every process raises at the same step.
  """

  def __init__(self, policy: str, max_consecutive: int,
               last_checkpoint: Callable[[], str] = lambda: 'none'):
    if policy not in ('stop', 'skip'):
      raise ValueError(f"config.train.nonfinite_policy must be 'stop' or 'skip', got {policy!r}")
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
          raise self._error(f'non-finite loss at step {step}: {_describe(metrics)}; '
                            f'image ids of the batch: {_ids(image_ids)}')
        continue
      if metrics['skipped_update'] > 0:
        self.skipped_updates += 1
        self.consecutive += 1
        logging.warning('Non-finite update skipped at step %d (%s); image ids %s', step,
                        _describe(metrics), _ids(image_ids))
        if self.consecutive > self.max_consecutive:
          raise self._error(
              f'non-finite loss or gradients in {self.consecutive} steps in a row (up to step '
              f'{step}; config.train.max_consecutive_skips={self.max_consecutive}); image ids '
              f'of the batch at step {step}: {_ids(image_ids)}')
      else:
        self.consecutive = 0


def _describe(metrics: dict) -> str:
  return ', '.join(f'{k}={float(v):.4g}' for k, v in metrics.items())


def _ids(image_ids) -> str:
  return '[' + ', '.join(str(int(i)) for i in image_ids) + ']'


# --- Stop signals ----------------------------------------------------------------------------


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


# --- Host collectives for rare decisions -----------------------------------------------------


def agree_any(flag: bool) -> bool:
  """True on every process if ``flag`` is True on any process (a collective: all must call).

  With one process: ``flag``, without communicating.
  """
  return bool(_allgather_ints([int(bool(flag))]).any())


def agree_message(message: str | None) -> str | None:
  """The message of the first process that has one, prefixed ``process i: ``, on every process.

  A collective (all must call); at most ``MAX_MESSAGE_BYTES`` of each message travel. With one
  process: ``message``.
  """
  if jax.process_count() == 1:
    return message
  from jax.experimental import multihost_utils
  row = np.zeros(MAX_MESSAGE_BYTES, np.uint8)
  data = (message or '').encode('utf-8', errors='replace')[:MAX_MESSAGE_BYTES]
  row[:len(data)] = np.frombuffer(data, np.uint8)
  rows = np.asarray(multihost_utils.process_allgather(row))  # [processes, MAX_MESSAGE_BYTES]
  for i, r in enumerate(rows):
    if r.any():
      return f'process {i}: ' + bytes(r).rstrip(b'\0').decode('utf-8', errors='replace')
  return None


# --- Stopping after the same step on every process -------------------------------------------

# Columns of the per-process stop flags, 0 or 1 each: SIGTERM, SIGINT, the input failed.
_COLUMNS = (signal.SIGTERM, signal.SIGINT, 'input')


class Stop(NamedTuple):
  """An agreed decision to stop after ``step``.

  Attributes:
    step: the last step trained.
    signum: a stop signal reached some process (SIGTERM wins over SIGINT), else None.
    error: the training input of some process failed: its message (``process i: ...``), else
      None. No checkpoint may be written then (the failed process repeated its last batch).
  """
  step: int
  signum: int | None
  error: str | None


def with_stop_flags(train_step: Callable) -> Callable:
  """``train_step(state, batch)`` -> ``step(state, batch, flags) -> (state, metrics, agreed)``.

  ``flags`` [devices, 3] float32 (0 or 1: SIGTERM, SIGINT, input failed) is sharded like the
  batch, each process filling its own rows; ``agreed`` [3] is their sum over devices (> 0: on
  some process), a replicated output that every process reads alike. A float32 sum, because XLA
  then merges it into an all-reduce the step does anyway (the gradients'): no extra collective.
  """

  def step(state, batch, flags):
    state, metrics = train_step(state, batch)
    return state, metrics, jnp.sum(flags, axis=0)

  return step


class StopAgreement:
  """Decides on every process, after the same step, whether training stops.

  The loop reads its batches through :meth:`next_batch`, passes :meth:`flags` to the step
  wrapped by :func:`with_stop_flags`, and calls :meth:`decide` after each step.

  One process: decisions are local and immediate (a signal stops after the step in progress; an
  input error is raised at once). Several processes: a signal or an input failure on one process
  travels in the flags of its next step; every process reads the agreed flags of the previous
  step (of the current one on steps that sync anyway), so all stop after the same step. A
  process whose input failed repeats its last batch until then, so that the others' steps
  complete; nothing trained after the failure is saved (:attr:`Stop.error`).

  Args:
    signals: the installed :class:`StopSignals`.
    mesh: the training mesh (the flags are sharded over its data axis).
    batches: iterator of (device batch, host entries).
  """

  def __init__(self, signals: StopSignals, mesh, batches: Iterator[tuple[dict, dict]]):
    self.signals = signals
    self.multi = jax.process_count() > 1
    self.input_error: BaseException | None = None  # this process's input failure
    self._mesh = mesh
    self._batches = batches
    self._first: tuple[dict, dict] | None = None
    self._last: tuple[dict, dict] | None = None
    self._flags_cache: dict[tuple[int, int, int], jax.Array] = {}
    self._previous: jax.Array | None = None

  def start(self, step: int) -> Stop | None:
    """Before the first step (``step``: the one restored): stop already?

    Several processes: reads the first batch and agrees (one host collective) on a signal
    received during start-up or a failed first batch.
    """
    if not self.multi:
      return Stop(step, self.signals.signum, None) if self.signals.signum else None
    try:
      self._first = next(self._batches)
    except Exception as e:  # noqa: BLE001 - any input failure stops every process
      self._fail(e)
    return self._stop(step, _allgather_ints(list(self._local())).sum(axis=0))

  def next_batch(self) -> tuple[dict, dict]:
    """The next (device batch, host entries); after an input failure, the last batch again.

    Raises:
      StopIteration: the stream ended.
      Exception: with one process, whatever the input raised.
    """
    if self._first is not None:
      self._last, self._first = self._first, None
      return self._last
    if self.input_error is None:
      try:
        self._last = next(self._batches)
        return self._last
      except StopIteration:
        raise
      except Exception as e:  # noqa: BLE001 - any input failure stops every process
        if not self.multi:
          raise
        self._fail(e)
    return self._last[0], {}  # repeated for the others' sake; never saved

  def flags(self) -> jax.Array:
    """This process's stop flags for the next step, [devices, 3] float32 sharded over data."""
    key = self._local()
    if key not in self._flags_cache:  # a transfer only when the flags change
      rows = np.tile(np.array(key, np.float32), (len(self._mesh.local_devices), 1))
      self._flags_cache[key] = jax.make_array_from_process_local_data(
          sharding.data_sharding(self._mesh), rows)
    return self._flags_cache[key]

  def decide(self, step: int, agreed: jax.Array, *, now: bool) -> Stop | None:
    """After ``step``: whether to stop now (the same answer on every process).

    Args:
      step: the step just dispatched.
      agreed: the step's agreed flags (:func:`with_stop_flags`).
      now: read this step's flags (a log or checkpoint step, which waits for the step anyway);
        else the previous step's, which are ready without waiting.
    """
    if not self.multi:
      return Stop(step, self.signals.signum, None) if self.signals.signum else None
    # A process's flags never go back to 0, so reading this step's flags covers the previous
    # step's too: nothing is missed when ``now`` skips them.
    source, self._previous = (agreed if now else self._previous), agreed
    if source is None:
      return None
    return self._stop(step, np.asarray(jax.device_get(source)))

  def raise_input_error(self, stop: Stop) -> None:
    """Raises this process's input error, or :class:`InputFailed` naming another's."""
    text = (f'stopped after step {stop.step} on every process (nothing saved after the last '
            f'checkpoint): the training input failed on {stop.error}')
    if self.input_error is not None:
      logging.error('%s', text)
      raise self.input_error
    raise InputFailed(text)

  def _local(self) -> tuple[int, int, int]:
    """This process's flags (the ``_COLUMNS``)."""
    return (int(self.signals.signum == signal.SIGTERM), int(self.signals.signum == signal.SIGINT),
            int(self.input_error is not None))

  def _stop(self, step: int, agreed: np.ndarray) -> Stop | None:
    """The decision from the flags summed over processes (the same on every process)."""
    signums = [s for s, n in zip(_COLUMNS[:2], agreed[:2], strict=True) if n > 0]
    failed = bool(agreed[2] > 0)
    if not (signums or failed):
      return None
    return Stop(step, int(signums[0]) if signums else None,
                agree_message(self._message()) if failed else None)

  def _fail(self, error: BaseException) -> None:
    self.input_error = error
    logging.error('The training input failed (%s: %s); every process stops after the same step',
                  type(error).__name__, error)

  def _message(self) -> str | None:
    e = self.input_error
    return None if e is None else f'{type(e).__name__}: {e}'


class InFlightLimit:
  """Bounds the dispatched training steps still running, so a stop is not minutes late.

  JAX dispatches asynchronously: without a bound a one-process loop runs ahead to its next log
  or checkpoint step (several processes read each step's agreed flags and wait anyway), and a
  signal is acted on only when every queued step has run. On a 2-core CPU with 4-second steps
  that was 26 steps, 2.5 minutes after SIGTERM (experiments/fault_tolerance.md), far beyond a
  preemption's grace period. :meth:`add` each step's outputs; it waits for the oldest while more
  than ``limit`` are pending, so the device always has the next step queued.
  """

  def __init__(self, limit: int = 2):
    if limit < 1:
      raise ValueError(f'limit must be >= 1, got {limit}')
    self.limit = limit
    self._pending: collections.deque = collections.deque()

  def add(self, outputs) -> None:
    """Records a dispatched step's outputs (any pytree of arrays)."""
    self._pending.append(outputs)
    while len(self._pending) > self.limit:
      jax.block_until_ready(self._pending.popleft())


def _allgather_ints(values: list[int]) -> np.ndarray:
  """[processes, len(values)] int32: ``values`` of every process (a host collective)."""
  row = np.array(values, np.int32)
  if jax.process_count() == 1:
    return row[None]
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(row)).reshape(-1, len(values))
