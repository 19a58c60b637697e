"""projects.pate_asr.privacy: every query charged, only outputs and releases published.

References are independent of the module: hand formulas for the per-query and GNSS RDP,
dp_accounting's own Gaussian accountant, the single-query functions of libs.accounting (not
the batched ledger the module uses), and the release noise redrawn from the seed.
"""

import math

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant
import numpy as np
import pytest

from libs import accounting
from projects.pate_asr import aggregation
from projects.pate_asr import privacy

V = 5  # output domain of the toy queries
T = 40  # teachers
DELTA = 1e-5
CAP = 6
BETA, SIGMA_SS, SS_ORDER = 0.05, 10.0, 4.0

GNMAX = aggregation.AggregatorConfig("gnmax", sigma=5.0)
CONFIDENT = aggregation.AggregatorConfig("confident_gnmax", sigma=5.0, threshold=25.0, sigma_threshold=8.0)
LNMAX = aggregation.AggregatorConfig("lnmax", scale=4.0)
NOISY_AVERAGE = aggregation.AggregatorConfig("noisy_average", sigma=5.0)
PLURALITY = aggregation.AggregatorConfig("plurality")


def _analysis(**kw):
  args = dict(delta=DELTA, num_teachers=T, max_queries_per_utterance=CAP, ss_order=SS_ORDER, ss_beta=BETA,
              ss_sigma=SIGMA_SS)
  return privacy.AnalysisConfig(**{**args, **kw})


def _votes(num_queries, top, rng=None):
  """[q, V] histograms of T votes: `top` votes on class 1, the rest spread (randomly if rng)."""
  votes = np.zeros((num_queries, V), np.int32)
  votes[:, 1] = top
  rest = T - top
  if rng is None:
    votes[:, 2] = rest
  else:
    for row in votes:
      row += np.bincount(rng.choice([0, 2, 3, 4], rest), minlength=V).astype(np.int32)
  return votes


def _labels(query_counts, top=T, answered=None, rng=None):
  """Labels of utterances making `query_counts` queries each (all answered unless given)."""
  votes = [_votes(q, top, rng) for q in query_counts]
  answered = [np.ones(q, bool) for q in query_counts] if answered is None else answered
  labeled = np.array([bool(a.all()) for a in answered])
  tokens = [np.full(q - 1, 1, np.int32) if ok else np.zeros(0, np.int32)
            for q, ok in zip(query_counts, labeled)]
  return aggregation.Labels(tokens, labeled, votes, answered)


def _hand_per_query(cfg, orders):
  lam = np.asarray(orders, np.float64)
  if cfg.name in ("gnmax", "noisy_average"):
    return lam / cfg.sigma**2
  if cfg.name == "confident_gnmax":
    return lam / (2 * cfg.sigma_threshold**2) + lam / cfg.sigma**2
  eps = 2.0 / cfg.scale
  return np.minimum(eps, lam * eps**2 / 2)


def _hand_gnss(lam):
  lam = np.asarray(lam, np.float64)
  return lam * math.exp(2 * BETA) / SIGMA_SS**2 + (BETA * lam - 0.5 * np.log(1 - 2 * lam * BETA)) / (lam - 1)


def _eps(orders, rdp):
  return rdp_privacy_accountant.compute_epsilon(list(orders), list(rdp), DELTA)[0]


# -- every query is charged ----------------------------------------------------------------


@pytest.mark.parametrize("cfg", [GNMAX, CONFIDENT, LNMAX, NOISY_AVERAGE], ids=lambda c: c.name)
def test_n_queries_cost_n_times_one_query_by_hand(cfg):
  orders = [1.5, 2.0, 4.0, 10.0, 32.0]
  np.testing.assert_allclose(privacy.per_query_rdp(cfg, orders), _hand_per_query(cfg, orders), rtol=1e-12)
  np.testing.assert_allclose(privacy.data_independent_rdp(cfg, 37, orders), 37 * _hand_per_query(cfg, orders),
                             rtol=1e-12)
  np.testing.assert_array_equal(privacy.data_independent_rdp(cfg, 0, orders), 0.0)


