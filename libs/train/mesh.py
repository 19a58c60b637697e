"""Data parallelism over a `jax.sharding.Mesh` with one `data` axis.

Parameters and optimizer state are replicated; batches are split along their leading
axis. Works on one device, on the N devices of a host, and across hosts (call
`jax.distributed.initialize()` first, e.g. through `libs/train/app.py --multihost`): every
host builds the same global batch (the pipelines are deterministic) and feeds only the rows
of its own devices; `to_host` brings sharded outputs back to every host.

Example:
  >>> mesh = make_mesh()
  >>> step = jax.jit(train_step, in_shardings=(replicated(mesh), data_sharding(mesh)),
  ...                out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)
  >>> state, metrics = step(state, shard_batch(batch, mesh))
  >>> ids = to_host(decode(state.params, shard_batch(features, mesh)))
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
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
  """Places a global host batch (pytree of arrays with a leading batch axis) on the mesh.

  Every process passes the same global batch; each copies only the rows of its own
  devices, and the result is one global array split along the `data` axis (so the step
  sees the same batch on one host as on many).

  Example:
    >>> batch = shard_batch({"x": np.zeros((8, 3))}, make_mesh())   # 8 rows over the mesh
  """
  sharding = data_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)

  def place(x):
    x = np.asarray(x)
    # The callback runs for this process's devices only: each host transfers its own rows.
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(place, batch)


def to_host(tree: Any) -> Any:
  """NumPy copies of a pytree of (possibly multi-host sharded) arrays, on every process.

  `jax.device_get` cannot read rows held by another host's devices; those arrays are
  all-gathered first (a collective: every process must call this at the same point).

  Example:
    >>> ids, counts = to_host(decode_fn(params, *shard_batch((feats, lens), mesh)))
  """
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(get, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))
