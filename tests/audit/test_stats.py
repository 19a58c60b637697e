"""Audit statistics against scipy's binomial test and a mechanism with a known epsilon."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from libs.audit import stats


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (7, 1000), (500, 1000)])
def test_clopper_pearson_matches_scipy_binomtest(k, n):
  ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.9, method="exact")
  low, high = stats.clopper_pearson(k, n, alpha=0.1)
  assert low == pytest.approx(ci.low, abs=1e-9) and high == pytest.approx(ci.high, abs=1e-9)


@pytest.mark.parametrize("k,n", [(0, 50), (4, 50), (49, 50)])
def test_upper_bound_is_where_the_binomial_tail_equals_alpha(k, n):
  upper = stats.clopper_pearson_upper(k, n, alpha=0.05)
  assert scipy_stats.binom.cdf(k, n, upper) == pytest.approx(0.05, rel=1e-6)
  assert stats.clopper_pearson_upper(n, n) == 1.0


def _rr_p(epsilon):
  return math.exp(epsilon) / (1 + math.exp(epsilon))  # Randomized response: exactly epsilon-DP.


def test_epsilon_from_rates_recovers_randomized_response():
  for eps in (0.5, 1.0, 3.0):
    p = _rr_p(eps)
    assert stats.epsilon_from_rates(1 - p, 1 - p, 0.0) == pytest.approx(eps, rel=1e-12)
  assert stats.epsilon_from_rates(0.5, 0.5, 0.0) == 0.0  # A coin flip proves nothing.
  assert stats.epsilon_from_rates(0.0, 0.3, 1e-5) == math.inf
  assert stats.epsilon_from_rates(0.3, 0.0, 0.0) == math.inf


def test_lower_bound_covers_the_true_epsilon():
  # 300 audits of randomized response at epsilon 1: the 95% lower bound may exceed the true
  # epsilon in at most ~5% of them (Clopper-Pearson is conservative: fewer).
  rng, eps, n = np.random.default_rng(0), 1.0, 400
  p = _rr_p(eps)
  over = 0
  for _ in range(300):
    fp, fn = rng.binomial(n, 1 - p), rng.binomial(n, 1 - p)
    over += stats.epsilon_lower_bound(fp, n, fn, n, 0.0, alpha=0.05) > eps
  assert over <= 0.05 * 300


def test_audit_epsilon_on_randomized_response_is_below_and_near_the_truth():
  rng, eps, n = np.random.default_rng(1), 2.0, 20000
  p = _rr_p(eps)
  member = rng.random(n) < p  # Outputs 1 with probability p when the record is in.
  non_member = rng.random(n) < 1 - p
  noise = rng.normal(size=(2, n))  # A second, useless statistic: must not be chosen.
  result = stats.audit_epsilon(np.stack([member, noise[0]]), np.stack([non_member, noise[1]]), delta=0.0,
                               rng=np.random.default_rng(0))
  assert result.statistic == 0 and result.positives == result.negatives == n // 2
  assert 0.8 * eps < result.epsilon_lower <= eps


def test_bad_input_raises():
  with pytest.raises(ValueError, match="successes"):
    stats.clopper_pearson(11, 10)
  with pytest.raises(ValueError, match="alpha"):
    stats.clopper_pearson(1, 10, alpha=1.5)
  with pytest.raises(ValueError, match="at least 4"):
    stats.audit_epsilon([1, 2], [0, 1], delta=1e-5, rng=np.random.default_rng(0))
  with pytest.raises(ValueError, match="finite"):
    stats.audit_epsilon([1, 2, np.nan, 3], [0, 1, 2, 3], delta=1e-5, rng=np.random.default_rng(0))
