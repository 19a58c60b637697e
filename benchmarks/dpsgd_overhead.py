"""DP-SGD step time and memory against the non-private step, same model and batch, one run.

  python benchmarks/dpsgd_overhead.py [--runs 10]

(a) the quick-config transducer ASR model (per-example clipping by vmap, and ghost
    clipping, which covers its Conv, LSTM, Embed, LayerNorm and Dense layers);
(b) a small Transformer LM (vmap, and ghost clipping, which covers all its layers).
A DP step = sum of clipped per-example gradients + Gaussian noise + optimizer update; a
non-private step = gradient of the mean loss + the same optimizer update. The three
steps of a model are timed round-robin (load changes hit all alike). Memory is XLA's
compiled peak (arguments + outputs + temporaries) of each step.

Last lines: dpsgd_time_ratio_asr, dpsgd_memory_ratio_asr, dpsgd_time_ratio_lm,
ghost_time_ratio_lm (and ghost_memory_ratio_lm).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from libs.dp import clipping, ghost, noise
from libs.models import asr as asr_lib
from libs.models.lm import LMConfig, TransformerLM, next_token_nll
from libs.speech import evaluate as evaluate_lib
from libs.speech.tokenizer import CharTokenizer
from projects.pate_asr.configs import nonprivate


def _measure(cases, batch, runs):
  """Compiles each (step, state) and times them round-robin, so that a change in machine
  load between cases cannot skew their ratio; returns [(median seconds, peak bytes)]."""
  compiled, states, peaks = [], [], []
  for step, state in cases:
    state = jax.tree.map(jnp.copy, state)  # The step donates its state; keep the caller's.
    fn = jax.jit(step, donate_argnums=0).lower(state, batch).compile()
    mem = fn.memory_analysis()
    peaks.append(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)
    state = fn(state, batch)  # warm-up
    jax.block_until_ready(state)
    compiled.append(fn)
    states.append(state)
  times = [[] for _ in cases]
  for _ in range(runs):
    for i, fn in enumerate(compiled):
      start = time.perf_counter()
      states[i] = fn(states[i], batch)
      jax.block_until_ready(states[i])
      times[i].append(time.perf_counter() - start)
  return [(statistics.median(t), p) for t, p in zip(times, peaks)]


def _steps(mean_loss, clipped_fn, optimizer, batch_size):
  dp_opt = optax.chain(noise.add_gaussian_noise(l2_clip_norm=1.0, noise_multiplier=1.0,
                                                expected_batch_size=batch_size, key=jax.random.key(0)),
                       optimizer)

  def plain(state, batch):
    params, opt_state = state
    grads = jax.grad(mean_loss)(params, *batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def private(state, batch):
    params, opt_state = state
    grads = clipped_fn(params, *batch)
    updates, opt_state = dp_opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return plain, private, dp_opt


def asr_case(runs):
  config = nonprivate.get_config()
  model = asr_lib.build_model(config.model, CharTokenizer().vocab_size)
  params = asr_lib.init_params(model, jax.random.key(0))
  rng = np.random.default_rng(0)
  b, t, u = config.train.batch_size, 176, 40  # The quick config's middle length bucket.
  batch = {
      "features": jnp.asarray(rng.standard_normal((b, t, 80)), jnp.float32),
      "feature_lengths": jnp.asarray(rng.integers(t // 2, t + 1, b), jnp.int32),
      "labels": jnp.asarray(rng.integers(1, 29, (b, u)), jnp.int32),
      "label_lengths": jnp.asarray(rng.integers(u // 2, u + 1, b), jnp.int32),
      "weights": jnp.ones((b,), jnp.float32),
  }

  def mean_loss(params, batch):
    return jnp.mean(evaluate_lib.per_example_nll(model, params, batch, None, train=False))

  optimizer = optax.adam(1e-3)
  clipped = clipping.clipped_grad(mean_loss, l2_clip_norm=1.0)
  plain, private, dp_opt = _steps(mean_loss, clipped, optimizer, b)
  per_example = lambda params, batch: evaluate_lib.per_example_nll(model, params, batch, None, train=False)
  _, private_ghost, _ = _steps(mean_loss, ghost.ghost_clipped_grad(per_example, l2_clip_norm=1.0), optimizer, b)
  (t0, m0), (t1, m1), (t2, m2) = _measure(
      [(plain, (params, optimizer.init(params))), (private, (params, dp_opt.init(params))),
       (private_ghost, (params, dp_opt.init(params)))], (batch,), runs)
  print(f"ASR transducer ({sum(x.size for x in jax.tree.leaves(params)) / 1e6:.2f} M params, B={b}, T={t}, U={u}): "
        f"non-private {1e3 * t0:.0f} ms, {m0 / 2**20:.0f} MiB; DP-SGD vmap {1e3 * t1:.0f} ms, {m1 / 2**20:.0f} MiB; "
        f"ghost {1e3 * t2:.0f} ms, {m2 / 2**20:.0f} MiB")
  return t1 / t0, m1 / m0, t2 / t0, m2 / m0


def lm_case(runs):
  cfg = LMConfig(vocab_size=1000, max_len=32, dim=128, num_heads=4, num_layers=2)
  lm = TransformerLM(cfg)
  b = 64
  tokens = jax.random.randint(jax.random.key(0), (b, cfg.max_len), 0, cfg.vocab_size)
  params = lm.init(jax.random.key(1), tokens)["params"]
  per_example = lambda p, t: next_token_nll(lm.apply({"params": p}, t), t)
  mean_loss = lambda p, t: jnp.mean(per_example(p, t))
  optimizer = optax.adam(1e-3)
  plain, private, dp_opt = _steps(mean_loss, clipping.clipped_grad(mean_loss, l2_clip_norm=1.0), optimizer, b)
  _, private_ghost, _ = _steps(mean_loss, ghost.ghost_clipped_grad(per_example, l2_clip_norm=1.0), optimizer, b)
  (t0, m0), (t1, m1), (t2, m2) = _measure(
      [(plain, (params, optimizer.init(params))), (private, (params, dp_opt.init(params))),
       (private_ghost, (params, dp_opt.init(params)))], (tokens,), runs)
  print(f"Transformer LM ({sum(x.size for x in jax.tree.leaves(params)) / 1e6:.2f} M params, B={b}, T={cfg.max_len}): "
        f"non-private {1e3 * t0:.1f} ms, {m0 / 2**20:.0f} MiB; vmap {1e3 * t1:.1f} ms, {m1 / 2**20:.0f} MiB; "
        f"ghost {1e3 * t2:.1f} ms, {m2 / 2**20:.0f} MiB")
  return t1 / t0, m1 / m0, t2 / t0, m2 / m0


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--runs", type=int, default=10)
  args = parser.parse_args()
  print(f"backend: {jax.default_backend()}, devices: {jax.devices()}")
  asr_time, asr_mem, asr_ghost_time, asr_ghost_mem = asr_case(args.runs)
  lm_time, lm_mem, ghost_time, ghost_mem = lm_case(args.runs)
  print(f"ghost_time_ratio_asr = {asr_ghost_time:.2f}")
  print(f"ghost_memory_ratio_asr = {asr_ghost_mem:.2f}")
  print(f"dpsgd_memory_ratio_lm = {lm_mem:.2f}")
  print(f"ghost_memory_ratio_lm = {ghost_mem:.2f}")
  print(f"dpsgd_time_ratio_asr = {asr_time:.2f}")
  print(f"dpsgd_memory_ratio_asr = {asr_mem:.2f}")
  print(f"dpsgd_time_ratio_lm = {lm_time:.2f}")
  print(f"ghost_time_ratio_lm = {ghost_time:.2f}")


if __name__ == "__main__":
  main()
