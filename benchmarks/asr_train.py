"""ASR training throughput and peak memory on the quick config, and the RNN-T loss against
a naive reference, measured side by side in one run.

  python benchmarks/asr_train.py [--steps 30] [--naive_runs 5]

Prints, last:
  train_utterances_per_s = ...      (quick config, steady state, all length buckets)
  rnnt_loss_speedup_vs_naive = ...  (fwd+bwd at B=32, T=200, U=50, V=32)
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import jax

from libs.data import pipeline
from libs.models import asr as asr_lib
from libs.speech import evaluate as evaluate_lib
from libs.speech import losses
from libs.speech.tokenizer import CharTokenizer
from libs.train import compilation_cache
from libs.train import optimizers
from libs.train import steps as steps_lib
from libs.train.state import TrainState
from projects.pate_asr.configs import nonprivate


def _median_ms(fn, warmup: int, runs: int) -> float:
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def train_throughput(num_steps: int) -> tuple[float, float]:
  """Utterances per second of the quick config's jitted train step (compile excluded)."""
  config = nonprivate.get_config()
  tokenizer = CharTokenizer()
  builder = pipeline.prepare_synthetic(config.data.synthetic_config)
  train = pipeline.load_split(builder, "train", tokenizer)
  model = asr_lib.build_model(config.model, tokenizer.vocab_size)
  optimizer = optimizers.make_optimizer(config.train)
  state = TrainState.create(asr_lib.init_params(model, jax.random.key(0)), optimizer)
  loss_fn = evaluate_lib.make_loss_fn(model, evaluate_lib.spec_augment_config(config.train))
  step = jax.jit(steps_lib.make_train_step(loss_fn, optimizer), donate_argnums=0)
  batcher = pipeline.Batcher(train, config.train.batch_size, seed=0, num_buckets=config.train.num_buckets)
  key = jax.random.key(1)
  seen = set()
  for s in range(batcher.steps_per_epoch):  # Compile every bucket shape first.
    batch = batcher.batch(s)
    if batch["features"].shape not in seen:
      seen.add(batch["features"].shape)
      state, m = step(state, batch, key)
  jax.block_until_ready(m)
  batches = [batcher.batch(s) for s in range(num_steps)]
  start = time.perf_counter()
  utterances = 0
  for batch in batches:
    state, m = step(state, batch, key)
    utterances += int(batch["weights"].sum())
  jax.block_until_ready(m)
  seconds = time.perf_counter() - start
  peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"quick config: {num_steps} steps of {config.train.batch_size} in {seconds:.1f} s "
        f"({1e3 * seconds / num_steps:.0f} ms/step), bucket shapes {sorted(seen)}")
  return utterances / seconds, peak_mib


def loss_speedup(batch=32, frames=200, labels=50, vocab=32, runs=5) -> float:
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  logits = jax.random.normal(k1, (batch, frames, labels + 1, vocab))
  targets = jax.random.randint(k2, (batch, labels), 1, vocab)
  t_len = jax.random.randint(k3, (batch,), frames // 2, frames + 1).at[0].set(frames)
  u_len = jax.random.randint(k4, (batch,), labels // 2, labels + 1).at[0].set(labels)

  def timed(loss_fn):
    fn = jax.jit(jax.value_and_grad(lambda x, *r: loss_fn(x, *r).sum()))
    return _median_ms(lambda: fn(logits, t_len, targets, u_len), warmup=2, runs=runs)

  ours, naive = timed(losses.rnnt_loss), timed(losses.rnnt_loss_naive)
  print(f"rnnt_loss fwd+bwd at B={batch} T={frames} U={labels} V={vocab}: ours {ours:.1f} ms, "
        f"naive (scan over t, scan over u, autodiff) {naive:.1f} ms")
  return naive / ours


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--naive_runs", type=int, default=5)
  args = parser.parse_args()
  compilation_cache.enable()
  print(f"backend: {jax.default_backend()}, devices: {jax.devices()}")
  utt_per_s, peak_mib = train_throughput(args.steps)
  speedup = loss_speedup(runs=args.naive_runs)
  print(f"peak_host_memory_mib = {peak_mib:.0f}")
  print(f"train_utterances_per_s = {utt_per_s:.1f}")
  print(f"rnnt_loss_speedup_vs_naive = {speedup:.2f}")


if __name__ == "__main__":
  main()
