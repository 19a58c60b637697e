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

import json
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from libs.train import io as io_lib
from libs.train.mesh import data_sharding, replicated
from libs.train.metrics import check_finite
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


# --------------------------------------------------------------------------------------
# Experiments: `run(config, workdir)` runs every sub-run of a config, resumably.
# --------------------------------------------------------------------------------------

RUN_KINDS = ("federated", "centralized")
TASKS = ("intent", "next_word")


def _require(ok: bool, field: str, message: str, value) -> None:
  if not ok:
    raise ValueError(f"config.{field} {message}, got {value!r}")


def _get(config, field: str):
  value = config
  for part in field.split("."):
    value = value[part]
  return value


def _positive_int(config, field: str, minimum: int = 1) -> None:
  value = _get(config, field)
  _require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum, field,
           f"must be an integer >= {minimum}", value)


def _number(config, field: str, low: float, high: float, *, low_open=False, high_open=False) -> None:
  value = _get(config, field)
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
  lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
  _require(ok, field, f"must be a number in {lo}{low:g}, {high:g}{hi}", value)


def validate(config) -> None:
  """Raises ValueError naming the first invalid field of one (merged) sub-run config.

  Example:
    >>> validate(config)   # ValueError: config.fl.clients_per_round must be an integer >= 1, got 0
  """
  from projects.fedlearn import partition as partition_lib  # pylint: disable=import-outside-toplevel
  from projects.fedlearn.selection import DROPOUT_MODES, SCHEMES, WEIGHTINGS  # pylint: disable=import-outside-toplevel
  from projects.fedlearn.algorithms import ALGORITHMS, SERVER_OPTIMIZERS  # pylint: disable=import-outside-toplevel
  _require(config.kind in RUN_KINDS, "kind", f"must be one of {RUN_KINDS}", config.kind)
  _require(config.task.name in TASKS, "task.name", f"must be one of {TASKS}", config.task.name)
  for field in ("data.num_devices", "data.test_devices", "data.max_examples_per_client", "data.max_len",
                "data.num_periods", "data.max_examples_per_device", "task.embed_dim", "task.hidden_dim",
                "fl.rounds", "fl.eval_every", "fl.checkpoint_every", "eval_batch_size"):
    _positive_int(config, field)
  _positive_int(config, "data.max_len", 2)
  _number(config, "data.mean_examples", 1.0, math.inf, high_open=True)
  _number(config, "data.zipf_a", 1.0, math.inf, low_open=True, high_open=True)
  _require(config.partition.scheme in partition_lib.SCHEMES, "partition.scheme",
           f"must be one of {partition_lib.SCHEMES}", config.partition.scheme)
  _positive_int(config, "partition.num_clients", 0)
  for field in ("partition.alpha", "partition.beta"):
    _number(config, field, 0.0, math.inf, low_open=True, high_open=True)
  _require(config.fl.algorithm in ALGORITHMS, "fl.algorithm", f"must be one of {ALGORITHMS}", config.fl.algorithm)
  _positive_int(config, "fl.clients_per_round")
  _number(config, "fl.client_learning_rate", 0.0, math.inf, low_open=True, high_open=True)
  _positive_int(config, "fl.num_epochs", 0)
  _positive_int(config, "fl.batch_size", 0)
  _positive_int(config, "fl.num_steps", 0)
  _require(config.fl.num_epochs > 0 or config.fl.num_steps > 0, "fl.num_epochs",
           "must be >= 1 when fl.num_steps is 0", config.fl.num_epochs)
  _number(config, "fl.prox_mu", 0.0, math.inf, high_open=True)
  if config.fl.algorithm == "fedprox":
    _require(config.fl.prox_mu > 0, "fl.prox_mu", "must be > 0 for fedprox", config.fl.prox_mu)
  _require(config.fl.server_optimizer in SERVER_OPTIMIZERS, "fl.server_optimizer",
           f"must be one of {SERVER_OPTIMIZERS}", config.fl.server_optimizer)
  if config.fl.algorithm == "fedopt":
    _require(config.fl.server_optimizer != "sgd", "fl.server_optimizer",
             "must be adam, yogi or adagrad for fedopt", config.fl.server_optimizer)
  _number(config, "fl.server_learning_rate", 0.0, math.inf, low_open=True, high_open=True)
  _positive_int(config, "fl.chunk_size", 0)
  s = config.selection
  _require(s.scheme in SCHEMES, "selection.scheme", f"must be one of {SCHEMES}", s.scheme)
  _require(s.weighting in WEIGHTINGS, "selection.weighting", f"must be one of {WEIGHTINGS}", s.weighting)
  _number(config, "selection.cap_ratio", 1.0, math.inf, high_open=True)
  _number(config, "selection.reference_examples", 0.0, math.inf, high_open=True)
  _number(config, "selection.dropout", 0.0, 1.0, high_open=True)
  _require(s.dropout_mode in DROPOUT_MODES, "selection.dropout_mode", f"must be one of {DROPOUT_MODES}",
           s.dropout_mode)
  if config.continual.enabled:
    _require(config.data.num_periods >= 2, "data.num_periods", "must be >= 2 when continual.enabled",
             config.data.num_periods)
    _positive_int(config, "continual.storage_budget", 0)
    _require(config.fl.rounds % config.data.num_periods == 0, "fl.rounds",
             f"must be a multiple of data.num_periods={config.data.num_periods} when continual.enabled",
             config.fl.rounds)
  dp = config.dp
  if dp.enabled:
    from projects.fedlearn import privacy  # pylint: disable=import-outside-toplevel
    _number(config, "dp.target_epsilon", 0.0, math.inf, low_open=True, high_open=True)
    _number(config, "dp.delta", 0.0, 1.0, low_open=True, high_open=True)
    _number(config, "dp.clip_norm", 0.0, math.inf, low_open=True, high_open=True)
    _number(config, "dp.noise_multiplier", 0.0, math.inf, high_open=True)
    _number(config, "dp.target_quantile", 0.0, 1.0)
    _number(config, "dp.clip_learning_rate", 0.0, math.inf, high_open=True)
    _number(config, "dp.count_noise_std", 0.0, math.inf, high_open=True)
    if dp.adaptive and dp.noise_multiplier > 0:
      count_std = dp.count_noise_std or config.fl.clients_per_round * (1 - s.dropout) / 20
      _require(2 * count_std > dp.noise_multiplier, "dp.count_noise_std",
               f"(default: expected clients / 20) must exceed dp.noise_multiplier / 2 = {dp.noise_multiplier / 2:g}",
               count_std)
    _require(dp.accountant in ("rdp", "pld"), "dp.accountant", "must be 'rdp' or 'pld'", dp.accountant)
    _require(isinstance(dp.insecure_reproducible_noise, bool), "dp.insecure_reproducible_noise", "must be a bool",
             dp.insecure_reproducible_noise)
    try:
      privacy.check_partition(config.partition.scheme)
    except ValueError as e:
      raise ValueError(f"config.partition.scheme={config.partition.scheme!r} with dp.enabled: {e}") from None
    _require(config.fl.algorithm != "scaffold", "fl.algorithm",
             "must not be scaffold with dp.enabled (control variates are released without noise)",
             config.fl.algorithm)
    try:
      privacy.check_scheme(s.scheme, accountant=dp.accountant, dropout=s.dropout, dropout_mode=s.dropout_mode)
    except ValueError as e:
      raise ValueError(f"config.selection.scheme={s.scheme!r} with dp.enabled: {e}") from None
  if config.kind == "centralized":
    _positive_int(config, "centralized.epochs")
    _positive_int(config, "centralized.batch_size")
    _number(config, "centralized.learning_rate", 0.0, math.inf, low_open=True, high_open=True)


