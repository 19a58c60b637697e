"""fedlearn experiments: every sub-run of a config, federated or centralized, resumable.

`run(config, workdir)` validates every sub-run (`validation.sub_runs`), builds the device
population once, and runs each sub-run through `libs.train.loop.train_loop` (federated rounds
from `rounds`, DP accounting from `privacy`), skipping finished ones; it writes results.json,
metrics, figures and the table (`report`).

Example:
  >>> results = run(dp_configs.get_config("tiny"), "/tmp/fl_tiny")
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from libs.config.checks import require
from libs.train import io as io_lib
from libs.train.rng import Streams
from libs.train.metrics import check_finite
from projects.fedlearn.report import format_table, plot_metric
from projects.fedlearn.rounds import (ControlVariateStore, build_round, make_eval_fn, pad_clients, replicate_tree,
                                      shard_clients)
from projects.fedlearn.validation import sub_runs


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

  Without DP everything derives from cfg.seed (`libs.train.rng.Streams`: "fedlearn/init",
  "fedlearn/rounds", "fedlearn/selection"; round r selects with default_rng((selection seed, r))
  and trains with fold_in(round key, r)). With DP the init key still does, while the round key (client order and the
  server's Gaussian noise) and the selection seed come from `DpRandomness`: the operating
  system's secret randomness unless cfg.dp.insecure_reproducible_noise, because cfg.seed is
  published in results.json. A resumed DP run draws fresh secret randomness.

  Example:
    >>> init_key, round_key, selection_seed, dp_rand = round_randomness(cfg)
  """
  streams = Streams(cfg.seed)
  init_key = streams.key("fedlearn/init")
  if not cfg.dp.enabled:
    return init_key, streams.key("fedlearn/rounds"), streams.seed("fedlearn/selection"), None
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


def _federated_algorithm(cfg, task, num_clients: int):
  """(FedAlgorithm, DeviceAccountant or None, DPConfig or None) of a federated sub-run."""
  from projects.fedlearn import algorithms as alg_lib  # pylint: disable=import-outside-toplevel
  fl = cfg.fl
  require(fl.clients_per_round <= num_clients, "fl.clients_per_round",
          f"must be <= the number of clients ({num_clients})", fl.clients_per_round)
  accountant, dp_config = _device_privacy(cfg, num_clients) if cfg.dp.enabled else (None, None)
  client = alg_lib.ClientConfig(fl.client_learning_rate, fl.num_epochs, fl.batch_size, fl.num_steps,
                                fl.prox_mu if fl.algorithm == "fedprox" else 0.0)
  alg = alg_lib.make_algorithm(fl.algorithm, task.example_losses, client, server_optimizer_name=fl.server_optimizer,
                               server_learning_rate=fl.server_learning_rate, num_devices=num_clients, dp=dp_config,
                               chunk_size=fl.chunk_size)
  return alg, accountant, dp_config


