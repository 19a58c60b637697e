"""Device selection on the host (NumPy), with the aggregation weights each scheme needs.

The quantity FedAvg estimates each round is the full-population example-weighted average
of the device updates, sum_i (n_i / n) delta_i over all registered devices. Each scheme
returns weights that make sum_{selected} w_i delta_i an unbiased estimate of it
(Horvitz-Thompson: w_i = (n_i / n) / E[times device i is selected]):

  * "uniform": m distinct devices uniformly without replacement; w_i = n_i N / (n m).
  * "poisson": every device independently with q = m / N; w_i = n_i / (n q).
  * "activity": m draws with replacement, P(i) = n_i / n (more available data, more
    likely; Li et al. 2020); each draw has w = 1 / m (duplicates merged, weights added).
  * "activity_capped": every device independently with p_i = min(cap, c n_i),
    cap = cap_ratio * m / N; w_i = n_i / (n p_i). Activity-based, yet no device is much
    more likely than under uniform sampling. Two ways to set c:
      - water filling (default): c such that sum_i p_i = m exactly. c depends on every
        device's count, so adding or removing one device changes all the others' p_i:
        NOT for DP.
      - `rate=c` fixed in advance from public, configured quantities (the DP runs use
        c = m / (N n_ref), n_ref a configured number of examples per device): p_i is then
        a function of device i's own data only, and DP amplification holds at q = cap
        (see `privacy`). The expected number of clients is sum_i p_i, near m when n_ref is
        near the mean.

weighting="normalized" rescales the weights to sum to 1 (the ratio estimator: lower
variance, biased by O(1/m)); "unbiased" keeps them as above.

Client dropout (`apply_dropout`): selected devices fail mid-round (they trained, but
never report). mode="independent" (default): each fails independently with probability
`fraction`; survivors' unbiased weights are scaled by 1 / (1 - fraction). mode="fixed":
exactly floor(fraction * M) of the M selected fail, chosen uniformly; given the
selection each survives with probability (M - D) / M, so the scale is M / (M - D). Both
keep the estimate unbiased; normalized weights are renormalized over the survivors.
Independent dropout is what DP accounting can use (participation stays Poisson with
p_i (1 - fraction) <= p_i; see `privacy`).

Example:
  >>> rng = np.random.default_rng((seed, round_index))
  >>> sel = select("activity_capped", data.num_examples(), 100, rng, cap_ratio=4.0)
  >>> sel, survived = apply_dropout(sel, 0.1, rng)
  >>> sel.ids, sel.weights
"""

from __future__ import annotations

import dataclasses

import numpy as np

SCHEMES = ("uniform", "poisson", "activity", "activity_capped")
WEIGHTINGS = ("unbiased", "normalized")


@dataclasses.dataclass(frozen=True)
class Selection:
  """The devices of one round (sorted, distinct) and their aggregation weights."""
  ids: np.ndarray       # int64 [M]
  weights: np.ndarray   # float64 [M]
  num_selected: int     # M before dropout
  num_dropped: int = 0


def _check(num_examples: np.ndarray, clients_per_round: int) -> np.ndarray:
  n = np.asarray(num_examples, np.float64)
  if n.ndim != 1 or n.size == 0 or np.any(n < 0):
    raise ValueError(f"num_examples must be a non-empty 1-D array of counts >= 0, got shape {n.shape}")
  if n.sum() <= 0:
    raise ValueError("num_examples: no device holds any example")
  if not 1 <= clients_per_round <= n.size:
    raise ValueError(f"clients_per_round must be in [1, {n.size}] (the number of devices), got {clients_per_round}")
  return n


def capped_probabilities(num_examples: np.ndarray, expected: float, cap: float) -> np.ndarray:
  """p_i = min(cap, c n_i) with sum_i p_i = expected (water filling).

  Example:
    >>> capped_probabilities(np.array([1, 1, 10]), 1.5, 0.6)
    array([0.45, 0.45, 0.6 ])
  """
  n = np.asarray(num_examples, np.float64)
  if not 0 < cap <= 1:
    raise ValueError(f"cap (cap_ratio * clients_per_round / num_devices) must be in (0, 1], got {cap}")
  if cap * np.count_nonzero(n) < expected * (1 - 1e-12):
    raise ValueError(f"cap_ratio too small: {np.count_nonzero(n)} devices with data at probability <= {cap:.4g} "
                     f"cannot give {expected} expected clients per round")
  capped = np.zeros(n.size, bool)
  for _ in range(n.size + 1):
    free = n[~capped].sum()
    c = (expected - cap * capped.sum()) / free if free > 0 else 0.0
    new = capped | (c * n >= cap)
    if np.array_equal(new, capped):
      break
    capped = new
  return np.where(capped, cap, np.minimum(c * n, cap))


def rate_capped_probabilities(num_examples: np.ndarray, rate: float, cap: float) -> np.ndarray:
  """p_i = min(cap, rate n_i): each device's probability depends on its own count only.

  Example:
    >>> rate_capped_probabilities(np.array([0, 1, 2, 10]), 0.1, 0.5)
    array([0. , 0.1, 0.2, 0.5])
  """
  n = np.asarray(num_examples, np.float64)
  if not 0 < cap <= 1:
    raise ValueError(f"cap (cap_ratio * clients_per_round / num_devices) must be in (0, 1], got {cap}")
  if not 0 < rate < np.inf:
    raise ValueError(f"rate (inclusion probability per example) must be finite and > 0, got {rate}")
  return np.minimum(cap, rate * n)


