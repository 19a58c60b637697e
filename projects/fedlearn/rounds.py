"""Running rounds on a Mesh: padding, sharding over the client axis, SCAFFOLD's host store.

`build_round(alg, mesh)` jits `alg.apply` with the server state replicated and the clients,
weights and per-client diagnostics sharded along the client axis of a 1-D `data` mesh
(libs/train/mesh.py): each device runs the local training of its block of clients, and the
weighted sums over clients become one all-reduce. `pad_clients` pads a round to a multiple
of the mesh size with weight-0, example-free clients, which contribute exactly nothing.

Example:
  >>> mesh = make_mesh()
  >>> round_fn = build_round(alg, mesh)
  >>> clients, weights = pad_clients(clients, weights, mesh.size)
  >>> state, diag = round_fn(state, shard_clients(clients, mesh), weights, key)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from libs.train.mesh import data_sharding, replicated
from projects.fedlearn.algorithms import Clients, FedAlgorithm, ServerState, check_dp_weights


def pad_clients(clients: Clients, weights: np.ndarray, multiple: int) -> tuple[Clients, np.ndarray]:
  """Pads the client axis to a multiple of `multiple` with empty, weight-0 clients.

  Example:
    >>> padded, w = pad_clients(clients, weights, 8)   # 13 clients -> 16
  """
  num = len(weights)
  target = max(multiple, -(-num // multiple) * multiple)
  extra = target - num
  if extra == 0:
    return clients, np.asarray(weights, np.float32)

  def pad(x):
    x = np.asarray(x)
    return np.concatenate([x, np.zeros((extra,) + x.shape[1:], x.dtype)])

  control = None if clients.control is None else jax.tree.map(pad, clients.control)
  ids = np.concatenate([np.asarray(clients.ids, np.int32), -1 - np.arange(extra, dtype=np.int32)])
  padded = Clients(tuple(pad(x) for x in clients.data), pad(clients.mask), ids, control)
  return padded, pad(np.asarray(weights, np.float32))


def shard_clients(clients: Clients, mesh: Mesh) -> Clients:
  """Places a host batch of clients on the mesh, split along the client axis.

  Example:
    >>> clients = shard_clients(clients, mesh)
  """
  return jax.device_put(clients, data_sharding(mesh))


def build_round(alg: FedAlgorithm, mesh: Mesh, *, donate: bool = False) -> Callable:
  """`alg.apply` jitted on `mesh`: state replicated, client axis sharded.

  Args:
    alg: the federated algorithm.
    mesh: a 1-D mesh with the `data` axis (libs.train.mesh.make_mesh).
    donate: donate the server state's buffers to the new state.

  Returns:
    round_fn(state, clients, weights, key) -> (state, diagnostics); the number of clients
    must be a multiple of mesh.size (see `pad_clients`).

  Example:
    >>> state, diag = build_round(alg, mesh)(state, clients, weights, key)
  """
  rep, shard = replicated(mesh), data_sharding(mesh)

  def split_apply(state, clients, weights, key):
    state, diag = alg.apply(state, clients, weights, key)
    server = {k: v for k, v in diag.items() if k.startswith("server/")}
    return state, {k: v for k, v in diag.items() if not k.startswith("server/")}, server

  jitted = jax.jit(split_apply, in_shardings=(rep, shard, shard, rep), out_shardings=(rep, shard, rep),
                   donate_argnums=(0,) if donate else ())

  def round_fn(state: ServerState, clients: Clients, weights, key):
    if alg.dp is not None:
      check_dp_weights(weights)
    num = clients.mask.shape[0]
    if num % mesh.size:
      raise ValueError(f"{num} clients do not split over {mesh.size} devices; pad them with pad_clients")
    state, diag, server = jitted(state, clients, weights, key)
    return state, dict(diag, **server)

  return round_fn


class ControlVariateStore:
  """SCAFFOLD client control variates on the host, only for devices that participated.

  A never-seen device has c_i = 0 (SCAFFOLD's initialization), so storing only the
  participants is exact and costs memory in proportion to distinct participants, not to
  registered devices (100,000 devices x a 100k-parameter model would be 40 GB as float32).

  Example:
    >>> store = ControlVariateStore(params)
    >>> control = store.gather(ids)                     # stacked [C, ...] pytree
    >>> store.add(ids, diag["control_delta"], weights > 0)
  """

  def __init__(self, params: Any):
    leaves, self._treedef = jax.tree.flatten(params)
    self._shapes = [np.shape(x) for x in leaves]
    self._sizes = [int(np.prod(s)) for s in self._shapes]
    self._dim = int(sum(self._sizes))
    self._rows: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return len(self._rows)

  @property
  def nbytes(self) -> int:
    return 4 * self._dim * len(self._rows)

  def _unflatten(self, flat: np.ndarray) -> Any:
    parts = np.split(flat, np.cumsum(self._sizes)[:-1], axis=1)
    leaves = [p.reshape((flat.shape[0],) + s) for p, s in zip(parts, self._shapes)]
    return jax.tree.unflatten(self._treedef, leaves)

  def gather(self, ids: np.ndarray) -> Any:
    flat = np.zeros((len(ids), self._dim), np.float32)
    for i, d in enumerate(np.asarray(ids)):
      row = self._rows.get(int(d))
      if row is not None:
        flat[i] = row
    return self._unflatten(flat)

  def add(self, ids: np.ndarray, deltas: Any, participated: np.ndarray) -> None:
    leaves = jax.tree.leaves(deltas)
    flat = np.concatenate([np.asarray(x, np.float32).reshape(len(ids), -1) for x in leaves], axis=1)
    for i, d in enumerate(np.asarray(ids)):
      if participated[i] and d >= 0:
        self._rows[int(d)] = self._rows.get(int(d), np.zeros(self._dim, np.float32)) + flat[i]

  def state_dict(self) -> dict[str, np.ndarray]:
    """{"count", "ids", "rows"}; at least one (padding) row, since orbax cannot save empty arrays."""
    ids = np.asarray(sorted(self._rows), np.int64)
    rows = np.stack([self._rows[int(i)] for i in ids]) if len(ids) else np.zeros((0, self._dim), np.float32)
    pad = max(1 - len(ids), 0)
    return {"count": np.asarray(len(ids), np.int64), "ids": np.concatenate([ids, np.full(pad, -1, np.int64)]),
            "rows": np.concatenate([rows, np.zeros((pad, self._dim), np.float32)])}

  def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
    count = int(state["count"])
    self._rows = {int(i): np.asarray(r, np.float32) for i, r in zip(state["ids"][:count], state["rows"][:count])}


def make_eval_fn(metrics_fn: Callable, batch_size: int = 512) -> Callable:
  """Host loop of a jitted masked metric sum over a flat evaluation set.

  Args:
    metrics_fn: `metrics_fn(params, *arrays) -> dict name -> per-example values [N]`.
    batch_size: examples per jitted call (the last batch is padded and masked).

  Returns:
    evaluate(params, *arrays) -> dict name -> mean over the examples.

  Example:
    >>> evaluate = make_eval_fn(lambda p, t, y: {"loss": task.example_losses(p, t, y)})
    >>> evaluate(params, tokens, intents)["loss"]
  """
  @jax.jit
  def batch_sums(params, arrays, mask):
    values = metrics_fn(params, *arrays)
    return {k: jnp.sum(v * mask) for k, v in values.items()}

  def evaluate(params, *arrays):
    num = len(arrays[0])
    totals: dict[str, float] = {}
    for start in range(0, num, batch_size):
      part = [np.asarray(a[start:start + batch_size]) for a in arrays]
      real = len(part[0])
      mask = np.zeros(batch_size, np.float32)
      mask[:real] = 1
      part = [np.concatenate([p, np.zeros((batch_size - real,) + p.shape[1:], p.dtype)]) for p in part]
      sums = jax.device_get(batch_sums(params, tuple(part), mask))
      for k, v in sums.items():
        totals[k] = totals.get(k, 0.0) + float(v)
    return {k: v / max(num, 1) for k, v in totals.items()}

  return evaluate


def replicate_tree(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))
