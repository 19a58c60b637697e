"""The PATE teachers' training step: one jitted, vmapped step over K stacked teachers
against K sequential single-teacher steps, same model, same per-teacher batches.

  python benchmarks/teacher_ensemble.py [--teachers K (default: sweep.py:quick's, 16)] [--batch B (default: 16)] [--runs 5]

Last line: ensemble_speedup = sequential time / vmapped time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from libs.models import asr as asr_lib
from libs.speech import evaluate as evaluate_lib
from libs.speech.tokenizer import CharTokenizer
from libs.train import optimizers
from libs.train import steps as steps_lib
from libs.train.state import TrainState
from projects.pate_asr import ensemble
from projects.pate_asr.configs import sweep as sweep_configs


def _batches(num, batch, frames=176, labels=40, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num):
    out.append({
        "features": rng.standard_normal((batch, frames, 80)).astype(np.float32),
        "feature_lengths": rng.integers(frames // 2, frames + 1, batch).astype(np.int32),
        "labels": rng.integers(1, 29, (batch, labels)).astype(np.int32),
        "label_lengths": rng.integers(labels // 2, labels + 1, batch).astype(np.int32),
        "weights": np.ones((batch,), np.float32),
    })
  return out


def _medians(fns, runs):
  """Times the functions round-robin (a load change hits all alike); median seconds each."""
  for fn in fns:
    jax.block_until_ready(fn())  # compile / warm up
  times = [[] for _ in fns]
  for _ in range(runs):
    for i, fn in enumerate(fns):
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[i].append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--teachers", type=int, default=0, help="0: the quick config's num_teachers")
  parser.add_argument("--batch", type=int, default=0, help="0: the quick config's teacher batch size")
  parser.add_argument("--runs", type=int, default=5)
  args = parser.parse_args()
  config = sweep_configs.get_config("quick")
  model = asr_lib.build_model(config.model, CharTokenizer().vocab_size)
  optimizer = optimizers.make_optimizer(config.teachers)
  step = steps_lib.make_train_step(evaluate_lib.make_loss_fn(model, evaluate_lib.spec_augment_config(config.teachers)), optimizer)
  k = args.teachers or config.pate.num_teachers
  args.batch = args.batch or config.teachers.batch_size
  params = ensemble.init_stacked(model, jax.random.key(0), k)
  batches = _batches(k, args.batch)
  keys = jax.random.split(jax.random.key(1), k)

  stacked_state = jax.vmap(lambda p: TrainState.create(p, optimizer))(params)
  stacked_batch = jax.device_put(ensemble.stack_batches(batches))
  vmapped = jax.jit(jax.vmap(step))

  single = jax.jit(step)
  states = [TrainState.create(jax.tree.map(lambda x: x[i], params), optimizer) for i in range(k)]
  device_batches = [jax.device_put(b) for b in batches]
  t_vmap, t_seq = _medians([lambda: vmapped(stacked_state, stacked_batch, keys),
                            lambda: [single(states[i], device_batches[i], keys[i]) for i in range(k)]], args.runs)
  print(f"backend: {jax.default_backend()}; {k} teachers x batch {args.batch}, "
        f"{sum(x.size for x in jax.tree.leaves(params)) // k} parameters each")
  print(f"vmapped ensemble step: {1e3 * t_vmap:.0f} ms; {k} sequential single-teacher steps: {1e3 * t_seq:.0f} ms")
  print(f"ensemble_speedup = {t_seq / t_vmap:.2f}")


if __name__ == "__main__":
  main()
