"""Smooth sensitivity of the data-dependent PATE cost and its GNSS release (Papernot et al. 2018).

The data-dependent RDP of GNMax and of the Confident-GNMax selection is a function of the
private vote histograms. To publish it, Papernot et al. 2018 (Sec. 4, App. C) add Gaussian
noise scaled by a beta-smooth upper bound on its local sensitivity:

  1. `gnmax_local_sensitivity` / `threshold_local_sensitivity` / `total_local_sensitivity`:
     admissible bounds LS_d on the local sensitivity at distance d (one changed example
     moves one vote per query).
  2. `smooth_sensitivity`: SS_beta = max_d exp(-beta d) LS_d.
  3. `release_data_dependent_epsilon`: eps_dd + SS_beta N(0, sigma_ss^2), whose release costs
     `gnss_rdp(beta, sigma_ss, order)`, a formal data-independent RDP.

Example:
  >>> ls = total_local_sensitivity(votes, 250, 20.0, sigma=40.0, answered_mask=answered,
  ...                              threshold=150.0, sigma_threshold=100.0)
  >>> released = release_data_dependent_epsilon(ledger_dd_rdp_at_20, smooth_sensitivity(ls, 0.02),
  ...                                           0.02, 8.0, 20.0, 1e-5, rng=np.random.default_rng())
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

from dp_accounting.rdp import rdp_privacy_accountant
import numpy as np
from scipy import special

from libs.accounting import _checks
from libs.accounting.pate_rdp import _gnmax_rdp_from_log_q
from libs.accounting.pate_rdp import _log_union
from libs.accounting.pate_rdp import _SQRT2
from libs.accounting.pate_rdp import _threshold_rdp_from_max


# -- local and smooth sensitivity ------------------------------------------------------------


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
  votes = _checks.check_votes(votes, 1, "votes")
  num_teachers = _checks.check_num_teachers(num_teachers, votes)
  sigma = _checks.check_positive("sigma", sigma)
  order = float(_checks.check_orders_array(order).reshape(()))
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
  votes = _checks.check_votes(votes, 1, "votes")
  num_teachers = _checks.check_num_teachers(num_teachers, votes)
  if not np.allclose(votes, np.rint(votes)):
    raise ValueError("votes must be integer counts for threshold_local_sensitivity")
  threshold = _checks.check_finite("threshold", threshold)
  sigma_t = _checks.check_positive("sigma_threshold", sigma_threshold)
  order = float(_checks.check_orders_array(order).reshape(()))
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
  beta = _checks.check_positive("beta", beta)
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
  votes = _checks.check_votes(votes_batch, 2, "votes_batch")
  num_teachers = _checks.check_num_teachers(num_teachers, votes, "votes_batch")
  order = float(_checks.check_orders_array(order).reshape(()))
  total = np.zeros(num_teachers)
  if sigma is not None:
    mask = _checks.check_answered_mask(answered_mask, votes.shape[0])
    if mask.any():
      total += _gnmax_ls_batch(votes[mask], num_teachers, _checks.check_positive("sigma", sigma),
                               order).sum(axis=0)
  if (threshold is None) != (sigma_threshold is None):
    raise ValueError("threshold and sigma_threshold must be given together")
  if threshold is not None:
    if not np.allclose(votes, np.rint(votes)):
      raise ValueError("votes_batch must be integer counts for the threshold sensitivity")
    threshold = _checks.check_finite("threshold", threshold)
    sigma_t = _checks.check_positive("sigma_threshold", sigma_threshold)
    total += _threshold_ls(votes.max(axis=1), num_teachers, threshold, sigma_t, order).sum(axis=0)
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
  beta = _checks.check_positive("beta", beta)
  sigma_ss = _checks.check_positive("sigma_ss", sigma_ss)
  orders = _checks.check_orders_array(orders)
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
    3. Release eps~ = eps_dd + SS * N(0, sigma_ss^2) (this function draws the noise); the
       published total is max(eps~, 0) + release_rdp, never below the release's own cost.
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
  eps_dd = _checks.check_finite("data_dependent_rdp", data_dependent_rdp)
  if eps_dd < 0:
    raise ValueError(f"data_dependent_rdp must be >= 0, got {data_dependent_rdp!r}")
  ss = _checks.check_finite("smooth_sens", smooth_sens)
  if ss < 0:
    raise ValueError(f"smooth_sens must be >= 0, got {smooth_sens!r}")
  delta = _checks.check_delta(delta)
  order = float(_checks.check_orders_array(order).reshape(()))
  release = float(gnss_rdp(beta, sigma_ss, order))
  if _checks.is_int(rng):
    rng = np.random.default_rng(int(rng))
  if not isinstance(rng, np.random.Generator):
    raise ValueError(f"rng must be a numpy Generator or an int seed, got {rng!r}")
  noisy = eps_dd + ss * float(sigma_ss) * float(rng.standard_normal())
  # The true cost is >= 0: clipping the noisy value there is post-processing, and keeps the
  # published total at least the release's own (formal) cost.
  total = max(noisy, 0.0) + release
  return ReleasedEpsilon(order=order, delta=delta, noisy_data_dependent_rdp=noisy,
                         release_rdp=release, noisy_total_rdp=total,
                         noisy_epsilon=_epsilon_at_order(order, total, delta),
                         release_epsilon=_epsilon_at_order(order, release, delta))
