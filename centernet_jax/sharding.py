"""Mesh and shardings (batch on the 'data' axis, parameters replicated) and the transfer of
host batches to the mesh (:class:`Prefetcher`, on a background thread).

Under ``jax.jit`` with these shardings, BatchNorm statistics and loss normalisers see the global
batch with no explicit collectives (DESIGN.md: no pmap, no pmean in model or loss code).
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over every device of every process (or ``devices``), axis ``'data'``.

  The axis is ``Auto``: XLA's partitioner propagates shardings from the inputs, so model, target
  and loss code carries no sharding annotations.
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, P())


def check_global_batch(global_batch: int, what: str = 'config.train.batch_size') -> int:
  """Returns the per-process batch, or raises if the batch does not split evenly."""
  n_dev, n_proc = jax.device_count(), jax.process_count()
  if global_batch % n_dev:
    raise ValueError(f'{what}={global_batch} must be a multiple of the number of devices ({n_dev})')
  return global_batch // n_proc


def host_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's rows of a batch into global arrays sharded on ``'data'``."""
  sharding = data_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a host pytree on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


class Prefetcher:
  """Transfers batches to the mesh on a background thread, ``size`` batches ahead of the loop.

  Iterating yields ``(global device batch, host entries)``: the ``host_keys`` entries of each
  batch stay on the host as numpy (image ids, skip flags). An exception raised by ``batches``
  (or by the transfer) is raised by the ``next`` call that would have returned that batch;
  earlier batches are returned first. :meth:`close` stops the thread (also a context manager).

  Args:
    batches: iterator of this process's numpy batches (dicts).
    mesh: the training mesh (batches are split over its data axis).
    host_keys: keys kept on the host.
    size: batches transferred ahead (the queue bound).
  """

  _END = object()

  def __init__(self, batches, mesh: Mesh, host_keys: tuple[str, ...] = (), size: int = 2):
    self._batches = batches
    self._mesh = mesh
    self._host_keys = host_keys
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name='prefetch_to_mesh', daemon=True)
    self._thread.start()

  def _run(self) -> None:
    try:
      for batch in self._batches:
        host = {k: batch.pop(k) for k in self._host_keys if k in batch}
        if not self._put((host_to_global(batch, self._mesh), host)):
          return
      self._put(self._END)
    except BaseException as e:  # noqa: BLE001 - handed to the loop, which raises it
      self._put(_Failure(e))

  def _put(self, item) -> bool:
    """Blocks until there is room or :meth:`close` is called (then False)."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def __iter__(self):
    return self

  def __next__(self) -> tuple[dict[str, jax.Array], dict[str, np.ndarray]]:
    item = self._queue.get()
    if item is self._END:
      self._queue.put(item)  # every later call ends too
      raise StopIteration
    if isinstance(item, _Failure):
      self._queue.put(item)
      raise item.error
    return item

  def close(self, timeout: float = 10.0) -> None:
    """Stops the thread (waits up to ``timeout`` s for the batch being read) and the input."""
    self._stop.set()
    while True:
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout)
    if not self._thread.is_alive() and hasattr(self._batches, 'close'):
      self._batches.close()  # a generator: runs its cleanup (tf.data iterators)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False


class _Failure:
  def __init__(self, error: BaseException):
    self.error = error
