"""Per-query Renyi DP of the PATE aggregators: GNMax, LNMax, Confident-GNMax selection, soft votes.

Host side, NumPy float64. Neighbouring datasets differ in one training example, hence in the
vote of at most one teacher (teachers see disjoint partitions): one vote moves between
classes (or to/from an abstention), so each count changes by at most 1, the histogram by at
most 2 in L1 and sqrt(2) in L2, and max(votes) by at most 1.

Every function returns min(data-independent, data-dependent) bounds at an array of orders;
see `libs.accounting.pate` for what each kind of bound guarantees and what may be published.
The private `*_from_log_q` / `*_from_max` kernels are vectorised over queries and shared with
`pate_ledger` and `smooth_sensitivity`.

Example:
  >>> gnmax_rdp(np.array([240, 5, 5, 0]), sigma=40.0, orders=[10.0, 20.0])
  >>> threshold_rdp(np.array([240, 10]), 150.0, 100.0, [10.0], num_teachers=250)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import dp_accounting
import numpy as np
from scipy import special

from libs.accounting import _checks

# Integers cover the usual PATE optimum (lambda ~ 5-60 for sigma ~ 40-200 and 10^2-10^4
# answers); fractional orders near 1 serve small budgets; large orders, tiny deltas.
DEFAULT_ORDERS: tuple[float, ...] = tuple(
    [1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5]
    + [float(a) for a in range(5, 65)]
    + [80.0, 96.0, 128.0, 192.0, 256.0, 384.0, 512.0, 768.0, 1024.0])

_LOG2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)


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
  votes = _checks.check_votes(votes, 1, "votes")
  return float(_gnmax_log_q(votes[None], _checks.check_positive("sigma", sigma))[0])


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
  votes = _checks.check_votes(votes, 1, "votes")
  sigma = _checks.check_positive("sigma", sigma)
  orders = _checks.check_orders_array(orders)
  out = _gnmax_rdp_from_log_q(_gnmax_log_q(votes[None], sigma), sigma, np.atleast_1d(orders))
  return out[0].reshape(orders.shape)


def gnmax_rdp_batch(votes_batch: Any, sigma: float, orders: Any) -> np.ndarray:
  """`gnmax_rdp` for each row of a [Q, C] batch; returns [Q, L] (vectorised).

  Example:
    >>> gnmax_rdp_batch(np.array([[250, 0], [125, 125]]), 40.0, DEFAULT_ORDERS).shape
    (2, 79)
  """
  votes = _checks.check_votes(votes_batch, 2, "votes_batch")
  sigma = _checks.check_positive("sigma", sigma)
  orders = np.atleast_1d(_checks.check_orders_array(orders))
  return _gnmax_rdp_from_log_q(_gnmax_log_q(votes, sigma), sigma, orders)


# -- LNMax ---------------------------------------------------------------------------------


def lnmax_pure_epsilon(scale: float) -> float:
  """Pure DP epsilon of one LNMax answer with Laplace(scale) noise: 2 / scale.

  (The count vector has L1 sensitivity 2; argmax is post-processing.)

  Example:
    >>> lnmax_pure_epsilon(20.0)
    0.1
  """
  return 2.0 / _checks.check_positive("scale", scale)


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
  votes = _checks.check_votes(votes, 1, "votes")
  return float(_lnmax_log_q(votes[None], _checks.check_positive("scale", scale))[0])


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
  votes = _checks.check_votes(votes, 1, "votes")
  scale = _checks.check_positive("scale", scale)
  orders = _checks.check_orders_array(orders)
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
  votes = _checks.check_votes(votes, 1, "votes")
  threshold = _checks.check_finite("threshold", threshold)
  sigma_t = _checks.check_positive("sigma_threshold", sigma_threshold)
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
  votes = _checks.check_votes(votes, 1, "votes")
  threshold = _checks.check_finite("threshold", threshold)
  sigma_t = _checks.check_positive("sigma_threshold", sigma_threshold)
  orders = _checks.check_orders_array(orders)
  if num_teachers is not None:
    num_teachers = _checks.check_num_teachers(num_teachers, votes)
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
  sigma = _checks.check_positive("sigma", sigma)
  orders = _checks.check_orders_array(orders)
  return orders / sigma**2


# -- cross-check ---------------------------------------------------------------------------


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
  acct.compose(dp_accounting.GaussianDpEvent(_checks.check_positive("sigma", sigma) / _SQRT2),
               int(num_answers))
  return acct.rdp
