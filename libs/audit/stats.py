"""Statistics of privacy audits: Clopper-Pearson bounds and empirical epsilon lower bounds.

A membership test that tells "trained with the canary" from "trained without it" with
false-positive rate FPR and false-negative rate FNR is impossible against an (epsilon,
delta)-DP mechanism unless both

    FPR + e^epsilon FNR >= 1 - delta   and   FNR + e^epsilon FPR >= 1 - delta

(Kairouz et al. 2015; the auditing recipe of Jagielski et al. 2020 and Nasr et al. 2021).
Measured rates are estimates, so an audit plugs in Clopper-Pearson UPPER bounds of both
rates: the resulting epsilon is a lower bound on the mechanism's true epsilon with the stated
confidence. It is evidence against a claimed epsilon only when it exceeds it.

The threshold of the test is chosen on one half of the trials and the bound computed on the
other half: choosing it on the same trials would overfit and overstate the bound.

Example:
  >>> low, high = clopper_pearson(3, 1000, alpha=0.05)
  >>> result = audit_epsilon(member_scores, non_member_scores, delta=1e-5, rng=np.random.default_rng(0))
  >>> result.epsilon_lower
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats


def _check_counts(successes, trials) -> tuple[int, int]:
  if isinstance(successes, bool) or isinstance(trials, bool):
    raise ValueError("successes and trials must be integers, not bools")
  k, n = int(successes), int(trials)
  if k != successes or n != trials or n < 1 or not 0 <= k <= n:
    raise ValueError(f"need integers 0 <= successes <= trials and trials >= 1, got {successes}, {trials}")
  return k, n


def _check_alpha(alpha) -> float:
  if not 0 < alpha < 1:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}")
  return float(alpha)


def clopper_pearson(successes: int, trials: int, alpha: float = 0.05) -> tuple[float, float]:
  """The exact two-sided (1 - alpha) confidence interval of a binomial proportion."""
  k, n = _check_counts(successes, trials)
  alpha = _check_alpha(alpha)
  low = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
  high = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
  return low, high


def clopper_pearson_upper(successes: int, trials: int, alpha: float = 0.05) -> float:
  """The exact one-sided (1 - alpha) upper confidence bound of a binomial proportion."""
  k, n = _check_counts(successes, trials)
  alpha = _check_alpha(alpha)
  return 1.0 if k == n else float(stats.beta.ppf(1 - alpha, k + 1, n - k))


def epsilon_from_rates(fpr: float, fnr: float, delta: float) -> float:
  """The smallest epsilon that (epsilon, delta)-DP allows for a test with these error rates (>= 0)."""
  if not 0 <= delta < 1:
    raise ValueError(f"delta must be in [0, 1), got {delta}")
  best = 0.0
  for a, b in ((fpr, fnr), (fnr, fpr)):  # a + e^eps b >= 1 - delta  ->  eps >= log((1 - delta - a) / b)
    if 1 - delta - a > 0:
      best = max(best, math.inf if b <= 0 else math.log((1 - delta - a) / b))
  return best


def epsilon_lower_bound(false_positives: int, negatives: int, false_negatives: int, positives: int,
                        delta: float, alpha: float = 0.05) -> float:
  """Epsilon lower bound, holding with probability >= 1 - alpha, from a test's error counts.

  Both rates are replaced by their one-sided Clopper-Pearson upper bounds at alpha / 2 each
  (a union bound), so the result never exceeds the mechanism's true epsilon except with
  probability alpha.
  """
  fpr = clopper_pearson_upper(false_positives, negatives, alpha / 2)
  fnr = clopper_pearson_upper(false_negatives, positives, alpha / 2)
  return epsilon_from_rates(fpr, fnr, delta)


@dataclasses.dataclass(frozen=True)
class AuditResult:
  """One audit's outcome (on the evaluation half of the trials).

  Attributes:
    epsilon_lower: the (1 - alpha)-confidence lower bound on epsilon.
    threshold: the test "score > threshold means the canary was in", chosen on the other half.
    fpr, fnr: the measured error rates at that threshold (point estimates).
    positives, negatives: evaluation trials with and without the canary.
    alpha, delta: the confidence parameter and the delta of the bound.
    statistic: which of the given statistics the test uses.
  """
  epsilon_lower: float
  threshold: float
  fpr: float
  fnr: float
  positives: int
  negatives: int
  alpha: float
  delta: float
  statistic: int = 0

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def _errors(member, non_member, threshold):
  return int(np.sum(non_member > threshold)), int(np.sum(member <= threshold))


def _as_statistics(scores, name: str) -> np.ndarray:
  x = np.asarray(scores, np.float64)
  x = x[None] if x.ndim == 1 else x
  if x.ndim != 2 or x.shape[1] < 4:
    raise ValueError(f"{name} must be [runs] or [statistics, runs] with at least 4 runs, got shape {x.shape}")
  if not np.isfinite(x).all():
    raise ValueError(f"{name} must be finite")
  return x


def audit_epsilon(member_scores, non_member_scores, *, delta: float, alpha: float = 0.05,
                  rng: np.random.Generator, max_thresholds: int = 256) -> AuditResult:
  """The epsilon lower bound of the best threshold test on membership scores.

  Args:
    member_scores: [runs] or [statistics, runs]: test scores of runs trained WITH the canary
      (higher: more member-like); several statistics of the same runs may be given, and the
      best (statistic, threshold) pair is chosen on the selection half.
    non_member_scores: the same for runs trained without it.
    delta: the delta of the claimed guarantee.
    alpha: the bound holds with probability >= 1 - alpha.
    rng: splits the runs into the selection half and the evaluation half.
    max_thresholds: candidate thresholds per statistic (quantiles of the selection half).

  Returns:
    AuditResult on the evaluation half (`statistic`: the index of the chosen statistic).
  """
  member = _as_statistics(member_scores, "member_scores")
  non_member = _as_statistics(non_member_scores, "non_member_scores")
  if member.shape[0] != non_member.shape[0]:
    raise ValueError(f"both sides need the same statistics, got {member.shape[0]} and {non_member.shape[0]}")
  member = member[:, rng.permutation(member.shape[1])]
  non_member = non_member[:, rng.permutation(non_member.shape[1])]
  m_sel, m_eval = np.array_split(member, 2, axis=1)
  n_sel, n_eval = np.array_split(non_member, 2, axis=1)
  best, choice = -1.0, (0, -np.inf)
  for i in range(member.shape[0]):
    pooled = np.concatenate([m_sel[i], n_sel[i]])
    for t in np.unique(np.quantile(pooled, np.linspace(0, 1, max_thresholds))):
      fp, fn = _errors(m_sel[i], n_sel[i], t)
      eps = epsilon_lower_bound(fp, n_sel.shape[1], fn, m_sel.shape[1], delta, alpha)
      if eps > best:
        best, choice = eps, (i, float(t))
  i, threshold = choice
  fp, fn = _errors(m_eval[i], n_eval[i], threshold)
  positives, negatives = m_eval.shape[1], n_eval.shape[1]
  return AuditResult(epsilon_lower_bound(fp, negatives, fn, positives, delta, alpha), threshold,
                     fp / negatives, fn / positives, positives, negatives, alpha, delta, i)