def _merge(base, overrides) -> Any:
  """A copy of `base` with the nested values of `overrides` set (unknown keys are errors)."""
  values = base.to_dict()
  values.pop("runs", None)
  out = ml_collections.ConfigDict(values)

  def put(target, values, prefix):
    for key, value in values.items():
      if key not in target:
        raise ValueError(f"config.runs: unknown field {prefix}{key}")
      if isinstance(value, (dict, ml_collections.ConfigDict)) and isinstance(target[key], ml_collections.ConfigDict):
        put(target[key], value, f"{prefix}{key}.")
      else:
        target[key] = value

  put(out, overrides, "")
  return out


def sub_runs(config) -> list[tuple[str, Any]]:
  """(name, merged config) of every sub-run, each validated before any work starts.

  Example:
    >>> [name for name, _ in sub_runs(config)]
  """
  runs = config.get("runs") or {"main": {}}
  order = list(config.get("run_order") or ())  # ConfigDict sorts its keys; this keeps the intended order.
  unknown = [n for n in order if n not in runs]
  if unknown:
    raise ValueError(f"config.run_order names runs not in config.runs: {unknown}")
  names = order + [n for n in runs.keys() if n not in order]
  merged = []
  for name in names:
    overrides = runs[name]
    cfg = _merge(config, overrides)
    try:
      validate(cfg)
    except ValueError as e:
      raise ValueError(f"run {name!r}: {e}") from None
    merged.append((name, cfg))
  return merged