def inclusion_probabilities(scheme: str, num_examples: np.ndarray, clients_per_round: int, *,
                            cap_ratio: float = 4.0, rate: float | None = None) -> np.ndarray:
  """Per-device probability of taking part in a round (expected draws for "activity").

  Args:
    scheme: one of SCHEMES.
    num_examples: int [N], examples on each registered device.
    clients_per_round: m.
    cap_ratio: "activity_capped": the cap as a multiple of m / N.
    rate: "activity_capped": a fixed inclusion probability per example (p_i =
      min(cap, rate n_i), the DP-compatible form); None: water-filled so sum_i p_i = m.

  Example:
    >>> inclusion_probabilities("poisson", np.array([3, 1, 0, 4]), 2)
    array([0.5, 0.5, 0.5, 0.5])
  """
  n = _check(num_examples, clients_per_round)
  m, num = clients_per_round, n.size
  if rate is not None and scheme != "activity_capped":
    raise ValueError(f"rate only applies to selection scheme 'activity_capped', got {scheme!r}")
  if scheme in ("uniform", "poisson"):
    return np.full(num, m / num)
  if scheme == "activity":
    return m * n / n.sum()
  if scheme == "activity_capped":
    cap = min(1.0, cap_ratio * m / num)
    return capped_probabilities(n, m, cap) if rate is None else rate_capped_probabilities(n, rate, cap)
  raise ValueError(f"selection scheme must be one of {SCHEMES}, got {scheme!r}")


def select(scheme: str, num_examples: np.ndarray, clients_per_round: int, rng: np.random.Generator, *,
           cap_ratio: float = 4.0, weighting: str = "unbiased", rate: float | None = None) -> Selection:
  """Draws one round's devices and their aggregation weights.

  Args:
    scheme: one of SCHEMES.
    num_examples: int [N], examples available on each registered device now.
    clients_per_round: m, the (expected) number of devices per round.
    rng: the round's generator (seed it with (seed, round) so reruns draw the same).
    cap_ratio: "activity_capped": the largest p_i as a multiple of m / N.
    weighting: "unbiased" (Horvitz-Thompson) or "normalized" (sum to 1).
    rate: "activity_capped" only: fixed per-example inclusion probability (the DP form,
      see `inclusion_probabilities`); None: water filling.

  Returns:
    A Selection with sorted distinct ids. Poisson schemes may select 0 devices.

  Example:
    >>> select("uniform", np.array([5, 1, 2, 8]), 2, np.random.default_rng(0)).weights.sum()
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
  n = _check(num_examples, clients_per_round)
  total, num, m = n.sum(), n.size, clients_per_round
  if scheme == "uniform":
    ids = np.sort(rng.choice(num, m, replace=False))
    weights = n[ids] * num / (total * m)
  elif scheme in ("poisson", "activity_capped"):
    p = inclusion_probabilities(scheme, n, m, cap_ratio=cap_ratio, rate=rate)
    ids = np.flatnonzero(rng.random(num) < p)
    weights = n[ids] / (total * p[ids])
  elif scheme == "activity":
    draws = rng.choice(num, m, replace=True, p=n / total)
    ids, counts = np.unique(draws, return_counts=True)
    weights = counts / m
  else:
    raise ValueError(f"selection scheme must be one of {SCHEMES}, got {scheme!r}")
  weights = weights.astype(np.float64)
  if weighting == "normalized" and weights.sum() > 0:
    weights = weights / weights.sum()
  return Selection(ids.astype(np.int64), weights, len(ids))


DROPOUT_MODES = ("independent", "fixed")


def dropout_mask(num_selected: int, fraction: float, rng: np.random.Generator, *,
                 mode: str = "independent") -> np.ndarray:
  """bool [M]: which selected devices survive the round.

  Example:
    >>> dropout_mask(10, 0.3, np.random.default_rng(0), mode="fixed").sum()
    7
  """
  if not 0 <= fraction < 1:
    raise ValueError(f"dropout fraction must be in [0, 1), got {fraction}")
  if mode == "independent":
    return rng.random(num_selected) >= fraction
  if mode == "fixed":
    keep = np.ones(num_selected, bool)
    keep[rng.choice(num_selected, int(np.floor(fraction * num_selected)), replace=False)] = False
    return keep
  raise ValueError(f"dropout mode must be one of {DROPOUT_MODES}, got {mode!r}")


def apply_dropout(selection: Selection, fraction: float, rng: np.random.Generator, *,
                  weighting: str = "unbiased", mode: str = "independent") -> tuple[Selection, np.ndarray]:
  """Selected devices fail mid-round; the survivors' weights keep the estimate right.

  Args:
    selection: the round's selection.
    fraction: in [0, 1), the dropout probability ("independent") or fraction ("fixed").
    rng: the round's generator.
    weighting: the weighting `selection` was made with.
    mode: "independent" or "fixed" (see the module docstring).

  Returns:
    (selection with the SAME ids and the failed devices' weights set to 0 (they ran, but
    their updates never arrive), survivors mask). Survivors' weights are scaled to stay
    unbiased ("unbiased") or renormalized to sum to 1 ("normalized").

  Example:
    >>> sel, survived = apply_dropout(sel, 0.2, rng)
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
  num = len(selection.ids)
  keep = dropout_mask(num, fraction, rng, mode=mode)
  dropped = int(num - keep.sum())
  weights = np.where(keep, selection.weights, 0.0)
  if weighting == "normalized":
    weights = weights / weights.sum() if weights.sum() > 0 else weights
  elif mode == "independent":
    weights = weights / (1 - fraction)
  elif dropped < num:
    weights = weights * num / (num - dropped)
  return Selection(selection.ids, weights, selection.num_selected, dropped), keep
