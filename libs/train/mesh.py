"""Data parallelism over a `jax.sharding.Mesh` with one `data` axis.

Parameters and optimizer state are replicated; batches are split along their leading
axis. Works on one device, on the N devices of a host, and across hosts (each host
passes its own part of the global batch; call `jax.distributed.initialize()` first).

Example:
  >>> mesh = make_mesh()
  >>> step = jax.jit(train_step, in_shardings=(replicated(mesh), data_sharding(mesh)),
  ...                out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)
  >>> state, metrics = step(state, shard_batch(batch, mesh))
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
  if batch_size % mesh.size:
    raise ValueError(f"{name}={batch_size} must be divisible by the number of devices ({mesh.size})")


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Places a host batch (pytree of arrays with a leading batch axis) on the mesh.

  Single process: the global batch is split across devices. Multiple processes: each
  process passes its local shard and the result is the global array.
  """
  sharding = data_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))
