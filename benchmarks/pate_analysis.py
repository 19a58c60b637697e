"""PATE privacy analysis of a batch of GNMax answers: the vectorised data-dependent RDP
against per-query loops, same votes, same orders, one run.

  python benchmarks/pate_analysis.py [--queries 5000] [--runs 5]

Q vote histograms (250 teachers, 30 classes, Dirichlet(0.1) class mix: mostly confident,
some split), GNMax sigma = 40, the first 30 of DEFAULT_PATE_ORDERS. Three ways to the same
[Q, L] RDP table:
  (a) `gnmax_rdp_batch`, one vectorised NumPy call;
  (b) a Python loop of `gnmax_rdp`, one query at a time (the library's per-query API);
  (c) a plain-Python reference: Prop. 7's q and Theorem 6 with Prop. 10's mu1, mu2
      (Papernot et al. 2018), written out with the math module per (query, order).
The three are timed round-robin (load changes hit all alike); median over runs.

Last lines: batch_ms, loop_speedup (b / a), reference_speedup (c / a),
max_rel_diff_vs_reference.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

from libs.accounting import pate

SIGMA = 40.0


def _votes(queries, seed=0):
  rng = np.random.default_rng(seed)
  return np.stack([rng.multinomial(250, rng.dirichlet(np.full(30, 0.1)))
                   for _ in range(queries)])


def _reference_rdp(hist, sigma, lam):
  """Theorem 6 for one query and order, plain float64 (no log space, no vectorisation)."""
  hist = [int(x) for x in hist]
  top = max(range(len(hist)), key=hist.__getitem__)
  q = sum(0.5 * math.erfc((hist[top] - x) / (2 * sigma)) for i, x in enumerate(hist) if i != top)
  q = min(q, 1 - 1 / len(hist))
  if q <= 0:
    return 0.0  # No other class can win: the answer is the same on every neighbour.
  indep = lam / sigma**2
  mu2 = sigma * math.sqrt(math.log(1 / q))
  mu1 = mu2 + 1
  eps1, eps2 = mu1 / sigma**2, mu2 / sigma**2
  if not (mu2 > 1 and lam < mu1
          and q <= math.exp((mu2 - 1) * eps2) / (mu1 / (mu1 - 1) * mu2 / (mu2 - 1))**mu2):
    return indep
  a = (1 - q) / (1 - (q * math.exp(eps2))**((mu2 - 1) / mu2))
  b = math.exp(eps1) / q**(1 / (mu1 - 1))
  return min(indep, math.log((1 - q) * a**(lam - 1) + q * b**(lam - 1)) / (lam - 1))


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--queries", type=int, default=5000)
  parser.add_argument("--runs", type=int, default=5)
  args = parser.parse_args()
  votes = _votes(args.queries)
  orders = np.array(pate.DEFAULT_ORDERS[:30])
  cases = {
      "batch": lambda: pate.gnmax_rdp_batch(votes, SIGMA, orders),
      "loop": lambda: np.stack([pate.gnmax_rdp(v, SIGMA, orders) for v in votes]),
      "reference": lambda: np.array([[_reference_rdp(v, SIGMA, lam) for lam in orders]
                                     for v in votes]),
  }
  results = {name: fn() for name, fn in cases.items()}  # warm-up, and the values to compare
  times = {name: [] for name in cases}
  for _ in range(args.runs):
    for name, fn in cases.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  t = {name: statistics.median(v) for name, v in times.items()}
  want = results["reference"]
  rel = np.abs(results["batch"] - want) / np.maximum(np.abs(want), 1e-300)
  loop_diff = np.max(np.abs(results["loop"] - results["batch"]))
  dependent = np.mean(results["batch"] < orders / SIGMA**2)
  print(f"GNMax data-dependent RDP, Q={args.queries} queries x L={orders.size} orders, "
        f"sigma={SIGMA:g}, {args.runs} runs (median): vectorised {1e3 * t['batch']:.1f} ms, "
        f"per-query loop {1e3 * t['loop']:.0f} ms, plain-Python reference "
        f"{1e3 * t['reference']:.0f} ms; {100 * dependent:.0f}% of entries below the "
        f"data-independent bound; loop vs vectorised max |diff| {loop_diff:.1e}")
  print(f"batch_ms = {1e3 * t['batch']:.1f}")
  print(f"loop_speedup = {t['loop'] / t['batch']:.1f}")
  print(f"reference_speedup = {t['reference'] / t['batch']:.1f}")
  print(f"max_rel_diff_vs_reference = {np.max(rel):.1e}")


if __name__ == "__main__":
  main()
