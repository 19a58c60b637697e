"""Privacy analysis of PATE aggregators (Papernot et al. 2017, 2018): NumPy float64, host side.

Neighbouring datasets differ in one training example, hence in the vote of at most one
teacher (teachers see disjoint partitions): one vote moves between classes (or to/from
an abstention), so each count changes by at most 1, the histogram by at most 2 in L1 and
sqrt(2) in L2, and max(votes) by at most 1.

Per query, everything is Renyi DP (RDP) at an array of orders lambda > 1: a mechanism M is
(lambda, eps)-RDP if D_lambda(M(D) || M(D')) <= eps for all neighbours D, D'.

  * Data-independent bounds hold for every pair of neighbours: they are the formal,
    worst-case guarantee. GNMax: lambda / sigma^2; Confident-GNMax selection:
    lambda / (2 sigma_t^2); LNMax: min(eps, lambda eps^2 / 2) with eps = 2 / scale;
    noisy averaging: lambda / sigma^2.
  * Data-dependent bounds bound D_lambda(M(D) || M(D')) for the *actual* dataset D (its
    vote histograms) and all its neighbours D'. They are much smaller when teachers agree,
    but are functions of the private data: publishing them as-is leaks, and they are not a
    DP guarantee. Papernot et al. 2018 publish a noisy version with smooth sensitivity
    (`release_data_dependent_epsilon`), whose release has its own formal RDP cost.

What is exact and what is an upper bound:
  * gnmax_log_q / lnmax_log_q: upper bounds on Pr[answer != argmax] (union bounds of exact
    pairwise probabilities, capped at 1 - 1/C since the argmax is the likeliest answer).
  * gnmax_rdp / lnmax_rdp: min(data-independent, data-dependent theorem bound): bounds.
  * threshold_rdp: the data-dependent part is the exact Renyi divergence between the two
    Bernoulli outputs for max-count m vs m +- 1 (max over both; an upper bound when m +- 1 is
    not actually reachable by a neighbour).
  * gnmax_local_sensitivity: a provably valid, looser-than-Algorithm-3 bound (see there).

Example:
  >>> votes = np.array([[240, 5, 5, 0], [130, 120, 0, 0]])       # [Q, C]
  >>> ledger = PateLedger()
  >>> ledger.record_gnmax(votes, sigma=40.0)
  >>> ledger.epsilon(1e-5), ledger.epsilon(1e-5, data_dependent=True)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, Sequence

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant
import numpy as np
from scipy import special

# Integers cover the usual PATE optimum (lambda ~ 5-60 for sigma ~ 40-200 and 10^2-10^4
# answers); fractional orders near 1 serve small budgets; large orders, tiny deltas.
DEFAULT_ORDERS: tuple[float, ...] = tuple(
    [1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5]
    + [float(a) for a in range(5, 65)]
    + [80.0, 96.0, 128.0, 192.0, 256.0, 384.0, 512.0, 768.0, 1024.0])

_LOG2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)


# -- validation ----------------------------------------------------------------------------


def _is_real(x: Any) -> bool:
  return isinstance(x, (numbers.Real, np.floating, np.integer)) and not isinstance(x, bool)


def _positive(name: str, value: Any) -> float:
  if not _is_real(value) or not math.isfinite(value) or value <= 0:
    raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
  return float(value)


def _finite(name: str, value: Any) -> float:
  if not _is_real(value) or not math.isfinite(value):
    raise ValueError(f"{name} must be a finite number, got {value!r}")
  return float(value)


def _delta(delta: Any) -> float:
  if not _is_real(delta) or not 0 < delta < 1:
    raise ValueError(f"delta must be in (0, 1), got {delta!r}")
  return float(delta)


def _orders(orders: Any) -> np.ndarray:
  """Orders as a float64 array of the given shape (scalar or 1-D); all finite and > 1."""
  arr = np.asarray(orders, dtype=np.float64)
  if arr.ndim > 1 or arr.size == 0:
    raise ValueError(f"orders must be a scalar or a non-empty 1-D array, got shape {arr.shape}")
  if not np.all(np.isfinite(arr)) or np.any(arr <= 1):
    raise ValueError(f"orders must all be finite and > 1, got {orders!r}")
  return arr


def _votes(votes: Any, ndim: int, name: str) -> np.ndarray:
  arr = np.asarray(votes)
  if arr.ndim != ndim:
    what = "1-D [classes]" if ndim == 1 else "2-D [queries, classes]"
    raise ValueError(f"{name} must be {what}, got shape {arr.shape}")
  if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
    raise ValueError(f"{name} must hold integer or float counts, got dtype {arr.dtype}")
  arr = arr.astype(np.float64)
  if arr.shape[-1] < 2:
    raise ValueError(f"{name} needs at least 2 classes, got shape {arr.shape}")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} has non-finite counts")
  if np.any(arr < 0):
    raise ValueError(f"{name} has negative counts")
  return arr


def _num_teachers(num_teachers: Any, votes: np.ndarray, name: str = "votes") -> int:
  if (isinstance(num_teachers, bool)
      or not isinstance(num_teachers, (numbers.Integral, np.integer)) or num_teachers < 1):
    raise ValueError(f"num_teachers must be a positive integer, got {num_teachers!r}")
  sums = votes.sum(axis=-1)
  if np.any(sums > num_teachers + 1e-9 * num_teachers):
    raise ValueError(f"{name} sums to more than num_teachers = {num_teachers}")
  return int(num_teachers)


# -- numerics ------------------------------------------------------------------------------


def _log1mexp(x: np.ndarray) -> np.ndarray:
  """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler 2012)."""
  x = np.asarray(x, dtype=np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(x > -_LOG2, np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


def _log_union(log_terms: np.ndarray, top: np.ndarray) -> np.ndarray:
  """log of sum over classes != top of exp(log_terms), capped at log(1 - 1/C); [Q, C] -> [Q].

  The cap is valid for i.i.d. continuous noise: swapping the noise of the argmax and of any
  other class shows the argmax wins at least as often as any class, so with probability
  >= 1/C, and Pr[answer != argmax] <= 1 - 1/C.
  """
  log_terms = log_terms.copy()
  log_terms[np.arange(log_terms.shape[0]), top] = -np.inf
  num_classes = log_terms.shape[1]
  return np.minimum(special.logsumexp(log_terms, axis=1), math.log1p(-1.0 / num_classes))


def _renyi_bernoulli(logp: np.ndarray, log1mp: np.ndarray, logp2: np.ndarray,
                     log1mp2: np.ndarray, lam: np.ndarray) -> np.ndarray:
  """D_lam(Bern(p) || Bern(p2)) from log p, log(1-p), log p2, log(1-p2); broadcasts."""
  with np.errstate(invalid="ignore", over="ignore"):
    s = np.logaddexp(lam * logp + (1 - lam) * logp2, lam * log1mp + (1 - lam) * log1mp2)
  return np.maximum(s / (lam - 1), 0.0)  # A divergence is >= 0; round-off may dip below.


# -- GNMax ---------------------------------------------------------------------------------


def _gnmax_log_q(votes: np.ndarray, sigma: float) -> np.ndarray:
  """[Q, C] -> [Q] log of the Proposition-7 bound on Pr[GNMax != argmax]."""
  top = np.argmax(votes, axis=1)
  gaps = votes.max(axis=1, keepdims=True) - votes
  # Pr[n_i + Z_i >= n_* + Z_*] = Pr[N(0, 2 sigma^2) >= gap] = 0.5 erfc(gap / (2 sigma)).
  return _log_union(special.log_ndtr(-gaps / (_SQRT2 * sigma)), top)


def _gnmax_rdp_from_log_q(log_q: np.ndarray, sigma: float, orders: np.ndarray) -> np.ndarray:
  """min(data-independent, Theorem 6 of Papernot et al. 2018) from log q; [Q], [L] -> [Q, L].

  Theorem 6: if M is (mu1, eps1)- and (mu2, eps2)-RDP, q >= Pr[M(D) != i*], lambda <= mu1,
  mu2 > 1 and q <= exp((mu2 - 1) eps2) / (mu1 / (mu1 - 1) * mu2 / (mu2 - 1))^mu2, then for
  every neighbour D',
    D_lambda(M(D) || M(D')) <= log((1 - q) A^(lambda - 1) + q B^(lambda - 1)) / (lambda - 1),
    A = (1 - q) / (1 - (q e^eps2)^((mu2 - 1) / mu2)),  B = e^eps1 / q^(1 / (mu1 - 1)).
  GNMax is (mu, mu / sigma^2)-RDP for every mu, and mu2 = sigma sqrt(log(1/q)),
  mu1 = mu2 + 1 (Proposition 10). The conditions are checked per (query, order); where any
  fails the data-independent lambda / sigma^2 is used.
  """
  lq = log_q[:, None]
  lam = orders[None, :]
  var = sigma * sigma
  indep = np.broadcast_to(lam / var, (lq.shape[0], lam.shape[1]))
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    mu2 = sigma * np.sqrt(-lq)
    mu1 = mu2 + 1.0
    eps1, eps2 = mu1 / var, mu2 / var
    valid = ((mu2 > 1.0) & (lam < mu1)
             & (lq <= (mu2 - 1.0) * eps2 - mu2 * (np.log(mu1 / (mu1 - 1.0))
                                                  + np.log(mu2 / (mu2 - 1.0)))))
    log1q = _log1mexp(lq)
    # (q e^eps2)^(1 - 1/mu2) < 1 under the conditions, so log A is finite.
    log_a = log1q - _log1mexp((lq + eps2) * (1.0 - 1.0 / mu2))
    log_b = eps1 - lq / (mu1 - 1.0)
    dd = np.logaddexp(log1q + (lam - 1.0) * log_a, lq + (lam - 1.0) * log_b) / (lam - 1.0)
  dd = np.maximum(dd, 0.0)  # The bound is on a divergence; clip round-off below 0.
  out = np.where(valid & np.isfinite(dd), np.minimum(dd, indep), indep)
  # q = 0 (only if no other class can win): the answer is deterministic on D and D'.
  return np.where(np.isneginf(lq), 0.0, out)


def gnmax_log_q(votes: Any, sigma: float) -> float:
  """log of an upper bound on Pr[GNMax(votes) != argmax(votes)] (Papernot et al. 2018, Prop. 7).

  q <= sum_{i != i*} 0.5 erfc((n_* - n_i) / (2 sigma)), capped at 1 - 1/C.

  Args:
    votes: [C] vote histogram (non-negative counts).
    sigma: GNMax noise std, > 0.

  Returns:
    log q as a float.

  Example:
    >>> math.exp(gnmax_log_q(np.array([10, 8, 0]), sigma=2.0))
    0.2399535371021992
  """
  votes = _votes(votes, 1, "votes")
  return float(_gnmax_log_q(votes[None], _positive("sigma", sigma))[0])


def gnmax_rdp(votes: Any, sigma: float, orders: Any) -> np.ndarray:
  """Upper bound on the RDP of one GNMax answer at `votes`, at each order.

  min(lambda / sigma^2 [data-independent], Theorem 6 bound with the Prop. 7 q bound and the
  Prop. 10 choice of mu1, mu2 [data-dependent, where its conditions hold]).

  Args:
    votes: [C] vote histogram.
    sigma: GNMax noise std, > 0.
    orders: scalar or [L] Renyi orders > 1.

  Returns:
    Array shaped like `orders`.

  Example:
    >>> gnmax_rdp(np.array([250] + [0] * 9), 40.0, [10.0, 20.0])   # << [10, 20] / 1600
  """
  votes = _votes(votes, 1, "votes")
  sigma = _positive("sigma", sigma)
  orders = _orders(orders)
  out = _gnmax_rdp_from_log_q(_gnmax_log_q(votes[None], sigma), sigma, np.atleast_1d(orders))
  return out[0].reshape(orders.shape)


def gnmax_rdp_batch(votes_batch: Any, sigma: float, orders: Any) -> np.ndarray:
  """`gnmax_rdp` for each row of a [Q, C] batch; returns [Q, L] (vectorised).

  Example:
    >>> gnmax_rdp_batch(np.array([[250, 0], [125, 125]]), 40.0, DEFAULT_ORDERS).shape
    (2, 79)
  """
  votes = _votes(votes_batch, 2, "votes_batch")
  sigma = _positive("sigma", sigma)
  orders = np.atleast_1d(_orders(orders))
  return _gnmax_rdp_from_log_q(_gnmax_log_q(votes, sigma), sigma, orders)


# -- LNMax ---------------------------------------------------------------------------------


def lnmax_pure_epsilon(scale: float) -> float:
  """Pure DP epsilon of one LNMax answer with Laplace(scale) noise: 2 / scale.

  (The count vector has L1 sensitivity 2; argmax is post-processing.)

  Example:
    >>> lnmax_pure_epsilon(20.0)
    0.1
  """
  return 2.0 / _positive("scale", scale)


def _lnmax_log_q(votes: np.ndarray, scale: float) -> np.ndarray:
  top = np.argmax(votes, axis=1)
  x = (votes.max(axis=1, keepdims=True) - votes) / scale  # gamma * gap, gamma = 1 / scale
  # Pr[L_i - L_* >= gap] = (2 + gamma gap) / (4 exp(gamma gap)) for i.i.d. Laplace(1/gamma).
  return _log_union(np.log(2.0 + x) - math.log(4.0) - x, top)


def lnmax_log_q(votes: Any, scale: float) -> float:
  """log of the Lemma 4 (Papernot et al. 2017) bound on Pr[LNMax(votes) != argmax(votes)].

  q <= sum_{j != j*} (2 + gamma (n_* - n_j)) / (4 exp(gamma (n_* - n_j))), gamma = 1/scale,
  capped at 1 - 1/C.

  Example:
    >>> math.exp(lnmax_log_q(np.array([10, 2, 0]), scale=2.0))
    0.03926486558150084
  """
  votes = _votes(votes, 1, "votes")
  return float(_lnmax_log_q(votes[None], _positive("scale", scale))[0])


def _lnmax_rdp_from_log_q(log_q: np.ndarray, scale: float, orders: np.ndarray) -> np.ndarray:
  """min(pure-DP bound, Theorem 3 of Papernot et al. 2017); [Q], [L] -> [Q, L].

  Theorem 3: for an eps-DP M (eps = 2 gamma) and q >= Pr[M(D) != o*] with
  q < (e^eps - 1) / (e^(2 eps) - 1) = 1 / (e^eps + 1), the log moment
  alpha(l) <= log((1 - q) ((1 - q) / (1 - e^eps q))^l + q e^(eps l)); alpha(l) = l D_(l+1),
  so RDP(lambda) <= alpha(lambda - 1) / (lambda - 1).
  """
  eps = 2.0 / scale
  lq = log_q[:, None]
  lam = orders[None, :]
  # eps-DP => D_lambda <= eps, and => (eps^2 / 2)-zCDP (Bun & Steinke 2016, Prop. 3.3).
  indep = np.broadcast_to(np.minimum(eps, lam * eps * eps / 2.0), (lq.shape[0], lam.shape[1]))
  valid = lq < -np.logaddexp(0.0, eps)
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    log1q = _log1mexp(lq)
    term1 = lam * log1q - (lam - 1.0) * _log1mexp(np.minimum(eps + lq, 0.0))
    term2 = lq + eps * (lam - 1.0)
    dd = np.maximum(np.logaddexp(term1, term2) / (lam - 1.0), 0.0)
  out = np.where(valid & np.isfinite(dd), np.minimum(dd, indep), indep)
  return np.where(np.isneginf(lq), 0.0, out)


def lnmax_rdp(votes: Any, scale: float, orders: Any) -> np.ndarray:
  """Upper bound on the RDP of one LNMax answer (Laplace(scale) noise per count) at `votes`.

  min(min(eps, lambda eps^2 / 2) with eps = 2 / scale [data-independent],
      Theorem 3 of Papernot et al. 2017 with the Lemma 4 q bound [data-dependent]).

  Args:
    votes: [C] vote histogram.
    scale: Laplace scale b = 1 / gamma, > 0.
    orders: scalar or [L] orders > 1.

  Returns:
    Array shaped like `orders`.

  Example:
    >>> lnmax_rdp(np.array([100, 0, 0]), 20.0, [2.0, 8.0])
  """
  votes = _votes(votes, 1, "votes")
  scale = _positive("scale", scale)
  orders = _orders(orders)
  out = _lnmax_rdp_from_log_q(_lnmax_log_q(votes[None], scale), scale, np.atleast_1d(orders))
  return out[0].reshape(orders.shape)


# -- Confident-GNMax selection (threshold) -------------------------------------------------


def _log_pr_answered(max_votes: np.ndarray, threshold: float, sigma_t: float
                     ) -> tuple[np.ndarray, np.ndarray]:
  """log Pr[answer] and log Pr[no answer] for max count(s) `max_votes`."""
  z = (max_votes - threshold) / sigma_t
  return special.log_ndtr(z), special.log_ndtr(-z)


def log_pr_answered(votes: Any, threshold: float, sigma_threshold: float) -> float:
  """log Pr[max(votes) + N(0, sigma_threshold^2) >= threshold].

  Example:
    >>> math.exp(log_pr_answered(np.array([200, 50]), 150.0, 100.0))
    0.6914624612740131
  """
  votes = _votes(votes, 1, "votes")
  threshold = _finite("threshold", threshold)
  sigma_t = _positive("sigma_threshold", sigma_threshold)
  return float(_log_pr_answered(np.array([votes.max()]), threshold, sigma_t)[0][0])


def _threshold_rdp_from_max(m: np.ndarray, threshold: float, sigma_t: float,
                            orders: np.ndarray, num_teachers: int | None) -> np.ndarray:
  """[Q] max counts -> [Q, L] min(lambda / (2 sigma_t^2), max_{m'=m+-1} D(Bern_m || Bern_m'))."""
  lam = orders[None, :]
  mm = m[:, None]
  logp, log1mp = _log_pr_answered(mm, threshold, sigma_t)
  dd = np.zeros((m.shape[0], orders.shape[0]))
  for step in (-1.0, 1.0):
    m2 = mm + step
    ok = m2 >= 0  # a count cannot go below 0 (or above the number of teachers)
    if num_teachers is not None:
      ok &= m2 <= num_teachers
    logp2, log1mp2 = _log_pr_answered(m2, threshold, sigma_t)
    div = _renyi_bernoulli(logp, log1mp, logp2, log1mp2, lam)
    dd = np.maximum(dd, np.where(ok, div, 0.0))
  return np.minimum(dd, lam / (2.0 * sigma_t * sigma_t))


def threshold_rdp(votes: Any, threshold: float, sigma_threshold: float, orders: Any,
                  num_teachers: int | None = None) -> np.ndarray:
  """RDP of the Confident-GNMax selection step (answer iff max(votes) + N(0, s^2) >= t).

  Data-independent: lambda / (2 s^2) (max(votes) has sensitivity 1). Data-dependent: the
  output is Bernoulli(p_m) with p_m = Pr[m + N(0, s^2) >= t], m = max(votes); a neighbour has
  max count m' in {m-1, m, m+1}, so the exact divergence at D is at most
  max_{m'=m+-1} D_lambda(Bern(p_m) || Bern(p_m')) (m' clipped to [0, num_teachers]). Returns
  the min of the two (the exact divergence never exceeds lambda / (2 s^2) anyway).

  Args:
    votes: [C] vote histogram.
    threshold: the threshold t.
    sigma_threshold: selection noise std s, > 0.
    orders: scalar or [L] orders > 1.
    num_teachers: optional; m + 1 > num_teachers is then not considered.

  Returns:
    Array shaped like `orders`.

  Example:
    >>> threshold_rdp(np.array([240, 10]), 150.0, 100.0, [10.0])   # < 10 / (2 * 100**2)
  """
  votes = _votes(votes, 1, "votes")
  threshold = _finite("threshold", threshold)
  sigma_t = _positive("sigma_threshold", sigma_threshold)
  orders = _orders(orders)
  if num_teachers is not None:
    num_teachers = _num_teachers(num_teachers, votes)
  out = _threshold_rdp_from_max(np.array([votes.max()]), threshold, sigma_t,
                                np.atleast_1d(orders), num_teachers)
  return out[0].reshape(orders.shape)


# -- noisy averaging -----------------------------------------------------------------------


def noisy_average_rdp(sigma: float, orders: Any) -> np.ndarray:
  """RDP of one soft-vote answer: N(0, sigma^2 I) added to the sum of teacher probability vectors.

  One teacher's probability vector moves by at most sqrt(2) in L2, so the Gaussian mechanism
  gives lambda * 2 / (2 sigma^2) = lambda / sigma^2.

  Example:
    >>> noisy_average_rdp(2.0, [2.0, 4.0])
    array([0.5, 1. ])
  """
  sigma = _positive("sigma", sigma)
  orders = _orders(orders)
  return orders / sigma**2


# -- smooth sensitivity of the data-dependent GNMax / threshold RDP --------------------------


def _gnmax_log_q_ball(votes: np.ndarray, sigma: float, radii: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Bounds on the Prop. 7 q over histograms within `radii` vote moves; [Q, C], [R] -> [Q, R].

  With gaps x_i = max(n) - n_i, q(n) = min(cap, sum_i h(x_i) - h(0)), h(x) = 0.5 erfc(x/2sigma)
  (the argmax has x = 0; ties are handled by the symmetric form). One vote move changes
  max(n) and every n_i by at most 1, so every gap by at most 2. Over the relaxed set
  R(n, r) = {y >= 0 : min_i y_i = 0, |y_i - x_i| <= 2r}, which contains the gaps of every
  histogram within r moves, sum_i h(y_i) - h(0) is maximal at y_i = max(0, x_i - 2r) and
  minimal at y_top = 0, y_i = x_i + 2r. R(n, r) is contained in R(n', r + 1) for every
  neighbour n', which makes the resulting local-sensitivity bounds admissible for the
  smooth-sensitivity framework.
  """
  top = np.argmax(votes, axis=1)
  gaps = votes.max(axis=1, keepdims=True) - votes  # [Q, C]
  shift = 2.0 * radii[None, :, None]  # [1, R, 1]
  scale = _SQRT2 * sigma
  log_hi = special.log_ndtr(-np.maximum(gaps[:, None, :] - shift, 0.0) / scale)
  log_lo = special.log_ndtr(-(gaps[:, None, :] + shift) / scale)
  q, r, c = log_hi.shape
  top_r = np.repeat(top, r)
  hi = _log_union(log_hi.reshape(q * r, c), top_r).reshape(q, r)
  lo = _log_union(log_lo.reshape(q * r, c), top_r).reshape(q, r)
  return lo, hi


@functools.lru_cache(maxsize=256)
def _gnmax_rdp_monotone(sigma: float, order: float, num_classes: int, s_max: float) -> bool:
  """Numerical check that the data-dependent GNMax RDP is non-decreasing in q.

  Checked on 20001 points uniform in s = sqrt(log(1/q)) from the cap 1 - 1/C down to
  exp(-s_max^2). Holds in every setting we tried; the smooth-sensitivity bound relies on it
  and falls back to the trivial bound lambda / sigma^2 when the check fails.
  """
  s_min = math.sqrt(-math.log1p(-1.0 / num_classes))
  s = np.linspace(s_max, s_min, 20001)  # increasing q
  vals = _gnmax_rdp_from_log_q(-(s * s), sigma, np.array([order]))[:, 0]
  # Tolerate round-off only: relative 1e-12 of the local value, plus subnormal noise.
  return bool(np.all(np.diff(vals) >= -(1e-12 * vals[1:] + 1e-300)))


_LS_PAD = 1e-9  # relative padding of local-sensitivity bounds, for round-off in the RDP


def _gnmax_ls_batch(votes: np.ndarray, num_teachers: int, sigma: float, order: float
                    ) -> np.ndarray:
  """[Q, C] -> [Q, T] admissible local-sensitivity bounds of the dd GNMax RDP at `order`."""
  q_count, num_classes = votes.shape
  lam = np.array([order])
  cap_rdp = _gnmax_rdp_from_log_q(np.array([math.log1p(-1.0 / num_classes)]), sigma, lam)[0, 0]
  out = np.empty((q_count, num_teachers))
  radii = np.arange(1, num_teachers + 1, dtype=np.float64)  # ball radius d + 1
  chunk = max(1, 2_000_000 // max(1, num_teachers * num_classes))
  los, his = [], []
  for start in range(0, q_count, chunk):
    lo, hi = _gnmax_log_q_ball(votes[start:start + chunk], sigma, radii)
    los.append(lo)
    his.append(hi)
  lo, hi = np.concatenate(los), np.concatenate(his)
  finite_lo = lo[np.isfinite(lo)]
  s_max = math.sqrt(-finite_lo.min()) if finite_lo.size else 1.0
  s_max = 2.0 ** math.ceil(math.log2(max(s_max, 1.0)))  # few distinct cache keys
  if not _gnmax_rdp_monotone(float(sigma), float(order), int(num_classes), s_max):
    out[:] = order / sigma**2  # F ranges in [0, lambda / sigma^2]: always a valid bound
    return out
  f_hi = _gnmax_rdp_from_log_q(hi.ravel(), sigma, lam)[:, 0].reshape(hi.shape)
  f_lo = _gnmax_rdp_from_log_q(lo.ravel(), sigma, lam)[:, 0].reshape(lo.shape)
  out[:] = np.maximum(f_hi * (1.0 + _LS_PAD) + 1e-300 - f_lo, 0.0)
  # Beyond distance T - 2 use the global range bound: F <= F(cap) always, F >= 0.
  out[:, -1] = cap_rdp * (1.0 + _LS_PAD)
  return out


def gnmax_local_sensitivity(votes: Any, num_teachers: int, sigma: float, order: float
                            ) -> np.ndarray:
  """Bounds LS_d, d = 0..T-1, on the local sensitivity of the data-dependent GNMax RDP.

  F(n) = gnmax_rdp(n, sigma, order) as a function of the histogram n (T teachers, one vote
  each, neighbours move one vote). Returned entry d bounds max{LS(n'') : n'' within d moves
  of n}, where LS(n'') = max over neighbours n''' of |F(n'') - F(n''')|:

    LS_d <= F_max(d + 1) - F_min(d + 1),

  the range of F over histograms within d + 1 moves. F = g(q(n)) with q the capped Prop. 7
  bound and g non-decreasing in q (checked numerically per (sigma, order); on failure every
  entry is the trivial lambda / sigma^2), so the range is g(q_hi) - g(q_lo) with q_hi, q_lo
  bounding q over a relaxed ball (see `_gnmax_log_q_ball`); the last entry uses
  g(1 - 1/C) - 0. This is a provably valid upper bound, looser than Algorithm 3 of
  Papernot et al. 2018 (it lets every gap move by 2 per vote move), and it is admissible:
  LS_d(n) <= LS_{d+1}(n') for neighbours, so exp(-beta d)-discounted maxima are
  beta-smooth upper bounds.

  Args:
    votes: [C] histogram, summing to at most num_teachers.
    num_teachers: T.
    sigma: GNMax noise std.
    order: one Renyi order > 1.

  Returns:
    [T] non-negative array (non-decreasing in d).

  Example:
    >>> gnmax_local_sensitivity(np.array([240, 10, 0]), 250, 40.0, 20.0)[:3]
  """
  votes = _votes(votes, 1, "votes")
  num_teachers = _num_teachers(num_teachers, votes)
  sigma = _positive("sigma", sigma)
  order = float(_orders(order).reshape(()))
  return _gnmax_ls_batch(votes[None], num_teachers, sigma, order)[0]


def _threshold_ls(max_votes: np.ndarray, num_teachers: int, threshold: float, sigma_t: float,
                  order: float) -> np.ndarray:
  """[Q] max counts -> [Q, T] ranges of the dd threshold RDP over max in [m - d - 1, m + d + 1]."""
  grid = np.arange(num_teachers + 1, dtype=np.float64)
  f = _threshold_rdp_from_max(grid, threshold, sigma_t, np.array([order]), num_teachers)[:, 0]
  out = np.empty((max_votes.shape[0], num_teachers))
  d = np.arange(num_teachers)
  for i, m in enumerate(np.rint(max_votes).astype(int)):
    m = min(max(m, 0), num_teachers)
    # Running max/min of f walking down from m and up from m, padded at the ends.
    down = f[m::-1]
    up = f[m:]
    down = np.concatenate([down, np.full(num_teachers + 1, down[-1])])[:num_teachers + 1]
    up = np.concatenate([up, np.full(num_teachers + 1, up[-1])])[:num_teachers + 1]
    mx = np.maximum(np.maximum.accumulate(down), np.maximum.accumulate(up))
    mn = np.minimum(np.minimum.accumulate(down), np.minimum.accumulate(up))
    out[i] = mx[d + 1] * (1.0 + _LS_PAD) - mn[d + 1]
  return np.maximum(out, 0.0)


def threshold_local_sensitivity(votes: Any, num_teachers: int, threshold: float,
                                sigma_threshold: float, order: float) -> np.ndarray:
  """Bounds LS_d, d = 0..T-1, of the data-dependent threshold RDP (num_teachers clipping).

  F depends on the histogram only through m = max(votes), which moves by at most 1 per vote
  move, so LS_d <= max - min of F over max counts in [m - d - 1, m + d + 1] ∩ [0, T]
  (exact range over that interval; admissible since the intervals nest).

  Example:
    >>> threshold_local_sensitivity(np.array([200, 50]), 250, 150.0, 100.0, 10.0)[:3]
  """
  votes = _votes(votes, 1, "votes")
  num_teachers = _num_teachers(num_teachers, votes)
  if not np.allclose(votes, np.rint(votes)):
    raise ValueError("votes must be integer counts for threshold_local_sensitivity")
  threshold = _finite("threshold", threshold)
  sigma_t = _positive("sigma_threshold", sigma_threshold)
  order = float(_orders(order).reshape(()))
  return _threshold_ls(np.array([votes.max()]), num_teachers, threshold, sigma_t, order)[0]


def smooth_sensitivity(local_sensitivity: Any, beta: float) -> float:
  """max_d exp(-beta d) LS_d of an admissible local-sensitivity array (d = 0, 1, ...).

  Example:
    >>> smooth_sensitivity(np.array([1.0, 2.0, 4.0]), 0.5)   # max(1, 2/e^.5, 4/e)
    1.4715177646857693
  """
  ls = np.asarray(local_sensitivity, dtype=np.float64)
  if ls.ndim != 1 or ls.size == 0 or np.any(ls < 0) or not np.all(np.isfinite(ls)):
    raise ValueError("local_sensitivity must be a non-empty 1-D array of finite values >= 0")
  beta = _positive("beta", beta)
  return float(np.max(ls * np.exp(-beta * np.arange(ls.size))))


def gnmax_smooth_sensitivity(votes: Any, num_teachers: int, sigma: float, order: float,
                             beta: float) -> float:
  """beta-smooth sensitivity bound max_d exp(-beta d) LS_d of one GNMax data-dependent RDP.

  Example:
    >>> gnmax_smooth_sensitivity(np.array([240, 10, 0]), 250, 40.0, 20.0, beta=0.02)
  """
  return smooth_sensitivity(gnmax_local_sensitivity(votes, num_teachers, sigma, order), beta)


def total_local_sensitivity(votes_batch: Any, num_teachers: int, order: float, *,
                            sigma: float | None = None, answered_mask: Any = None,
                            threshold: float | None = None,
                            sigma_threshold: float | None = None) -> np.ndarray:
  """Admissible LS_d bounds of the summed data-dependent RDP of a PATE run at `order`.

  Sums GNMax bounds over answered queries (if `sigma` is given) and threshold bounds over
  all queries (if `threshold`, `sigma_threshold` are given): one changed example moves at
  most one vote in every query, so LS_d of a sum is at most the sum of the LS_d, and sums
  of admissible bounds stay admissible. This covers exactly what `PateLedger` adds to its
  data-dependent total for record_gnmax / record_threshold (with num_teachers set); LNMax
  has no smooth-sensitivity analysis here.

  Example:
    >>> ls = total_local_sensitivity(votes, 250, 20.0, sigma=40.0, answered_mask=answered,
    ...                              threshold=150.0, sigma_threshold=100.0)
    >>> ss = smooth_sensitivity(ls, beta=0.02)
  """
  votes = _votes(votes_batch, 2, "votes_batch")
  num_teachers = _num_teachers(num_teachers, votes, "votes_batch")
  order = float(_orders(order).reshape(()))
  total = np.zeros(num_teachers)
  if sigma is not None:
    mask = _mask(answered_mask, votes.shape[0])
    if mask.any():
      total += _gnmax_ls_batch(votes[mask], num_teachers, _positive("sigma", sigma),
                               order).sum(axis=0)
  if (threshold is None) != (sigma_threshold is None):
    raise ValueError("threshold and sigma_threshold must be given together")
  if threshold is not None:
    if not np.allclose(votes, np.rint(votes)):
      raise ValueError("votes_batch must be integer counts for the threshold sensitivity")
    total += _threshold_ls(votes.max(axis=1), num_teachers, _finite("threshold", threshold),
                           _positive("sigma_threshold", sigma_threshold), order).sum(axis=0)
  return total


# -- GNSS release of the data-dependent cost -------------------------------------------------


def gnss_rdp(beta: float, sigma_ss: float, orders: Any) -> np.ndarray:
  """RDP of releasing f(D) + SS_beta(D) N(0, sigma_ss^2) (Papernot et al. 2018, Theorem 23).

  For a beta-smooth upper bound SS_beta on the local sensitivity of f:
    lambda e^(2 beta) / sigma_ss^2 + (beta lambda - 0.5 log(1 - 2 lambda beta)) / (lambda - 1),
  valid for 1 < lambda < 1 / (2 beta).

  Raises:
    ValueError: an order outside (1, 1 / (2 beta)), or beta / sigma_ss not > 0.

  Example:
    >>> gnss_rdp(0.02, 8.0, [10.0])
  """
  beta = _positive("beta", beta)
  sigma_ss = _positive("sigma_ss", sigma_ss)
  orders = _orders(orders)
  if np.any(orders >= 1.0 / (2.0 * beta)):
    raise ValueError(f"orders must lie in (1, 1 / (2 beta)) = (1, {1 / (2 * beta):g}) for "
                     f"beta = {beta:g}, got {orders!r}")
  return (orders * math.exp(2.0 * beta) / sigma_ss**2
          + (beta * orders - 0.5 * np.log1p(-2.0 * orders * beta)) / (orders - 1.0))


def _epsilon_at_order(order: float, rdp: float, delta: float) -> float:
  return float(rdp_privacy_accountant.compute_epsilon([order], [max(rdp, 0.0)], delta)[0])


@dataclasses.dataclass(frozen=True)
class ReleasedEpsilon:
  """Result of `release_data_dependent_epsilon`; see there for what each number guarantees.

  Attributes:
    order: the Renyi order lambda of the analysis.
    delta: delta of the (epsilon, delta) conversions.
    noisy_data_dependent_rdp: eps_dd(lambda) + SS * N(0, sigma_ss^2). A noisy estimate (may be
      below the true value), safe to publish: its release is covered by `release_rdp`.
    release_rdp: formal, data-independent RDP at `order` of publishing the noisy value.
    noisy_total_rdp: noisy_data_dependent_rdp + release_rdp (the estimate reported by
      Papernot et al. 2018 for labels + released number).
    noisy_epsilon: noisy_total_rdp converted to epsilon at `delta` (improved conversion).
    release_epsilon: the formal (epsilon, delta) guarantee of the release alone.
  """
  order: float
  delta: float
  noisy_data_dependent_rdp: float
  release_rdp: float
  noisy_total_rdp: float
  noisy_epsilon: float
  release_epsilon: float


def release_data_dependent_epsilon(data_dependent_rdp: float, smooth_sens: float, beta: float,
                                   sigma_ss: float, order: float, delta: float,
                                   rng: np.random.Generator | int) -> ReleasedEpsilon:
  """Publishes a data-dependent PATE privacy cost with smooth-sensitivity Gaussian noise (GNSS).

  Procedure (Papernot et al. 2018, Sec. 4 and App. C):
    1. eps_dd = the data-dependent RDP at `order`, summed over all answered queries (and the
       selection steps) - e.g. `PateLedger.rdp_data_dependent` at that order. It bounds
       D_lambda(M(D) || M(D')) for the actual data D only, and is a function of D.
    2. SS = a beta-smooth upper bound on the local sensitivity of eps_dd as a function of D,
       e.g. smooth_sensitivity(total_local_sensitivity(...), beta) for the same queries.
    3. Release eps~ = eps_dd + SS * N(0, sigma_ss^2) (this function draws the noise).
  Guarantees:
    * Publishing eps~ is (lambda', gnss_rdp(beta, sigma_ss, lambda'))-RDP for every
      1 < lambda' < 1/(2 beta), for all datasets (formal): `release_rdp` /
      `release_epsilon`. It composes with everything else released.
    * eps~ + release_rdp is a noisy *estimate* of the data-dependent cost of labels plus
      release at D; it is not an upper bound and not a worst-case guarantee. The only
      worst-case (epsilon, delta) guarantee of the labels is the data-independent one
      (PateLedger.epsilon(delta)).
    * Pick `order` (and beta, sigma_ss) without looking at the private data - e.g. in advance
      or from the data-independent curve; choosing it to minimise eps_dd leaks information
      not accounted for here.

  Args:
    data_dependent_rdp: eps_dd at `order` (>= 0).
    smooth_sens: SS, the beta-smooth sensitivity bound of eps_dd (>= 0).
    beta: smoothness parameter, > 0, with order < 1 / (2 beta).
    sigma_ss: noise multiplier of the release, > 0.
    order: lambda > 1.
    delta: target delta in (0, 1).
    rng: a numpy Generator or an int seed.

  Returns:
    A ReleasedEpsilon.

  Example:
    >>> r = release_data_dependent_epsilon(0.8, 0.01, 0.02, 8.0, 20.0, 1e-5, rng=0)
    >>> r.noisy_epsilon, r.release_epsilon
  """
  eps_dd = _finite("data_dependent_rdp", data_dependent_rdp)
  if eps_dd < 0:
    raise ValueError(f"data_dependent_rdp must be >= 0, got {data_dependent_rdp!r}")
  ss = _finite("smooth_sens", smooth_sens)
  if ss < 0:
    raise ValueError(f"smooth_sens must be >= 0, got {smooth_sens!r}")
  delta = _delta(delta)
  order = float(_orders(order).reshape(()))
  release = float(gnss_rdp(beta, sigma_ss, order))
  if isinstance(rng, (numbers.Integral, np.integer)) and not isinstance(rng, bool):
    rng = np.random.default_rng(int(rng))
  if not isinstance(rng, np.random.Generator):
    raise ValueError(f"rng must be a numpy Generator or an int seed, got {rng!r}")
  noisy = eps_dd + ss * float(sigma_ss) * float(rng.standard_normal())
  total = noisy + release
  return ReleasedEpsilon(order=order, delta=delta, noisy_data_dependent_rdp=noisy,
                         release_rdp=release, noisy_total_rdp=total,
                         noisy_epsilon=_epsilon_at_order(order, total, delta),
                         release_epsilon=_epsilon_at_order(order, release, delta))


# -- ledger --------------------------------------------------------------------------------


def _mask(answered_mask: Any, num_queries: int) -> np.ndarray:
  if answered_mask is None:
    return np.ones(num_queries, dtype=bool)
  mask = np.asarray(answered_mask)
  if mask.shape != (num_queries,):
    raise ValueError(f"answered_mask must have shape ({num_queries},), got {mask.shape}")
  if mask.dtype != bool:
    if not np.all((mask == 0) | (mask == 1)):
      raise ValueError("answered_mask must be boolean (or 0/1)")
    mask = mask.astype(bool)
  return mask


class PateLedger:
  """Accumulates PATE per-query RDP at fixed orders: a data-independent and a dd total.

  * `rdp_data_independent`: sum of worst-case per-query RDP -> `epsilon(delta)` is the
    formal (epsilon, delta)-DP guarantee of everything recorded. Stop a labelling loop on
    this one: `would_exceed(target, delta, ...)` before each batch.
  * `rdp_data_dependent`: sum of the per-query bounds at the actual votes ->
    `epsilon(delta, data_dependent=True)`. Private; see `release_data_dependent_epsilon`.

  GNMax is charged only for answered queries (Confident-GNMax). Which queries get answered
  is random, so the data-independent total is a worst-case bound together with a stopping
  rule: an RDP privacy filter (Feldman & Zrnic 2021) lets adaptively chosen per-query costs
  compose up to a per-order budget fixed in advance. GNMax, threshold and noisy-average
  costs are all c * lambda, so stopping before epsilon(delta) would pass a fixed target is
  such a budget; mixing in LNMax (not linear in lambda) is not covered - then record every
  query as answered (answered_mask=None) for a guarantee without the filter argument.

  Counters: `num_answered` counts answers (GNMax, LNMax, noisy average); `num_queries`
  counts queries seen by a selection step plus answers recorded without an answered_mask.

  Example:
    >>> ledger = PateLedger(num_teachers=250)
    >>> if ledger.would_exceed(2.0, 1e-5, num_queries=len(votes), gnmax_sigma=40.0,
    ...                        threshold_sigma=100.0):
    ...   stop()
    >>> ledger.record_confident_gnmax(votes, 150.0, 100.0, 40.0, answered)
    >>> ledger.epsilon(1e-5), ledger.epsilon(1e-5, data_dependent=True)
  """

  def __init__(self, orders: Sequence[float] | None = None, *, num_teachers: int | None = None):
    """Creates an empty ledger.

    Args:
      orders: Renyi orders > 1 (None: DEFAULT_ORDERS).
      num_teachers: optional T; enables the [0, T] clipping of the threshold analysis and
        checks that histograms sum to at most T.

    Example:
      >>> PateLedger().epsilon(1e-5)
      0.0
    """
    self._orders = np.atleast_1d(_orders(DEFAULT_ORDERS if orders is None else orders)).copy()
    if num_teachers is not None:
      if isinstance(num_teachers, bool) or not isinstance(num_teachers, (numbers.Integral,
                                                                         np.integer)) \
          or num_teachers < 1:
        raise ValueError(f"num_teachers must be a positive integer, got {num_teachers!r}")
      num_teachers = int(num_teachers)
    self.num_teachers = num_teachers
    self._indep = np.zeros_like(self._orders)
    self._dep = np.zeros_like(self._orders)
    self.num_queries = 0
    self.num_answered = 0

  @property
  def orders(self) -> np.ndarray:
    """The Renyi orders of both totals (a copy)."""
    return self._orders.copy()

  @property
  def rdp_data_independent(self) -> np.ndarray:
    """Worst-case RDP total at each order (a copy): the formal guarantee."""
    return self._indep.copy()

  @property
  def rdp_data_dependent(self) -> np.ndarray:
    """Data-dependent RDP total at each order (a copy): private, see module docstring."""
    return self._dep.copy()

  def _batch(self, votes_batch: Any) -> np.ndarray:
    votes = _votes(votes_batch, 2, "votes_batch")
    if self.num_teachers is not None:
      _num_teachers(self.num_teachers, votes, "votes_batch")
    return votes

  def record_gnmax(self, votes_batch: Any, sigma: float, answered_mask: Any = None
                   ) -> np.ndarray:
    """Records GNMax answers to the queries where `answered_mask` is True (all if None).

    Args:
      votes_batch: [Q, C] histograms.
      sigma: GNMax noise std.
      answered_mask: [Q] booleans (from the selection step) or None.

    Returns:
      [Q, L] per-query data-dependent RDP (0 for unanswered queries).

    Example:
      >>> ledger.record_gnmax(votes, 40.0)
    """
    votes = self._batch(votes_batch)
    sigma = _positive("sigma", sigma)
    mask = _mask(answered_mask, votes.shape[0])
    per_query = np.zeros((votes.shape[0], self._orders.size))
    if mask.any():
      per_query[mask] = _gnmax_rdp_from_log_q(_gnmax_log_q(votes[mask], sigma), sigma,
                                              self._orders)
    n = int(mask.sum())
    self._indep += n * self._orders / sigma**2
    self._dep += per_query.sum(axis=0)
    self.num_answered += n
    if answered_mask is None:
      self.num_queries += votes.shape[0]
    return per_query

  def record_lnmax(self, votes_batch: Any, scale: float) -> np.ndarray:
    """Records LNMax answers (Laplace(scale) noise) to every query of the batch.

    Example:
      >>> ledger.record_lnmax(votes, 20.0)
    """
    votes = self._batch(votes_batch)
    scale = _positive("scale", scale)
    per_query = _lnmax_rdp_from_log_q(_lnmax_log_q(votes, scale), scale, self._orders)
    eps = 2.0 / scale
    self._indep += votes.shape[0] * np.minimum(eps, self._orders * eps * eps / 2.0)
    self._dep += per_query.sum(axis=0)
    self.num_answered += votes.shape[0]
    self.num_queries += votes.shape[0]
    return per_query

  def record_threshold(self, votes_batch: Any, threshold: float, sigma_threshold: float
                       ) -> np.ndarray:
    """Records the Confident-GNMax selection step on every query of the batch.

    Example:
      >>> ledger.record_threshold(votes, 150.0, 100.0)
    """
    votes = self._batch(votes_batch)
    threshold = _finite("threshold", threshold)
    sigma_t = _positive("sigma_threshold", sigma_threshold)
    per_query = _threshold_rdp_from_max(votes.max(axis=1), threshold, sigma_t, self._orders,
                                        self.num_teachers)
    self._indep += votes.shape[0] * self._orders / (2.0 * sigma_t**2)
    self._dep += per_query.sum(axis=0)
    self.num_queries += votes.shape[0]
    return per_query

  def record_confident_gnmax(self, votes_batch: Any, threshold: float, sigma_threshold: float,
                             sigma: float, answered_mask: Any) -> np.ndarray:
    """record_threshold on all queries + record_gnmax on the answered ones; returns the sum.

    Example:
      >>> ledger.record_confident_gnmax(votes, 150.0, 100.0, 40.0, answered)
    """
    if answered_mask is None:
      raise ValueError("answered_mask is required for Confident-GNMax")
    per_query = self.record_threshold(votes_batch, threshold, sigma_threshold)
    return per_query + self.record_gnmax(votes_batch, sigma, answered_mask)

  def record_noisy_average(self, num_queries: int, sigma: float) -> None:
    """Records `num_queries` noisy-average (soft-vote) answers with noise std `sigma`.

    No data-dependent analysis: both totals get num_queries * lambda / sigma^2.

    Example:
      >>> ledger.record_noisy_average(100, 60.0)
    """
    if isinstance(num_queries, bool) or not isinstance(num_queries, (numbers.Integral,
                                                                     np.integer)) \
        or num_queries < 0:
      raise ValueError(f"num_queries must be a non-negative integer, got {num_queries!r}")
    rdp = int(num_queries) * noisy_average_rdp(sigma, self._orders)
    self._indep += rdp
    self._dep += rdp
    self.num_answered += int(num_queries)
    self.num_queries += int(num_queries)

  def epsilon(self, delta: float, data_dependent: bool = False) -> float:
    """Epsilon at `delta` of the data-independent (default) or data-dependent total.

    Example:
      >>> ledger.epsilon(1e-5)
    """
    return self.epsilon_and_order(delta, data_dependent)[0]

  def epsilon_and_order(self, delta: float, data_dependent: bool = False
                        ) -> tuple[float, float]:
    """(epsilon, optimal order) via dp_accounting.rdp.compute_epsilon (improved conversion).

    Example:
      >>> eps, order = ledger.epsilon_and_order(1e-5)
    """
    delta = _delta(delta)
    rdp = self._dep if data_dependent else self._indep
    eps, order = rdp_privacy_accountant.compute_epsilon(self._orders, rdp, delta)
    return float(eps), float(order)

  def would_exceed(self, target_epsilon: float, delta: float, *, num_queries: int = 1,
                   gnmax_sigma: float | None = None, threshold_sigma: float | None = None,
                   lnmax_scale: float | None = None,
                   noisy_average_sigma: float | None = None) -> bool:
    """Whether `num_queries` more queries could take the data-independent epsilon past target.

    Worst case: every query is charged every given mechanism (all answered). Records nothing.

    Args:
      target_epsilon: budget, > 0.
      delta: delta in (0, 1).
      num_queries: queries in the next batch.
      gnmax_sigma / threshold_sigma / lnmax_scale / noisy_average_sigma: the mechanisms each
        query will go through (at least one).

    Returns:
      True if the data-independent epsilon after the batch could exceed target_epsilon.

    Example:
      >>> ledger.would_exceed(2.0, 1e-5, num_queries=100, gnmax_sigma=40.0, threshold_sigma=100.0)
    """
    if not _is_real(target_epsilon) or not math.isfinite(target_epsilon) or target_epsilon <= 0:
      raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    delta = _delta(delta)
    if isinstance(num_queries, bool) or not isinstance(num_queries, (numbers.Integral,
                                                                     np.integer)) \
        or num_queries < 0:
      raise ValueError(f"num_queries must be a non-negative integer, got {num_queries!r}")
    per_query = np.zeros_like(self._orders)
    given = False
    if gnmax_sigma is not None:
      per_query += self._orders / _positive("gnmax_sigma", gnmax_sigma)**2
      given = True
    if threshold_sigma is not None:
      per_query += self._orders / (2.0 * _positive("threshold_sigma", threshold_sigma)**2)
      given = True
    if lnmax_scale is not None:
      eps = 2.0 / _positive("lnmax_scale", lnmax_scale)
      per_query += np.minimum(eps, self._orders * eps * eps / 2.0)
      given = True
    if noisy_average_sigma is not None:
      per_query += self._orders / _positive("noisy_average_sigma", noisy_average_sigma)**2
      given = True
    if not given:
      raise ValueError("give at least one of gnmax_sigma, threshold_sigma, lnmax_scale, "
                       "noisy_average_sigma")
    rdp = self._indep + int(num_queries) * per_query
    eps = rdp_privacy_accountant.compute_epsilon(self._orders, rdp, delta)[0]
    return not eps <= target_epsilon

  def summary(self, delta: float) -> dict[str, Any]:
    """Dict for logs: both epsilons (with their orders) and the query counters.

    Example:
      >>> ledger.summary(1e-5)["epsilon_data_independent"]
    """
    eps_i, order_i = self.epsilon_and_order(delta)
    eps_d, order_d = self.epsilon_and_order(delta, data_dependent=True)
    return {"delta": float(delta), "epsilon_data_independent": eps_i,
            "order_data_independent": order_i, "epsilon_data_dependent": eps_d,
            "order_data_dependent": order_d, "num_queries": self.num_queries,
            "num_answered": self.num_answered}

  def state_dict(self) -> dict[str, Any]:
    """JSON-serialisable state (orders, both totals, counters).

    Example:
      >>> PateLedger.from_state_dict(ledger.state_dict())
    """
    return {"orders": self._orders.tolist(), "num_teachers": self.num_teachers,
            "rdp_data_independent": self._indep.tolist(),
            "rdp_data_dependent": self._dep.tolist(), "num_queries": self.num_queries,
            "num_answered": self.num_answered}

  @classmethod
  def from_state_dict(cls, state: dict[str, Any]) -> "PateLedger":
    """Inverse of `state_dict` (also after a JSON round trip).

    Example:
      >>> restored = PateLedger.from_state_dict(json.loads(json.dumps(ledger.state_dict())))
    """
    ledger = cls(state["orders"], num_teachers=state["num_teachers"])
    indep = np.asarray(state["rdp_data_independent"], dtype=np.float64)
    dep = np.asarray(state["rdp_data_dependent"], dtype=np.float64)
    if indep.shape != ledger._orders.shape or dep.shape != ledger._orders.shape:
      raise ValueError("state totals do not match its orders")
    ledger._indep, ledger._dep = indep, dep
    ledger.num_queries = int(state["num_queries"])
    ledger.num_answered = int(state["num_answered"])
    return ledger


def dp_accounting_gnmax_rdp(sigma: float, num_answers: int, orders: Sequence[float]
                            ) -> np.ndarray:
  """Data-independent RDP of `num_answers` GNMax answers via dp_accounting (cross-check).

  GNMax is the Gaussian mechanism with L2 sensitivity sqrt(2): GaussianDpEvent with noise
  multiplier sigma / sqrt(2).

  Example:
    >>> dp_accounting_gnmax_rdp(40.0, 100, [2.0])   # = 100 * 2 / 40**2
    array([0.125])
  """
  acct = dp_accounting.rdp.RdpAccountant(list(orders))
  acct.compose(dp_accounting.GaussianDpEvent(_positive("sigma", sigma) / _SQRT2),
               int(num_answers))
  return acct.rdp