def _data_key(cfg) -> tuple:
  d = cfg.data
  return (cfg.seed, d.num_devices, d.num_periods, d.mean_examples, d.zipf_a, d.max_examples_per_device,
          d.max_len, d.test_devices)


class _World:
  """Train/test populations shared by the sub-runs of one config (built once)."""

  def __init__(self):
    self._cache = {}

  def get(self, cfg):
    from projects.fedlearn import data as data_lib  # pylint: disable=import-outside-toplevel
    key = _data_key(cfg)
    if key not in self._cache:
      d = cfg.data
      kw = dict(seed=cfg.seed, num_periods=d.num_periods, mean_examples=d.mean_examples, zipf_a=d.zipf_a,
                max_examples_per_device=d.max_examples_per_device, max_len=d.max_len)
      self._cache[key] = (data_lib.generate_population(d.num_devices, **kw), data_lib.held_out(d.test_devices, **kw))
    return self._cache[key]


def _make_task(cfg, train):
  from projects.fedlearn import tasks  # pylint: disable=import-outside-toplevel
  kwargs = {"embed_dim": cfg.task.embed_dim, "hidden_dim": cfg.task.hidden_dim} if cfg.task.name == "intent" else {
      "dim": cfg.task.embed_dim, "num_layers": 1, "num_heads": 2, "mlp_multiplier": 2}
  return tasks.make_task(cfg.task.name, vocab_size=len(train.vocab), num_intents=len(train.intent_names),
                         max_len=train.max_len, **kwargs)