@pytest.mark.parametrize("cfg", [LNMAX, NOISY_AVERAGE], ids=lambda c: c.name)
def test_every_utterance_is_charged_the_cap_whatever_it_made(cfg):
  short, long = _labels([1, 2, 3]), _labels([CAP, CAP, 5])
  analysis = _analysis()
  pub_short, _ = privacy.account_labels(short, cfg, analysis, target_epsilon=10.0, rng=None)
  pub_long, _ = privacy.account_labels(long, cfg, analysis, target_epsilon=10.0, rng=None)
  assert pub_short["num_queries_made"] == 6 and pub_long["num_queries_made"] == 2 * CAP + 5
  assert pub_short["num_queries_charged"] == pub_long["num_queries_charged"] == 3 * CAP
  assert pub_short["epsilon_data_independent"] == pub_long["epsilon_data_independent"]
  orders = analysis.orders
  if cfg.name == "noisy_average":
    # dp_accounting's own Gaussian mechanism: L2 sensitivity sqrt(2), 3 * CAP compositions.
    acct = dp_accounting.rdp.RdpAccountant(list(orders))
    acct.compose(dp_accounting.GaussianDpEvent(cfg.sigma / math.sqrt(2)), 3 * CAP)
    expected = acct.get_epsilon(DELTA)
  else:
    expected = _eps(orders, 3 * CAP * _hand_per_query(cfg, orders))
  assert pub_long["epsilon_data_independent"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("cfg", [GNMAX, CONFIDENT], ids=lambda c: c.name)
def test_formal_epsilon_composes_the_cap_count_with_the_release(cfg):
  labels = _labels([2, 4, 3, 1])
  analysis = _analysis()
  pub, _ = privacy.account_labels(labels, cfg, analysis, target_epsilon=10.0, rng=0)
  assert pub["num_queries_charged"] == 4 * CAP and pub["num_queries_made"] == 10
  orders = np.array(sorted({o for o in analysis.orders if o < 1 / (2 * BETA)} | {SS_ORDER}))
  expected = _eps(orders, 4 * CAP * _hand_per_query(cfg, orders) + _hand_gnss(orders))
  assert pub["epsilon_data_independent"] == pytest.approx(expected, rel=1e-9)
  assert privacy.formal_epsilon(cfg, analysis, 4) == pub["epsilon_data_independent"]


def test_confident_gnmax_charges_unanswered_threshold_checks():
  answered = [np.array([True, True, False]), np.array([True, True, True])]
  labels = _labels([3, 3], top=26, answered=answered)
  pub, priv = privacy.account_labels(labels, CONFIDENT, _analysis(), target_epsilon=10.0, rng=0)
  assert (pub["num_queries_made"], pub["num_queries_answered"], pub["num_labeled"]) == (6, 5, 1)
  # Reference: the single-query functions, threshold on all 6, GNMax on the 5 answered.
  ref = sum(float(accounting.threshold_rdp(v, CONFIDENT.threshold, CONFIDENT.sigma_threshold, SS_ORDER,
                                           num_teachers=T))
            + (float(accounting.gnmax_rdp(v, CONFIDENT.sigma, SS_ORDER)) if a else 0.0)
            for votes, ans in zip(labels.votes, answered) for v, a in zip(votes, ans))
  assert priv["data_dependent_rdp_at_ss_order"] == pytest.approx(ref, rel=1e-9)
  # Dropping the unanswered query lowers the charge: it was charged.
  fewer = _labels([2, 3], top=26)
  _, priv_fewer = privacy.account_labels(fewer, CONFIDENT, _analysis(), target_epsilon=10.0, rng=0)
  assert priv_fewer["data_dependent_rdp_at_ss_order"] < priv["data_dependent_rdp_at_ss_order"]


def test_an_utterance_over_the_cap_is_an_error():
  with pytest.raises(ValueError, match="max_queries_per_utterance"):
    privacy.account_labels(_labels([2, CAP + 1]), LNMAX, _analysis(), target_epsilon=10.0, rng=None)


# -- nothing raw is published --------------------------------------------------------------


def test_public_record_has_exactly_the_public_keys():
  for cfg in (GNMAX, CONFIDENT, LNMAX, NOISY_AVERAGE, PLURALITY):
    pub, _ = privacy.account_labels(_labels([2, 3]), cfg, _analysis(), target_epsilon=10.0, rng=1)
    assert tuple(pub) == privacy.PUBLIC_RECORD_KEYS
    assert privacy.check_public(pub) is pub
  with pytest.raises(ValueError, match="smooth_sensitivity"):
    privacy.check_public({**pub, "smooth_sensitivity": 0.3})
  with pytest.raises(ValueError, match="epsilon_data_independent"):
    privacy.check_public({k: v for k, v in pub.items() if k != "epsilon_data_independent"})


def test_changing_only_the_votes_changes_no_public_field_but_the_release():
  counts = [3, 4, 2, 5]
  unanimous = _labels(counts, top=T)
  split = _labels(counts, top=24, rng=np.random.default_rng(3))  # same answers, other histograms
  for a, b in zip(unanimous.votes, split.votes):
    assert a.shape == b.shape and not np.array_equal(a, b)
  analysis = _analysis()
  for cfg in (LNMAX, NOISY_AVERAGE):
    assert (privacy.account_labels(unanimous, cfg, analysis, target_epsilon=10.0, rng=None)
            == privacy.account_labels(split, cfg, analysis, target_epsilon=10.0, rng=None))
  pub_u, priv_u = privacy.account_labels(unanimous, GNMAX, analysis, target_epsilon=10.0, rng=7)
  pub_s, priv_s = privacy.account_labels(split, GNMAX, analysis, target_epsilon=10.0, rng=7)
  released = {"epsilon", "epsilon_kind", "within_target", "accountant"}  # functions of the release
  assert {k: v for k, v in pub_u.items() if k not in released} == {
      k: v for k, v in pub_s.items() if k not in released}
  for key in ("data_dependent_rdp_at_ss_order", "smooth_sensitivity", "local_sensitivity"):
    assert priv_u[key] != priv_s[key]
  # The released values differ only through eps_dd + SS * sigma_ss * z, with the same z (seed 7).
  z = np.random.default_rng(7).standard_normal()
  for priv in (priv_u, priv_s):
    assert priv["noisy_data_dependent_rdp"] == pytest.approx(
        priv["data_dependent_rdp_at_ss_order"] + priv["smooth_sensitivity"] * SIGMA_SS * z, rel=1e-12)
  # No raw data-dependent number appears among the public values.
  raw = {priv_s[k] for k in ("data_dependent_rdp_at_ss_order", "data_dependent_epsilon_raw",
                             "smooth_sensitivity", "noisy_data_dependent_rdp")}
  assert not raw & {v for v in pub_s.values() if isinstance(v, float)}


# -- the GNSS release ------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [GNMAX, CONFIDENT], ids=lambda c: c.name)
def test_release_uses_the_given_rng_and_pays_for_itself(cfg):
  labels = _labels([5, 5, 5, 5, 5, 5], top=T)
  analysis = _analysis()
  run = lambda rng: privacy.account_labels(labels, cfg, analysis, target_epsilon=10.0, rng=rng)
  assert run(11) == run(11)
  assert run(11)[1]["released_epsilon"] != run(12)[1]["released_epsilon"]
  gen = np.random.default_rng(5)
  first, second = run(gen)[1], run(gen)[1]
  assert first["noisy_data_dependent_rdp"] != second["noisy_data_dependent_rdp"]  # the generator advanced
  release_eps = _eps([SS_ORDER], [_hand_gnss(SS_ORDER)])
  for seed in range(6):
    pub, priv = run(seed)
    z = np.random.default_rng(seed).standard_normal()
    noisy = priv["data_dependent_rdp_at_ss_order"] + priv["smooth_sensitivity"] * SIGMA_SS * z
    expected = _eps([SS_ORDER], [max(noisy, 0.0) + _hand_gnss(SS_ORDER)])
    assert priv["released_epsilon"] == pytest.approx(expected, rel=1e-9)
    assert priv["released_epsilon"] >= release_eps - 1e-12
    assert priv["release_epsilon"] == pytest.approx(release_eps, rel=1e-9)
    assert pub["epsilon"] == min(priv["released_epsilon"], pub["epsilon_data_independent"])
    assert pub["epsilon_kind"] == ("data_dependent_released" if priv["released_epsilon"] <
                                   pub["epsilon_data_independent"] else "formal")
    assert pub["epsilon"] >= release_eps - 1e-12


def test_a_negative_noise_draw_still_publishes_the_release_cost():
  labels = _labels([5, 5, 5], top=T)  # unanimous: eps_dd ~ 0, so z < 0 makes the noisy value < 0
  seed = next(s for s in range(100) if np.random.default_rng(s).standard_normal() < -0.5)
  pub, priv = privacy.account_labels(labels, GNMAX, _analysis(), target_epsilon=10.0, rng=seed)
  assert priv["noisy_data_dependent_rdp"] < 0
  assert priv["released_epsilon"] == pytest.approx(_eps([SS_ORDER], [_hand_gnss(SS_ORDER)]), rel=1e-9)
  assert pub["epsilon_kind"] == "data_dependent_released" and pub["epsilon"] == priv["released_epsilon"]


def test_gnmax_without_rng_is_an_error():
  with pytest.raises(ValueError, match="rng"):
    privacy.account_labels(_labels([2]), GNMAX, _analysis(), target_epsilon=10.0, rng=None)


# -- what each method publishes --------------------------------------------------------------


@pytest.mark.parametrize("cfg", [LNMAX, NOISY_AVERAGE], ids=lambda c: c.name)
def test_lnmax_and_noisy_average_publish_the_formal_epsilon_only(cfg):
  pub, priv = privacy.account_labels(_labels([3, 3, 3], top=T), cfg, _analysis(), target_epsilon=10.0, rng=3)
  assert pub["epsilon_kind"] == "formal"
  assert pub["epsilon"] == pub["epsilon_data_independent"]
  assert set(priv) == {"note", "method"}  # no data-dependent analysis at all


def test_plurality_is_not_private():
  pub, _ = privacy.account_labels(_labels([3, 2]), PLURALITY, _analysis(), target_epsilon=math.inf, rng=None)
  assert pub["epsilon"] == pub["epsilon_data_independent"] == math.inf
  assert pub["epsilon_kind"] == "none" and pub["accountant"].startswith("none")
  assert pub["within_target"]
  pub, _ = privacy.account_labels(_labels([3, 2]), PLURALITY, _analysis(), target_epsilon=10.0, rng=None)
  assert not pub["within_target"]


def test_formal_bound_dominates_the_raw_data_dependent_one_and_within_target_uses_the_published():
  labels = _labels([5] * 6, top=T)
  pub, priv = privacy.account_labels(labels, GNMAX, _analysis(), target_epsilon=10.0, rng=0)
  assert pub["epsilon_data_independent"] >= priv["data_dependent_epsilon_raw"]
  assert pub["epsilon_kind"] == "data_dependent_released"
  assert pub["epsilon"] < pub["epsilon_data_independent"]
  between = (pub["epsilon"] + pub["epsilon_data_independent"]) / 2
  for target in (pub["epsilon"] / 2, pub["epsilon"], between, 2 * pub["epsilon_data_independent"]):
    rec, _ = privacy.account_labels(labels, GNMAX, _analysis(), target_epsilon=target, rng=0)
    assert rec["within_target"] == (rec["epsilon"] <= target)
    assert rec["target_epsilon"] == target
  rec, _ = privacy.account_labels(labels, GNMAX, _analysis(), target_epsilon=between, rng=0)
  assert rec["within_target"] and rec["epsilon_data_independent"] > between


# -- sizing a run and the config -------------------------------------------------------------


@pytest.mark.parametrize("cfg", [GNMAX, CONFIDENT, LNMAX, NOISY_AVERAGE], ids=lambda c: c.name)
def test_max_utterances_is_the_largest_count_within_the_target(cfg):
  analysis = _analysis()
  target = 20.0
  n = privacy.max_utterances(cfg, analysis, target)
  assert n > 0
  assert privacy.formal_epsilon(cfg, analysis, n) <= target < privacy.formal_epsilon(cfg, analysis, n + 1)
  assert privacy.max_utterances(cfg, analysis, 1e-3) == 0


@pytest.mark.parametrize("field,value", [
    ("delta", 0.0), ("delta", 1.0), ("num_teachers", 0), ("num_teachers", 2.5), ("max_queries_per_utterance", 0),
    ("orders", (1.0, 2.0)), ("ss_beta", 0.0), ("ss_sigma", -1.0), ("ss_order", 1.0), ("ss_order", 10.0)])
def test_config_rejects_bad_values(field, value):
  with pytest.raises(ValueError, match=field.split("_")[0]):
    _analysis(**{field: value})


def test_bad_target_is_an_error():
  with pytest.raises(ValueError, match="target_epsilon"):
    privacy.account_labels(_labels([2]), LNMAX, _analysis(), target_epsilon=0.0, rng=None)
