"""Times jitted fwd+bwd of `rnnt_loss` against `rnnt_loss_naive`.

Temporary script; to be folded into benchmarks/asr_train.py.

Example:
  python benchmarks/_rnnt_timing.py --batch 32 --frames 200 --labels 50
"""

import argparse
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp

from libs.speech import losses


def _time_ms(fn: Callable[[], object], warmup: int, runs: int) -> float:
  """Median wall time of `fn` in ms, after `warmup` calls (incl. compile)."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--frames', type=int, default=200)
  parser.add_argument('--labels', type=int, default=50)
  parser.add_argument('--vocab', type=int, default=32)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--runs', type=int, default=7)
  parser.add_argument('--skip_naive', action='store_true')
  args = parser.parse_args()

  b, t, u, v = args.batch, args.frames, args.labels, args.vocab
  k_logits, k_labels, k_tl, k_ul = jax.random.split(jax.random.key(0), 4)
  logits = jax.random.normal(k_logits, (b, t, u + 1, v), jnp.float32)
  labels = jax.random.randint(k_labels, (b, u), 1, v)
  # Varied lengths, with at least one full-length example.
  logit_lengths = jax.random.randint(k_tl, (b,), t // 2, t + 1).at[0].set(t)
  label_lengths = jax.random.randint(k_ul, (b,), u // 2, u + 1).at[0].set(u)

  def fwd_bwd(loss_fn):
    # Lengths/labels are jit arguments (not baked-in constants), as in training.
    fn = jax.jit(jax.value_and_grad(lambda x, *rest: loss_fn(x, *rest).sum()))
    return lambda: fn(logits, logit_lengths, labels, label_lengths)

  ours = fwd_bwd(losses.rnnt_loss)
  ours_ms = _time_ms(ours, args.warmup, args.runs)
  print(f'shape B={b} T={t} U={u} V={v} backend={jax.default_backend()}')
  print(f'rnnt_loss fwd+bwd ms = {ours_ms:.2f}')
  if not args.skip_naive:
    naive = fwd_bwd(losses.rnnt_loss_naive)
    naive_ms = _time_ms(naive, args.warmup, args.runs)
    print(f'rnnt_loss_naive fwd+bwd ms = {naive_ms:.2f}')
    print(f'rnnt_loss_speedup_vs_naive = {naive_ms / ours_ms:.2f}')


if __name__ == '__main__':
  main()