def _federated_result(name: str, cfg, workdir: str, out, last_eval: dict, num_clients: int) -> dict:
  """The result row of a finished federated sub-run (without its privacy section)."""
  fl = cfg.fl
  result = {"name": name, "kind": "federated", "algorithm": fl.algorithm,
            "server_optimizer": fl.server_optimizer, "partition": cfg.partition.scheme,
            "selection": cfg.selection.scheme, "continual": bool(cfg.continual.enabled), "rounds": fl.rounds,
            "clients_per_round": fl.clients_per_round, "num_clients": num_clients,
            "test_accuracy": last_eval[f"{name}/test/accuracy"], "test_loss": last_eval[f"{name}/test/loss"],
            "train_seconds": out.train_seconds}
  if cfg.continual.enabled:
    from libs.train.metrics import read_jsonl  # pylint: disable=import-outside-toplevel
    per_period = fl.rounds // cfg.data.num_periods
    accs = [r[f"{name}/test/accuracy"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
            if f"{name}/test/accuracy" in r and r["step"] % per_period == 0]
    result["period_accuracy"] = accs
    result["mean_period_accuracy"] = float(np.mean(accs)) if accs else float("nan")
  return result


def run_federated(name: str, cfg, workdir: str, world: _World, writer, mesh: Mesh) -> dict:
  """One federated sub-run: resumable from its checkpoint; returns its result row."""
  # Long because the round, evaluation and period-data closures share the sub-run's data, algorithm
  # and accountant; each closure is short, and the setup and the result row are their own functions.
  from projects.fedlearn import algorithms as alg_lib  # pylint: disable=import-outside-toplevel
  from projects.fedlearn import continual  # pylint: disable=import-outside-toplevel
  from projects.fedlearn import partition as partition_lib  # pylint: disable=import-outside-toplevel
  from projects.fedlearn import selection  # pylint: disable=import-outside-toplevel
  from libs.train.checkpoint import Checkpointer  # pylint: disable=import-outside-toplevel
  from libs.train.loop import train_loop  # pylint: disable=import-outside-toplevel
  started = time.perf_counter()
  train, test = world.get(cfg)
  if cfg.partition.scheme != "natural":
    p = cfg.partition
    train = partition_lib.partition(train, p.scheme, num_clients=p.num_clients or None, alpha=p.alpha, beta=p.beta,
                                    num_clusters=p.num_clusters, seed=cfg.seed)
  task = _make_task(cfg, train)
  fl, s = cfg.fl, cfg.selection
  num_clients = train.num_devices
  alg, accountant, dp_config = _federated_algorithm(cfg, task, num_clients)
  rate = _selection_rate(cfg, num_clients)
  init_key, train_key, selection_seed, dp_rand = round_randomness(cfg)
  state = replicate_tree(alg.init(task.init(init_key)), mesh)
  run_dir = os.path.join(workdir, name)
  ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), save_every=fl.checkpoint_every)
  store = ControlVariateStore(state.params) if fl.algorithm == "scaffold" else None
  round_fn = build_round(alg, mesh)
  evaluate = make_eval_fn(task.example_metrics, cfg.eval_batch_size)
  require(fl.chunk_size % mesh.size == 0, "fl.chunk_size", f"must be a multiple of the {mesh.size} devices",
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

  evaluated: dict[int, dict] = {}  # The last round's evaluation, reused for the result row.

  def eval_row(done: int, state) -> dict | None:
    if not (done % fl.eval_every == 0 or done == fl.rounds or (
        cfg.continual.enabled and done % rounds_per_period == 0)):
      return None
    _, _, (tokens, intents) = period_data(min(done - 1, fl.rounds - 1) // rounds_per_period)
    values = evaluate(state.params, tokens, intents)
    evaluated[done] = {f"{name}/test/loss": values["loss"], f"{name}/test/accuracy": values["correct"]}
    return evaluated[done]

  def one_round(state, r: int):
    if accountant is not None:
      if r > accountant.rounds:
        accountant.record_round(r - accountant.rounds)  # Rounds spent before a resume.
      accountant.check_next_round()  # PrivacyBudgetExceeded before overspending.
    held, counts, _ = period_data(r // rounds_per_period)
    rng = np.random.default_rng((selection_seed, r))
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
  last_eval = evaluated.get(fl.rounds) or eval_row(fl.rounds, state)  # evaluated here if finished earlier
  result = _federated_result(name, cfg, workdir, out, last_eval, num_clients)
  result["wall_seconds"] = time.perf_counter() - started
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
  streams = Streams(cfg.seed)
  params = task.init(streams.key("fedlearn/init"))  # The federated runs' initialization.

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
    order = streams.numpy("fedlearn/centralized_order", e).permutation(len(tokens))
    for b in range(num):
      idx = order[b * c.batch_size:(b + 1) * c.batch_size]
      state = step(state, tokens[idx], intents[idx])
    return state, None

  evaluated: dict[int, dict] = {}  # The last epoch's evaluation, reused for the result row.

  def test_row(done, state):
    values = evaluate(state["params"], test_tokens, test_intents)
    evaluated[done] = {f"{name}/test/accuracy": values["correct"], f"{name}/test/loss": values["loss"]}
    return evaluated[done]

  ckpt = Checkpointer(os.path.join(workdir, name, "checkpoints"), save_every=1)
  out = train_loop({"params": params, "opt_state": opt.init(params)}, epoch, num_steps=c.epochs, checkpointer=ckpt,
                   writer=writer, hooks=[every(1, test_row, c.epochs)], desc=name, progress=cfg.progress)
  ckpt.close()
  if out.preempted:
    return None
  values = evaluated.get(c.epochs) or test_row(c.epochs, out.state)
  return {"name": name, "kind": "centralized", "algorithm": "centralized", "partition": "pooled",
          "epochs": c.epochs, "test_accuracy": values[f"{name}/test/accuracy"],
          "test_loss": values[f"{name}/test/loss"], "train_seconds": out.train_seconds,
          "wall_seconds": time.perf_counter() - started}


def run(config, workdir: str) -> dict | None:
  """Runs every sub-run of `config` (skipping finished ones); writes results.json, figures, metrics.

  Returns:
    The results dict, or None when stopped by a signal (rerun to resume).

  Example:
    >>> results = run(dp_configs.get_config("tiny"), "/tmp/fl_tiny")
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
  figures = [plot_metric(rows, results, workdir, "test/accuracy", "test accuracy", "test_accuracy.png"),
             plot_metric(rows, results, workdir, "train/loss", "training loss (selected clients)", "train_loss.png")]
  if any("privacy" in r for r in results):
    figures.append(plot_metric(rows, results, workdir, "privacy/epsilon", "epsilon spent (per device)", "epsilon.png"))
  table = format_table(results)
  out = {"name": config.get("name", ""), "runs": results, "table": table, "figures": figures,
         "config": json.loads(config.to_json())}
  io_lib.write_results(workdir, out)
  print(table)
  print(f"results: {os.path.join(workdir, 'results.json')}")
  return out
