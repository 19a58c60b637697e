"""The sequence-model helpers of libs.audit.membership: the logit-scaled confidence of a whole
output from its log-probability, and the balanced split of Carlini et al.'s protocol."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from libs.audit import membership


def test_sequence_logit_confidence_matches_the_direct_formula_and_stays_finite_near_one():
  log_p = -np.array([30.0, 5.0, 1.0, 0.1, 1e-3])
  p = np.exp(log_p)
  np.testing.assert_allclose(membership.sequence_logit_confidence(log_p), np.log(p / (1 - p)), rtol=1e-12)
  # log p = -1e-12: 1 - p = 1e-12 (to 1e-24), so the logit is log(1 / 1e-12) - 1e-12, lost by the direct formula.
  assert membership.sequence_logit_confidence(np.array([-1e-12]))[0] == pytest.approx(12 * math.log(10), rel=1e-9)
  # A loss that rounded to 0 (or below): the largest finite confidence, not inf or NaN.
  top = membership.sequence_logit_confidence(np.array([0.0, 1e-7]))
  assert np.all(np.isfinite(top)) and top[0] == top[1] > 700
  # Monotone: a smaller loss is always more member-like.
  grid = -np.logspace(-12, 3, 400)
  assert np.all(np.diff(membership.sequence_logit_confidence(grid)) < 0)


def test_balanced_membership_puts_every_example_in_half_of_the_models_uniformly():
  rng = np.random.default_rng(0)
  member = membership.balanced_membership(8, 4000, rng)
  assert member.shape == (8, 4000) and member.dtype == bool
  assert np.all(member.sum(0) == 4)
  # Each example's half is a uniform 4-subset of 8: every model holds it with probability 1/2 and
  # every pair of models holds it together with probability (4 * 3) / (8 * 7).
  assert scipy_stats.binomtest(int(member[0].sum()), 4000, 0.5).pvalue > 1e-3
  pairs = (member[0] & member[1]).sum()
  assert scipy_stats.binomtest(int(pairs), 4000, 12 / 56).pvalue > 1e-3
  assert not np.array_equal(member, membership.balanced_membership(8, 4000, np.random.default_rng(1)))
  with pytest.raises(ValueError, match="even"):
    membership.balanced_membership(5, 10, rng)
