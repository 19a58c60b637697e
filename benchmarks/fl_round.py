"""Federated round throughput: one vmapped computation vs a sequential per-client loop.

  python benchmarks/fl_round.py [--clients=64,512] [--repeats=3]

Simulated client updates per second for a FedAvg round of 64 and of 512 clients on the
intent model (projects/fedlearn/tasks.py defaults: embedding 64, conv + MLP 128; 1 local
epoch, batch 8, at most 32 examples per client), measured side by side in one run:
  * vmap: `rounds.build_round` (all clients in one jitted, vmapped computation on the mesh);
  * sequential: the jitted single-client update in a Python loop, deltas summed on the host
    (`algorithms.sequential_apply`, the correctness reference).
Compilation is excluded (one warm-up round each). It first runs a round of 1,000 clients drawn
from 100,000 registered devices (data for all of them in host memory) and reports the peak
resident memory. The last lines are `fl_vmap_speedup_64 = X` and `fl_vmap_speedup_512 = Y`.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.train.mesh import make_mesh  # noqa: E402
from projects.fedlearn import algorithms as alg_lib  # noqa: E402
from projects.fedlearn import data as data_lib  # noqa: E402
from projects.fedlearn import selection  # noqa: E402
from projects.fedlearn import rounds  # noqa: E402
from projects.fedlearn import tasks  # noqa: E402

MAX_EXAMPLES = 32


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def round_inputs(population, ids, seed):
  rng = np.random.default_rng(seed)
  batch = population.client_batch(ids, MAX_EXAMPLES, rng)
  n = batch.num_examples.astype(np.float64)
  weights = (n / max(n.sum(), 1)).astype(np.float32)
  return alg_lib.Clients((batch.tokens, batch.intents), batch.mask, np.asarray(ids, np.int32)), weights


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--clients", default="64,512")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--registered", type=int, default=100_000)
  parser.add_argument("--large_round", type=int, default=1000)
  args = parser.parse_args()
  sizes = [int(s) for s in args.clients.split(",")]
  mesh = make_mesh()
  t = time.perf_counter()
  population = data_lib.generate_population(args.registered, seed=0)
  print(f"population: {population.num_devices:,} registered devices, {len(population.tokens):,} examples "
        f"({population.tokens.nbytes / 2**20:.0f} MiB of tokens), generated in {time.perf_counter() - t:.1f} s")
  task = tasks.make_task("intent", vocab_size=len(population.vocab), num_intents=len(population.intent_names),
                         max_len=population.max_len)
  client = alg_lib.ClientConfig(0.1, num_epochs=1, batch_size=8)
  alg = alg_lib.make_algorithm("fedavg", task.example_losses, client)
  params = task.init(jax.random.key(0))
  num_params = sum(x.size for x in jax.tree.leaves(params))
  print(f"intent model: {num_params:,} parameters; {jax.device_count()} {jax.devices()[0].platform} device(s)")
  round_fn = rounds.build_round(alg, mesh)

  # 1. A round of 1,000 of the 100,000 registered devices (activity-capped selection), memory.
  rss_before = peak_rss_mb()
  counts = population.num_examples()
  sel = selection.select("activity_capped", counts, args.large_round, np.random.default_rng(0), cap_ratio=4.0)
  clients, weights = round_inputs(population, sel.ids, 1)
  clients, weights = rounds.pad_clients(clients, weights, mesh.size)
  state = alg.init(params)
  t = time.perf_counter()
  new_state, diag = round_fn(state, rounds.shard_clients(clients, mesh), weights, jax.random.key(1))
  jax.block_until_ready(new_state)
  print(f"round of {len(sel.ids)} clients (expected {args.large_round}) out of {args.registered:,} registered "
        f"devices: {time.perf_counter() - t:.1f} s incl. compilation, mean client loss "
        f"{float(np.mean(np.asarray(diag['loss'])[:len(sel.ids)])):.3f}; peak RSS {peak_rss_mb():.0f} MiB "
        f"(before the round {rss_before:.0f} MiB)")

  # 2. vmap vs sequential at each size, in this one process.
  speedups = {}
  for size in sizes:
    ids = np.sort(np.random.default_rng(size).choice(args.registered, size, replace=False))
    clients, weights = round_inputs(population, ids, size)
    padded, padded_w = rounds.pad_clients(clients, weights, mesh.size)
    sharded = rounds.shard_clients(padded, mesh)
    state = alg.init(params)
    jax.block_until_ready(round_fn(state, sharded, padded_w, jax.random.key(0)))  # compile
    t = time.perf_counter()
    for r in range(args.repeats):
      out = round_fn(state, sharded, padded_w, jax.random.key(r))
    jax.block_until_ready(out)
    vmap_s = (time.perf_counter() - t) / args.repeats
    jax.block_until_ready(alg_lib.sequential_apply(alg, state, clients, weights, jax.random.key(0))[0])  # compile
    t = time.perf_counter()
    seq_repeats = max(1, args.repeats // 2)
    for r in range(seq_repeats):
      out = alg_lib.sequential_apply(alg, state, clients, weights, jax.random.key(r))
    jax.block_until_ready(out[0])
    seq_s = (time.perf_counter() - t) / seq_repeats
    speedups[size] = seq_s / vmap_s
    print(f"{size:4d} clients: vmap {vmap_s:7.3f} s/round = {size / vmap_s:8.1f} client updates/s; "
          f"sequential {seq_s:7.3f} s/round = {size / seq_s:8.1f} client updates/s")
  print(f"peak RSS of the whole run: {peak_rss_mb():.0f} MiB")
  for size in sizes:
    print(f"fl_vmap_speedup_{size} = {speedups[size]:.2f}")


if __name__ == "__main__":
  main()