def _pad_size(num: int, expected: float, multiple: int) -> int:
  """Fixed padded round size (one compile) for a variable number of selected clients."""
  upper = int(math.ceil(expected + 4 * math.sqrt(max(expected, 1.0)) + 4))
  return max(-(-num // multiple), -(-upper // multiple)) * multiple


def _device_privacy(cfg, num_devices: int):
  """(DeviceAccountant, DPConfig) for a DP run: noise calibrated to the target unless given.

  q comes from configured quantities only (`privacy.sampling_probability`): the largest
  realised p_i is a function of the private data.
  """
  from projects.fedlearn import privacy  # pylint: disable=import-outside-toplevel
  from projects.fedlearn.algorithms import DPConfig  # pylint: disable=import-outside-toplevel
  dp, s, m = cfg.dp, cfg.selection, cfg.fl.clients_per_round
  q = privacy.sampling_probability(s.scheme, num_devices=num_devices, clients_per_round=m, cap_ratio=s.cap_ratio)
  z = dp.noise_multiplier or privacy.calibrate_noise_multiplier(
      dp.target_epsilon, dp.delta, cfg.fl.rounds, s.scheme, num_devices=num_devices, clients_per_round=m,
      max_probability=q, accountant=dp.accountant)
  acct = privacy.DeviceAccountant(s.scheme, noise_multiplier=z, num_devices=num_devices, clients_per_round=m,
                                  max_probability=q, target_epsilon=dp.target_epsilon, delta=dp.delta,
                                  accountant=dp.accountant, dropout=s.dropout, dropout_mode=s.dropout_mode)
  expected = m * (1 - s.dropout)
  count_std = (dp.count_noise_std or expected / 20) if dp.adaptive else 0.0
  try:
    z_delta = privacy.split_noise_multiplier(z, count_std) if dp.adaptive else z
  except ValueError as e:
    raise ValueError(f"config.dp.count_noise_std: {e} (calibrated noise_multiplier {z:.4g})") from None
  config = DPConfig(clip_norm=dp.clip_norm, noise_multiplier=z_delta, expected_clients=expected,
                    adaptive=dp.adaptive, target_quantile=dp.target_quantile,
                    clip_learning_rate=dp.clip_learning_rate, count_noise_std=count_std)
  return acct, config


def round_randomness(cfg):
  """(init key, round key, selection seed, DpRandomness or None) of one sub-run.

  Without DP everything derives from cfg.seed. With DP the round key (client order and the
  server's Gaussian noise) and the selection seed come from `DpRandomness`: the operating
  system's secret randomness unless cfg.dp.insecure_reproducible_noise, because cfg.seed is
  published in results.json. A resumed DP run draws fresh secret randomness.

  Example:
    >>> init_key, round_key, selection_seed, dp_rand = round_randomness(cfg)
  """
  init_key, train_key = jax.random.split(jax.random.key(cfg.seed))
  if not cfg.dp.enabled:
    return init_key, train_key, cfg.seed, None
  from libs.dp.randomness import DpRandomness  # pylint: disable=import-outside-toplevel
  dp_rand = DpRandomness.from_config(cfg.seed, cfg.dp.insecure_reproducible_noise)
  return init_key, dp_rand.key("fedlearn_rounds"), dp_rand.seed("fedlearn_selection"), dp_rand


def _selection_rate(cfg, num_devices: int) -> float | None:
  """DP runs with "activity_capped": the fixed per-example rate m / (N n_ref) (see `selection`)."""
  if not (cfg.dp.enabled and cfg.selection.scheme == "activity_capped"):
    return None
  reference = cfg.selection.reference_examples or cfg.data.mean_examples
  return cfg.fl.clients_per_round / (num_devices * reference)


# What a DP-FedAvg run's guarantee covers, recorded with its epsilon in results.json.
_DP_SCOPE = ("per device (add/remove one device with all its examples): the noisy sums of clipped deltas and "
             "the noisy clipped count (adaptive clipping) of every round, hence the model and everything "
             "computed from it; metrics of DP runs hold only private quantities (epsilon, clip norm, noisy "
             "unclipped fraction) and test-set metrics on held-out devices. Not covered: the test devices "
             "(not training data) and the configured quantities (N, m, n_ref), which are public.")


def run_federated(name: str, cfg, workdir: str, world: _World, writer, mesh: Mesh) -> dict:
  """One federated sub-run: resumable from its checkpoint; returns its result row."""
  from projects.fedlearn import algorithms as alg_lib  # pylint: disable=import-outside-toplevel
  from projects.fedlearn import continual  # pylint: disable=import-outside-toplevel
  from projects.fedlearn import partition as partition_lib  # pylint: disable=import-outside-toplevel
  from projects.fedlearn import selection  # pylint: disable=import-outside-toplevel
  from libs.train.checkpoint import Checkpointer  # pylint: disable=import-outside-toplevel
  from libs.train.loop import train_loop  # pylint: disable=import-outside-toplevel
  started = time.perf_counter()
  train, test = world.get(cfg)
  p = cfg.partition
  if p.scheme != "natural":
    train = partition_lib.partition(train, p.scheme, num_clients=p.num_clients or None, alpha=p.alpha, beta=p.beta,
                                    num_clusters=p.num_clusters, seed=cfg.seed)
  task = _make_task(cfg, train)
  fl, s = cfg.fl, cfg.selection
  num_clients = train.num_devices
  _require(fl.clients_per_round <= num_clients, "fl.clients_per_round",
           f"must be <= the number of clients ({num_clients})", fl.clients_per_round)
  accountant, dp_config = None, None
  if cfg.dp.enabled:
    accountant, dp_config = _device_privacy(cfg, num_clients)
  rate = _selection_rate(cfg, num_clients)
  client = alg_lib.ClientConfig(fl.client_learning_rate, fl.num_epochs, fl.batch_size, fl.num_steps,
                                fl.prox_mu if fl.algorithm == "fedprox" else 0.0)
  alg = alg_lib.make_algorithm(fl.algorithm, task.example_losses, client, server_optimizer_name=fl.server_optimizer,
                               server_learning_rate=fl.server_learning_rate, num_devices=num_clients, dp=dp_config,
                               chunk_size=fl.chunk_size)
  init_key, train_key, selection_seed, dp_rand = round_randomness(cfg)
  state = replicate_tree(alg.init(task.init(init_key)), mesh)
  run_dir = os.path.join(workdir, name)
  ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), save_every=fl.checkpoint_every)
  store = ControlVariateStore(state.params) if fl.algorithm == "scaffold" else None
  round_fn = build_round(alg, mesh)
  evaluate = make_eval_fn(task.example_metrics, cfg.eval_batch_size)
  _require(fl.chunk_size % mesh.size == 0, "fl.chunk_size", f"must be a multiple of the {mesh.size} devices",
           fl.chunk_size)
  multiple = fl.chunk_size or mesh.size
  expected = float(fl.clients_per_round)
  rounds_per_period = fl.rounds // cfg.data.num_periods if cfg.continual.enabled else fl.rounds
  cache: dict[int, tuple] = {}

  def period_data(period: int):
    if period not in cache:
      cache.clear()
      if cfg.continual.enabled:
        held = continual.available(train, period, cfg.continual.storage_budget or None)
        tst = continual.period_slice(test, period)
      else:
        held, tst = train, test
      cache[period] = (held, held.num_examples(), tst.pooled())
    return cache[period]

  def eval_row(done: int, state) -> dict | None:
    if not (done % fl.eval_every == 0 or done == fl.rounds or (
        cfg.continual.enabled and done % rounds_per_period == 0)):
      return None
    _, _, (tokens, intents) = period_data(min(done - 1, fl.rounds - 1) // rounds_per_period)
    values = evaluate(state.params, tokens, intents)
    return {f"{name}/test/loss": values["loss"], f"{name}/test/accuracy": values["correct"]}

  def one_round(state, r: int):
    if accountant is not None:
      if r > accountant.rounds:
        accountant.record_round(r - accountant.rounds)  # Rounds spent before a resume.
      accountant.check_next_round()  # PrivacyBudgetExceeded before overspending.
    held, counts, _ = period_data(r // rounds_per_period)
    rng = np.random.default_rng((selection_seed, 7, r))
    sel = selection.select(s.scheme, counts, fl.clients_per_round, rng, cap_ratio=s.cap_ratio,
                           weighting=s.weighting, rate=rate)
    sel, survived = selection.apply_dropout(sel, s.dropout, rng, weighting=s.weighting, mode=s.dropout_mode)
    weights = survived.astype(np.float32) if accountant is not None else sel.weights.astype(np.float32)
    batch = held.client_batch(sel.ids, cfg.data.max_examples_per_client, rng)
    control = store.gather(sel.ids) if store is not None else None
    clients = alg_lib.Clients((batch.tokens, batch.intents), batch.mask, sel.ids.astype(np.int32), control)
    clients, weights = pad_clients(clients, weights, _pad_size(len(sel.ids), expected, multiple))
    state, diag = round_fn(state, shard_clients(clients, mesh), weights, jax.random.fold_in(train_key, r))
    diag = jax.device_get(diag)
    num = len(sel.ids)
    if store is not None:
      store.add(sel.ids, jax.tree.map(lambda x: x[:num], diag["control_delta"]), survived)
    if accountant is not None:
      accountant.record_round()
    bad = int(np.sum(~np.isfinite(diag["delta_norm"][:num]) & survived))
    if bad:  # Under DP these contributed zero to the sum; still a bug to report, not to train on.
      raise FloatingPointError(f"run {name!r}, round {r + 1}: {bad} of {int(survived.sum())} client updates "
                               "have a non-finite norm (quantity: client delta)")
    if accountant is None:
      w = np.where(survived, 1.0, 0.0) * np.asarray(batch.num_examples, np.float64)
      return state, {f"{name}/train/loss": float(np.sum(w * diag["loss"][:num]) / max(w.sum(), 1.0)),
                     f"{name}/clients": float(survived.sum()), f"{name}/dropped": float(sel.num_dropped)}
    # Only private quantities: the exact training loss, realised participant count and
    # clipped fraction of the sampled devices are not accounted for, so DP runs never log them.
    row = {f"{name}/privacy/epsilon": accountant.epsilon(), f"{name}/dp/clip_norm": float(diag["server/clip_norm"])}
    if cfg.dp.adaptive:
      row[f"{name}/dp/noisy_unclipped_fraction"] = float(diag["server/unclipped_fraction"])
    return state, row

  def postfix(row):
    if accountant is None:
      return {"loss": f"{row[f'{name}/train/loss']:.3f}"}
    return {"eps": f"{row[f'{name}/privacy/epsilon']:.3g}"}

  out = train_loop(state, one_round, num_steps=fl.rounds, checkpointer=ckpt, writer=writer, hooks=[eval_row],
                   extra=store, desc=name, progress=cfg.progress, postfix=postfix)
  ckpt.close()
  if out.preempted:
    return None
  state = out.state
  if accountant is not None and fl.rounds > accountant.rounds:  # Finished before this process started.
    accountant.record_round(fl.rounds - accountant.rounds)
  last_eval = eval_row(fl.rounds, state)
  result = {"name": name, "kind": "federated", "algorithm": fl.algorithm,
            "server_optimizer": fl.server_optimizer, "partition": p.scheme, "selection": s.scheme,
            "continual": bool(cfg.continual.enabled), "rounds": fl.rounds,
            "clients_per_round": fl.clients_per_round, "num_clients": num_clients,
            "test_accuracy": last_eval[f"{name}/test/accuracy"], "test_loss": last_eval[f"{name}/test/loss"],
            "train_seconds": out.train_seconds, "wall_seconds": time.perf_counter() - started}
  if cfg.continual.enabled:
    from libs.train.metrics import read_jsonl  # pylint: disable=import-outside-toplevel
    accs = [r[f"{name}/test/accuracy"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
            if f"{name}/test/accuracy" in r and r["step"] % rounds_per_period == 0]
    result["period_accuracy"] = accs
    result["mean_period_accuracy"] = float(np.mean(accs)) if accs else float("nan")
  if accountant is not None:
    result["privacy"] = dict(accountant.summary(), clip_norm_final=float(state.clip_norm),
                             adaptive_clipping=bool(cfg.dp.adaptive), noise_multiplier_delta=dp_config.noise_multiplier,
                             count_noise_std=dp_config.count_noise_std, selection_rate=rate,
                             randomness=dp_rand.describe(), guarantee="formal", covers=_DP_SCOPE)
    result["target_epsilon"] = cfg.dp.target_epsilon
  check_finite(fl.rounds, {f"{name}/test/loss": result["test_loss"], f"{name}/test/accuracy": result["test_accuracy"]})
  return result


def run_centralized(name: str, cfg, workdir: str, world: _World, writer) -> dict | None:
  """The centralized baseline: minibatch SGD (momentum 0.9) on the pooled training examples,
  one loop step per epoch, resumable from its checkpoint like the federated runs."""
  from libs.train.checkpoint import Checkpointer  # pylint: disable=import-outside-toplevel
  from libs.train.loop import every, train_loop  # pylint: disable=import-outside-toplevel
  started = time.perf_counter()
  train, test = world.get(cfg)
  task = _make_task(cfg, train)
  c = cfg.centralized
  opt = optax.sgd(c.learning_rate, momentum=0.9)
  params = task.init(jax.random.split(jax.random.key(cfg.seed))[0])

  @jax.jit
  def step(state, tokens, intents):
    grads = jax.grad(lambda p: jnp.mean(task.example_losses(p, tokens, intents)))(state["params"])
    updates, opt_state = opt.update(grads, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}

  tokens, intents = train.pooled()
  test_tokens, test_intents = test.pooled()
  evaluate = make_eval_fn(task.example_metrics, cfg.eval_batch_size)
  num = len(tokens) // c.batch_size

  def epoch(state, e: int):
    order = np.random.default_rng((cfg.seed, 11, e)).permutation(len(tokens))
    for b in range(num):
      idx = order[b * c.batch_size:(b + 1) * c.batch_size]
      state = step(state, tokens[idx], intents[idx])
    return state, None

  def test_row(done, state):
    values = evaluate(state["params"], test_tokens, test_intents)
    return {f"{name}/test/accuracy": values["correct"], f"{name}/test/loss": values["loss"]}

  ckpt = Checkpointer(os.path.join(workdir, name, "checkpoints"), save_every=1)
  out = train_loop({"params": params, "opt_state": opt.init(params)}, epoch, num_steps=c.epochs, checkpointer=ckpt,
                   writer=writer, hooks=[every(1, test_row, c.epochs)], desc=name, progress=cfg.progress)
  ckpt.close()
  if out.preempted:
    return None
  values = test_row(c.epochs, out.state)
  return {"name": name, "kind": "centralized", "algorithm": "centralized", "partition": "pooled",
          "epochs": c.epochs, "test_accuracy": values[f"{name}/test/accuracy"],
          "test_loss": values[f"{name}/test/loss"], "train_seconds": out.train_seconds,
          "wall_seconds": time.perf_counter() - started}


def replicate_tree(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))


def _plot(rows: list[dict], results: list[dict], workdir: str, metric: str, ylabel: str, filename: str) -> str:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(7, 4.2))
  for res in results:
    key = f"{res['name']}/{metric}"
    points = [(r["step"], r[key]) for r in rows if key in r]
    if not points:
      continue
    if res["kind"] == "centralized":
      ax.axhline(points[-1][1], ls="--", color="k", label=f"{res['name']} (pooled)")
    else:
      ax.plot(*zip(*points), label=res["name"], marker="." if len(points) < 30 else None)
  ax.set(xlabel="round", ylabel=ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  path = os.path.join(workdir, "figures", filename)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def format_table(results: list[dict]) -> str:
  """A plain-text table of the sub-runs (with the gap to the centralized baseline if any).

  Example:
    >>> print(format_table(results["runs"]))
  """
  central = [r["test_accuracy"] for r in results if r["kind"] == "centralized"]
  header = f"{'run':<28} {'algorithm':<10} {'partition':<9} {'selection':<15} {'acc %':>6} {'loss':>6}"
  if central:
    header += f" {'gap pts':>7}"
  if any("privacy" in r for r in results):
    header += f" {'eps':>6} {'z':>6}"
  if any("mean_period_accuracy" in r for r in results):
    header += f" {'mean period acc %':>17}"
  lines = [header, "-" * len(header)]
  for r in results:
    line = (f"{r['name']:<28} {r['algorithm']:<10} {r.get('partition', ''):<9} {r.get('selection', '-'):<15} "
            f"{100 * r['test_accuracy']:6.2f} {r['test_loss']:6.3f}")
    if central:
      line += f" {100 * (central[0] - r['test_accuracy']):7.2f}"
    if any("privacy" in x for x in results):
      pr = r.get("privacy")
      line += f" {pr['epsilon']:6.2f} {pr['noise_multiplier']:6.3f}" if pr else f" {'inf':>6} {'-':>6}"
    if "mean_period_accuracy" in r:
      line += f" {100 * r['mean_period_accuracy']:17.2f}"
    lines.append(line)
  return "\n".join(lines)


def run(config, workdir: str) -> dict | None:
  """Runs every sub-run of `config` (skipping finished ones); writes results.json, figures, metrics.

  Returns:
    The results dict, or None when stopped by a signal (rerun to resume).

  Example:
    >>> results = run(tiny.get_config(), "/tmp/fl_tiny")
  """
  from libs.train.mesh import make_mesh  # pylint: disable=import-outside-toplevel
  from libs.train.metrics import create_writer, read_jsonl  # pylint: disable=import-outside-toplevel
  runs = sub_runs(config)  # Validates every sub-run before any work.
  os.makedirs(workdir, exist_ok=True)
  mesh = make_mesh()
  writer = create_writer(workdir)
  writer.write_hparams({"config": config.to_json()})
  world = _World()
  results = []
  for name, cfg in runs:
    recorded = io_lib.read_done(os.path.join(workdir, name))
    if recorded is not None:
      results.append(recorded)
      print(f"[{name}] finished earlier: test accuracy {100 * results[-1]['test_accuracy']:.2f}% (skipped)")
      continue
    os.makedirs(os.path.join(workdir, name), exist_ok=True)
    if cfg.kind == "centralized":
      res = run_centralized(name, cfg, workdir, world, writer)
    else:
      res = run_federated(name, cfg, workdir, world, writer, mesh)
    if res is None:
      writer.close()
      return None
    io_lib.write_done(os.path.join(workdir, name), res)
    results.append(res)
    extra = f", epsilon {res['privacy']['epsilon']:.3g}" if "privacy" in res else ""
    print(f"[{name}] test accuracy {100 * res['test_accuracy']:.2f}%{extra} ({res['wall_seconds']:.1f} s)")
  writer.close()
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  figures = [_plot(rows, results, workdir, "test/accuracy", "test accuracy", "test_accuracy.png"),
             _plot(rows, results, workdir, "train/loss", "training loss (selected clients)", "train_loss.png")]
  if any("privacy" in r for r in results):
    figures.append(_plot(rows, results, workdir, "privacy/epsilon", "epsilon spent (per device)", "epsilon.png"))
  table = format_table(results)
  out = {"name": config.get("name", ""), "runs": results, "table": table, "figures": figures,
         "config": json.loads(config.to_json())}
  io_lib.write_results(workdir, out)
  print(table)
  print(f"results: {os.path.join(workdir, 'results.json')}")
  return out
