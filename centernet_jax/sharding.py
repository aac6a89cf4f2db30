"""Mesh and shardings: batch on the 'data' axis, parameters replicated.

Under ``jax.jit`` with these shardings, BatchNorm statistics and loss normalisers see the global
batch with no explicit collectives (DESIGN.md: no pmap, no pmean in model or loss code).
"""

from __future__ import annotations

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
