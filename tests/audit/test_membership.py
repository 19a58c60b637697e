"""Membership-inference metrics against brute force, a known-optimal attack and randomized response."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from libs.audit import membership


def test_logit_confidence_matches_float64_formula_and_is_stable_near_one():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 7, 4))
  log_probs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
  labels = rng.integers(0, 4, size=(5, 7))
  p = np.take_along_axis(np.exp(log_probs), labels[..., None], -1)[..., 0]
  np.testing.assert_allclose(membership.logit_confidence(log_probs, labels), np.log(p / (1 - p)), rtol=1e-10)
  # p_y = 1 - 1e-15: 1 - p_y underflows in float64 arithmetic, the log-sum of the others does not.
  sharp = np.log(np.array([[1 - 1e-15, 5e-16, 5e-16]]))
  sharp[0, 0] = np.log1p(-1e-15)
  assert membership.logit_confidence(sharp, np.array([0]))[0] == pytest.approx(math.log(1e15), rel=1e-6)


def _brute_roc(member, non_member):
  points = [(0.0, 0.0)]
  for t in np.unique(np.concatenate([member, non_member])):
    points.append((np.mean(non_member >= t), np.mean(member >= t)))
  return points


def test_roc_metrics_match_brute_force():
  rng = np.random.default_rng(1)
  member = np.round(rng.normal(1.0, 1.0, 300), 1)  # Rounded: ties on both sides.
  non_member = np.round(rng.normal(0.0, 1.0, 500), 1)
  out = membership.roc_metrics(member, non_member, fprs=(0.01, 0.05, 0.2))
  pairs = (member[:, None] > non_member[None]).mean() + 0.5 * (member[:, None] == non_member[None]).mean()
  assert out["auc"] == pytest.approx(pairs, rel=1e-12)
  points = _brute_roc(member, non_member)
  for f in (0.01, 0.05, 0.2):
    assert out[f"tpr_at_fpr_{f:g}"] == pytest.approx(max(t for fp, t in points if fp <= f), rel=1e-12)


def test_lira_reaches_the_optimal_auc_of_a_known_gaussian_model():
  # Confidence ~ N(2, 1) when trained on an example, N(0, 1) otherwise; each of 64 models
  # holds a random half. The best possible attack has AUC Phi(2 / sqrt(2)).
  rng = np.random.default_rng(2)
  models, examples = 64, 400
  member = rng.random((models, examples)) < 0.5
  offset = rng.normal(0, 3, examples)  # Per-example difficulty, which LiRA's per-example fit removes.
  conf = offset + 2.0 * member + rng.normal(size=(models, examples))
  optimal = scipy_stats.norm.cdf(2 / math.sqrt(2))
  aucs = {}
  for online in (True, False):
    scores = [membership.lira_scores(conf, member, t, online=online) for t in range(8)]
    ins = np.concatenate([s[member[t]] for t, s in enumerate(scores)])
    outs = np.concatenate([s[~member[t]] for t, s in enumerate(scores)])
    aucs[online] = membership.roc_metrics(ins, outs)["auc"]
  assert aucs[True] == pytest.approx(optimal, abs=0.03) and aucs[False] == pytest.approx(optimal, abs=0.03)
  # The loss-style global threshold cannot remove the per-example offsets.
  loss_auc = membership.roc_metrics(conf[0][member[0]], conf[0][~member[0]])["auc"]
  assert loss_auc < optimal - 0.1


def test_dp_bound_is_tight_for_randomized_response():
  for eps in (0.5, 2.0):
    p = math.exp(eps) / (1 + math.exp(eps))
    assert membership.dp_tpr_bound(1 - p, eps, 0.0) == pytest.approx(p, rel=1e-12)
  fpr = np.linspace(0, 1, 11)
  np.testing.assert_allclose(membership.dp_tpr_bound(fpr, 0.0, 0.0), fpr, atol=1e-12)
  assert (membership.dp_tpr_bound(fpr, 1.0, 1e-5) >= fpr).all()
  assert (membership.dp_tpr_bound(fpr, math.inf, 0.0) == 1).all()


def test_profile_bound_of_the_gaussian_mechanism_is_its_trade_off_curve():
  # Gaussian mechanism with sensitivity 1 and noise 1/mu: delta(eps) in closed form (Balle and
  # Wang 2018), and the best test's TPR at FPR f is Phi(Phi^-1(f) + mu) (Dong, Roth and Su).
  mu = 1.5
  eps = np.linspace(0, 12, 4000)
  norm = scipy_stats.norm
  delta = norm.cdf(-eps / mu + mu / 2) - np.exp(eps) * norm.cdf(-eps / mu - mu / 2)
  for f in (0.001, 0.01, 0.1):
    exact = norm.cdf(norm.ppf(f) + mu)
    got = float(membership.profile_tpr_bound(f, eps, delta))
    assert exact - 1e-9 <= got <= exact + 2e-3, (f, got, exact)
    # Any single pair of the profile is a looser bound.
    assert got <= float(membership.dp_tpr_bound(f, eps[1000], delta[1000])) + 1e-12


def test_bad_input_raises():
  with pytest.raises(ValueError, match="at least one"):
    membership.roc_metrics([], [1.0])
  with pytest.raises(ValueError, match="shadow model trained with"):
    membership.lira_scores(np.zeros((3, 2)), np.array([[1, 0], [0, 0], [0, 0]], bool), 0)
  with pytest.raises(ValueError, match="epsilon"):
    membership.dp_tpr_bound(0.1, -1.0, 0.0)
