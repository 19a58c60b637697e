"""Tests for libs.accounting.dpsgd and libs.accounting.ledger (DP-SGD accounting, budget ledger).

Expected epsilons come from outside the code under test: numbers published by TF-Privacy
(computed by its own RDP accountant of 2019-2020, before dp_accounting existed), a PLD number
published in TF-Privacy's tests, dp_accounting's PLD accountant driven directly, and an
integer-order RDP computed here from the closed form.
"""

import json
import math

import dp_accounting
import numpy as np
import pytest
from scipy import special

from libs.accounting import dpsgd
from libs.accounting import ledger as ledger_lib
from libs.accounting import calibrate_noise_multiplier
from libs.accounting import dpsgd_epsilon
from libs.accounting import epsilon_of_event
from libs.accounting import poisson_gaussian_event
from libs.accounting import PrivacyBudgetExceeded
from libs.accounting import PrivacyLedger

DELTA = 1e-5
# TF-Privacy MNIST setting of its compute_dp_sgd_privacy_test (Test0): n = 60000, batch 150
# (q = 0.0025), sigma = 1.3, 15 epochs.
MNIST = dict(noise_multiplier=1.3, sampling_probability=150 / 60000, steps=15 * 60000 // 150)
# The order grid of TF-Privacy's compute_dp_sgd_privacy, which produced the published numbers
# below (ours, DEFAULT_RDP_ORDERS, differs: 1.1..10.9 in steps of 0.1, no 1.25 / 1.75 / 2.25).
TF_PRIVACY_ORDERS = ([1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5] + list(range(5, 64))
                     + [128, 256, 512])
INTEGER_ORDERS = list(range(2, 64)) + [128, 256, 512, 1024]  # the integers in DEFAULT_RDP_ORDERS


def _integer_order_rdp(sigma, q, steps, order):
  """RDP at integer `order` of `steps` Poisson-sampled Gaussian steps, own float64 code.

  Mironov, Talwar, Zhang 2019 (arXiv:1908.10530), Sec. 3.3: for integer alpha,
  A_alpha = sum_k C(alpha, k) (1 - q)^(alpha - k) q^k exp((k^2 - k) / (2 sigma^2)), and one
  step is (alpha, log(A_alpha) / (alpha - 1))-RDP; RDP adds up over steps. Summed in log
  space (gammaln / logsumexp) so that alpha up to 1024 neither overflows nor cancels.
  """
  k = np.arange(order + 1)
  log_terms = (special.gammaln(order + 1) - special.gammaln(k + 1)
               - special.gammaln(order - k + 1) + (order - k) * math.log1p(-q)
               + k * math.log(q) + (k * k - k) / (2 * sigma**2))
  return steps * special.logsumexp(log_terms) / (order - 1)


def _rdp_to_epsilon(rdp, order, delta):
  """(order, rdp)-RDP implies (eps, delta)-DP, Balle et al. 2020 (arXiv:1905.09982) Thm. 21,
  = Canonne, Kamath, Steinke 2020 (arXiv:2004.00010) Prop. 12, the conversion dp_accounting
  uses: eps = rdp + log((order - 1) / order) - (log(delta) + log(order)) / (order - 1)."""
  return rdp + math.log((order - 1) / order) - (math.log(delta) + math.log(order)) / (order - 1)


def _independent_integer_order_epsilon(sigma, q, steps, delta, orders=INTEGER_ORDERS):
  return min(_rdp_to_epsilon(_integer_order_rdp(sigma, q, steps, a), a, delta) for a in orders)


def _basic_conversion_epsilon(sigma, q, steps, delta, orders):
  """Epsilon with the pre-2020 conversion eps = rdp - log(delta) / (order - 1) (Mironov 2017,
  Prop. 3) that TF-Privacy's published numbers of 2019-2020 used, from the library's RDP.

  The library only converts with Balle et al.'s bound; at a single order that conversion is a
  known bijection (_rdp_to_epsilon), so the library's epsilon at [order] gives back its RDP.
  """
  best = math.inf
  for a in orders:
    eps_a = dpsgd_epsilon(sigma, q, steps, delta, orders=[a])
    rdp = eps_a - _rdp_to_epsilon(0.0, a, delta)
    best = min(best, rdp - math.log(delta) / (a - 1))
  return best


# -- published values and independent references ----------------------------------------------


def test_rdp_matches_tf_privacy_published_mnist_tutorial_epsilon():
  # tensorflow/privacy tutorials/README.md (commit d435fcb, 2019-02-06): "compute_dp_sgd_privacy.py
  # --N=60000 --batch_size=256 --noise_multiplier=1.1 --epochs=60 --delta=1e-5 [...] satisfies
  # differential privacy with eps = 3.01 and delta = 1e-05." That script (privacy/analysis/
  # compute_dp_sgd_privacy.py) takes q = 256 / 60000, steps = ceil(60 * 60000 / 256) = 14063,
  # TF_PRIVACY_ORDERS, the basic conversion of its rdp_accountant at the time, and prints
  # '{:.3g}': the published 3.01 means [3.005, 3.015). The optimum is the integer order 9, so
  # the grid difference does not matter for the basic conversion; Balle et al.'s conversion,
  # which the library uses, must come out lower.
  q, steps = 256 / 60000, math.ceil(60 * 60000 / 256)
  assert steps == 14063
  basic = _basic_conversion_epsilon(1.1, q, steps, DELTA, TF_PRIVACY_ORDERS)
  assert 3.005 <= basic < 3.015
  improved = dpsgd_epsilon(1.1, q, steps, DELTA, orders=TF_PRIVACY_ORDERS)
  assert improved < 3.005 and improved < basic
  assert improved == pytest.approx(
      _independent_integer_order_epsilon(1.1, q, steps, DELTA), rel=0.01)


@pytest.mark.parametrize("sigma,epochs,published", [
    (1.1, 1, 1.03), (1.1, 2, 1.11), (1.1, 60, 3.01), (1.3, 15, 1.19), (0.7, 45, 7.10)])
def test_rdp_matches_tf_privacy_mnist_tutorial_table(sigma, epochs, published):
  # Same README (commit d435fcb): "Expected Output" (sigma 1.1 after 1, 2, 60 epochs) and the
  # "Select Parameters" table, printed by tutorials/mnist_dpsgd_tutorial.py's compute_epsilon
  # of that commit: batch 256 of 60000, steps = epochs * (60000 // 256), orders 1.1..10.9 in
  # steps of 0.1 plus 12..63, basic conversion, '%.2f' (so +-0.005). The optima include the
  # fractional orders 8.8 and 3.9, so this also checks the library's fractional-order RDP.
  orders = [1 + x / 10 for x in range(1, 100)] + list(range(12, 64))
  basic = _basic_conversion_epsilon(sigma, 256 / 60000, epochs * (60000 // 256), DELTA, orders)
  assert abs(basic - published) <= 0.005


def test_rdp_matches_tf_privacy_published_test_values():
  # tensorflow_privacy/privacy/analysis/compute_dp_sgd_privacy_test.py, case 'Test0'
  # (60000, 150, 1.3, 15 epochs, 1e-5): 0.941870567 at order 19 with the basic conversion
  # (before commit be8175b), 0.7242234026109595 at order 19 with Balle et al.'s conversion
  # (be8175b, 2020-12-30, "Improved conversion from Renyi DP to approx DP"); 'Test1'
  # (100000, 100, 1.0, 30 epochs, 1e-7): 1.70928734 / 1.4154988495444842 at order 13.
  # TF-Privacy asserts them with assertAlmostEqual (7 decimals) and its grid; the optima are
  # integer orders, in our default grid too, so abs=1e-7 holds for both grids.
  cases = [(MNIST["noise_multiplier"], MNIST["sampling_probability"], MNIST["steps"], 1e-5,
            0.941870567, 0.7242234026109595),
           (1.0, 100 / 100000, 30 * 100000 // 100, 1e-7, 1.70928734, 1.4154988495444842)]
  for sigma, q, steps, delta, published_basic, published in cases:
    assert _basic_conversion_epsilon(sigma, q, steps, delta, TF_PRIVACY_ORDERS) == \
        pytest.approx(published_basic, abs=1e-7)
    assert dpsgd_epsilon(sigma, q, steps, delta, orders=TF_PRIVACY_ORDERS) == \
        pytest.approx(published, abs=1e-7)
    assert dpsgd_epsilon(sigma, q, steps, delta) == pytest.approx(published, abs=1e-7)


def test_mnist_rdp_matches_independent_integer_order_reference():
  # Our orders include the integers of INTEGER_ORDERS plus fractional ones: with the integers
  # alone the library must reproduce the closed form to round-off; with all of them it can
  # only be lower, and here the optimum (order 19) is an integer, so equal.
  eps_int = _independent_integer_order_epsilon(1.3, 150 / 60000, 6000, DELTA)
  assert dpsgd_epsilon(**MNIST, delta=DELTA, orders=INTEGER_ORDERS) == \
      pytest.approx(eps_int, rel=1e-12)
  eps = dpsgd_epsilon(**MNIST, delta=DELTA)
  assert eps <= eps_int * (1 + 1e-12)
  assert eps == pytest.approx(eps_int, rel=1e-12)


def test_pld_matches_tf_privacy_published_value():
  # tensorflow_privacy/privacy/analysis/compute_dp_sgd_privacy_test.py (commit 93376c9,
  # 2023-12-04), 'no_microbatching_with_subsampling_pld' / '_rdp': 1.2 epochs, sigma 0.7,
  # q = 0.01 (ceil(1.2 / 0.01) = 120 steps), delta 1e-5 -> PLD 2.4612381, RDP 3.2392676, with
  # dp_accounting's default PLD discretisation (1e-4, ours too) and default RDP orders (ours).
  # Published to 7 decimals (assertAlmostEqual): abs=1e-7 is one unit in the last place.
  steps = math.ceil(1.2 / 0.01)
  assert steps == 120
  eps_pld = dpsgd_epsilon(0.7, 0.01, steps, 1e-5, accountant="pld")
  eps_rdp = dpsgd_epsilon(0.7, 0.01, steps, 1e-5)
  assert eps_pld == pytest.approx(2.4612381, abs=1e-7)
  assert eps_rdp == pytest.approx(3.2392676, abs=1e-7)
  assert eps_pld < eps_rdp


def test_mnist_pld_matches_dp_accounting_directly_and_is_tighter_than_rdp():
  # dp_accounting's PLD accountant on the same event, built here rather than by libs.accounting.
  acct = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
  acct.compose(dp_accounting.PoissonSampledDpEvent(150 / 60000, dp_accounting.GaussianDpEvent(1.3)),
               6000)
  eps = dpsgd_epsilon(**MNIST, delta=DELTA, accountant="pld")
  assert eps == pytest.approx(acct.get_epsilon(DELTA), rel=1e-12)
  # PLD is tighter than RDP (here by ~12%), and both are upper bounds on the same guarantee.
  eps_rdp = dpsgd_epsilon(**MNIST, delta=DELTA)
  assert eps < eps_rdp


def test_full_batch_gaussian_matches_closed_form_rdp():
  # q = 1: steps Gaussian queries = one Gaussian with sigma / sqrt(steps); RDP a / (2 s^2).
  sigma, steps = 2.0, 10
  orders = [1.5, 2.0, 4.0, 8.0, 16.0, 32.0]
  eps = dpsgd_epsilon(sigma, 1.0, steps, DELTA, orders=orders)
  expected = min(steps * a / (2 * sigma**2) + math.log1p(-1 / a) - math.log(DELTA * a) / (a - 1)
                 for a in orders)
  assert eps == pytest.approx(expected, rel=1e-12)


# -- calibration ---------------------------------------------------------------------------


@pytest.mark.parametrize("target,q,steps", [(1.0, 0.01, 1000), (3.0, 0.004, 5000),
                                            (8.0, 1.0, 20)])
def test_calibrate_round_trip_rdp(target, q, steps):
  sigma = calibrate_noise_multiplier(target, DELTA, q, steps, tol=1e-4)
  assert dpsgd_epsilon(sigma, q, steps, DELTA) <= target
  assert dpsgd_epsilon(sigma - 1e-3, q, steps, DELTA) > target  # and not much more noise


def test_calibrate_round_trip_pld():
  kw = dict(accountant="pld", pld_discretization=1e-3)
  sigma = calibrate_noise_multiplier(1.0, DELTA, 0.01, 1000, tol=1e-4, **kw)
  assert dpsgd_epsilon(sigma, 0.01, 1000, DELTA, **kw) <= 1.0
  assert dpsgd_epsilon(sigma - 2e-3, 0.01, 1000, DELTA, **kw) > 1.0
  # PLD is tighter, so it needs less noise than RDP for the same target.
  assert sigma < calibrate_noise_multiplier(1.0, DELTA, 0.01, 1000)


# -- monotonicity and edge cases -----------------------------------------------------------


def test_monotone_in_steps_q_and_sigma():
  steps = [10, 100, 1000, 5000]
  eps = [dpsgd_epsilon(1.1, 0.01, s, DELTA) for s in steps]
  assert all(a < b for a, b in zip(eps, eps[1:]))
  qs = [0.001, 0.01, 0.05, 0.2, 1.0]
  eps = [dpsgd_epsilon(1.1, q, 500, DELTA) for q in qs]
  assert all(a < b for a, b in zip(eps, eps[1:]))
  sigmas = [0.6, 0.9, 1.3, 2.0, 4.0]
  eps = [dpsgd_epsilon(s, 0.01, 500, DELTA) for s in sigmas]
  assert all(a > b for a, b in zip(eps, eps[1:]))
  deltas = [1e-7, 1e-5, 1e-3]
  eps = [dpsgd_epsilon(1.1, 0.01, 500, d) for d in deltas]
  assert all(a > b for a, b in zip(eps, eps[1:]))


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_zero_noise_is_infinite_and_zero_steps_free(accountant):
  assert dpsgd_epsilon(0.0, 0.01, 10, DELTA, accountant) == math.inf
  assert dpsgd_epsilon(1.0, 0.01, 0, DELTA, accountant) == 0.0
  # Same through the generic path (dp_accounting's own handling of sigma = 0).
  assert epsilon_of_event(poisson_gaussian_event(0.0, 0.01, 10), DELTA, accountant) == math.inf


def test_float_integral_steps_accepted():
  assert dpsgd_epsilon(1.1, 0.01, 100.0, DELTA) == dpsgd_epsilon(1.1, 0.01, 100, DELTA)


def test_epsilon_of_event_matches_dpsgd_epsilon():
  event = poisson_gaussian_event(1.1, 0.01, 300)
  assert epsilon_of_event(event, DELTA) == dpsgd_epsilon(1.1, 0.01, 300, DELTA)
  with pytest.raises(ValueError, match="event"):
    epsilon_of_event(dp_accounting.UnsupportedDpEvent(), DELTA)
  with pytest.raises(ValueError, match="event"):
    epsilon_of_event("gaussian", DELTA)


@pytest.mark.parametrize("kwargs,name", [
    (dict(noise_multiplier=-0.1), "noise_multiplier"),
    (dict(noise_multiplier=float("nan")), "noise_multiplier"),
    (dict(sampling_probability=0.0), "sampling_probability"),
    (dict(sampling_probability=1.5), "sampling_probability"),
    (dict(steps=-1), "steps"),
    (dict(steps=10.5), "steps"),
    (dict(steps=True), "steps"),
    (dict(delta=0.0), "delta"),
    (dict(delta=1.0), "delta"),
    (dict(accountant="moments"), "accountant"),
])
def test_dpsgd_epsilon_bad_inputs(kwargs, name):
  args = dict(noise_multiplier=1.0, sampling_probability=0.01, steps=10, delta=DELTA)
  args.update(kwargs)
  with pytest.raises(ValueError, match=name):
    dpsgd_epsilon(**args)


@pytest.mark.parametrize("kwargs,name", [
    (dict(target_epsilon=0.0), "target_epsilon"),
    (dict(target_epsilon=-1.0), "target_epsilon"),
    (dict(delta=2.0), "delta"),
    (dict(sampling_probability=0.0), "sampling_probability"),
    (dict(steps=-3), "steps"),
    (dict(steps=0), "steps"),
    (dict(accountant="x"), "accountant"),
    (dict(tol=0.0), "tol"),
])
def test_calibrate_bad_inputs(kwargs, name):
  args = dict(target_epsilon=1.0, delta=DELTA, sampling_probability=0.01, steps=10)
  args.update(kwargs)
  with pytest.raises(ValueError, match=name):
    calibrate_noise_multiplier(**args)


# -- ledger --------------------------------------------------------------------------------

STEP = dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.1))


def test_ledger_epsilon_matches_independent_integer_order_rdp():
  # The ledger composes the per-step RDP itself (k times one step's RDP, then converts):
  # checked against the closed form composed and converted here, not against dp_accounting.
  sigma, q = STEP.event.noise_multiplier, STEP.sampling_probability
  ledger = PrivacyLedger(target_epsilon=100.0, delta=DELTA)
  ledger_int = PrivacyLedger(target_epsilon=100.0, delta=DELTA, orders=INTEGER_ORDERS)
  for k in range(1, 301):
    ledger.spend(STEP)
    ledger_int.spend(STEP)
    if k in (1, 7, 50, 300):
      reference = _independent_integer_order_epsilon(sigma, q, k, DELTA)
      # Same orders: the same number up to round-off.
      assert ledger_int.epsilon() == pytest.approx(reference, rel=1e-12)
      # Default orders add fractional ones (1.1..10.9): never worse, and close, since the
      # optimum moves at most to a neighbouring fractional order (measured: 0 at k = 1, 7,
      # where the optimum is an integer >= 11; 0.3% at k = 50; 0.9% at k = 300).
      assert ledger.epsilon() <= reference * (1 + 1e-12)
      assert ledger.epsilon() >= reference * (1 - 0.02)
  assert ledger.events == [(STEP, 300)]  # consecutive repeats are merged
  # Recording 300 steps at once or one by one is the same composition.
  assert ledger.epsilon() == pytest.approx(dpsgd_epsilon(sigma, q, 300, DELTA), rel=1e-12)


def test_pld_ledger_matches_dp_accounting_pld_directly():
  ledger = PrivacyLedger(target_epsilon=100.0, delta=DELTA, accountant="pld",
                         pld_discretization=1e-3)
  ledger.record(STEP, 40)
  ledger.spend(STEP)
  # dp_accounting's PLD accountant driven here, not through libs.accounting.
  acct = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)
  acct.compose(dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.1)), 41)
  assert ledger.epsilon() == pytest.approx(acct.get_epsilon(DELTA), rel=1e-12)
  # PLD (even coarsely discretised, which is pessimistic) is tighter than RDP.
  assert ledger.epsilon() < _independent_integer_order_epsilon(1.1, 0.01, 41, DELTA)


def test_check_raises_before_passing_target_and_records_nothing():
  eps50 = dpsgd_epsilon(1.1, 0.01, 50, DELTA)
  eps51 = dpsgd_epsilon(1.1, 0.01, 51, DELTA)
  assert eps50 < eps51
  target = 0.5 * (eps50 + eps51)
  ledger = PrivacyLedger(target_epsilon=target, delta=DELTA, unit="speaker")
  spent = 0
  with pytest.raises(PrivacyBudgetExceeded) as info:
    for _ in range(100):
      ledger.spend(STEP)
      spent += 1
  assert spent == 50
  assert ledger.epsilon() == pytest.approx(eps50, rel=1e-12)
  assert ledger.events == [(STEP, 50)]
  message = str(info.value)
  assert "speaker" in message and f"{target:g}" in message and f"{DELTA:g}" in message
  assert f"{eps51:.6g}" in message
  # check() alone never records; a batch check of many steps fails as a whole.
  with pytest.raises(PrivacyBudgetExceeded):
    ledger.check(STEP)
  assert ledger.would_exceed(STEP)
  assert not ledger.would_exceed(dp_accounting.NoOpDpEvent())
  assert ledger.epsilon() == pytest.approx(eps50, rel=1e-12)
  fresh = PrivacyLedger(target_epsilon=target, delta=DELTA)
  with pytest.raises(PrivacyBudgetExceeded):
    fresh.check(STEP, count=51)
  assert fresh.check(STEP, count=50) == pytest.approx(eps50, rel=1e-12)
  assert fresh.epsilon() == 0.0


def test_non_private_event_is_refused():
  ledger = PrivacyLedger(target_epsilon=10.0, delta=DELTA)
  with pytest.raises(PrivacyBudgetExceeded):
    ledger.spend(dp_accounting.NonPrivateDpEvent())
  assert ledger.epsilon() == 0.0


def test_ledger_state_round_trip_through_json():
  other = dp_accounting.ComposedDpEvent([
      dp_accounting.GaussianDpEvent(3.0),
      dp_accounting.PoissonSampledDpEvent(0.02, dp_accounting.GaussianDpEvent(0.9))])
  for accountant in ("rdp", "pld"):
    ledger = PrivacyLedger(50.0, DELTA, accountant, unit="utterance", pld_discretization=1e-3)
    ledger.record(STEP, 20)
    ledger.record(other)
    ledger.spend(STEP, 5)
    state = json.loads(json.dumps(ledger.state_dict()))
    restored = PrivacyLedger.from_state_dict(state)
    assert restored.epsilon() == ledger.epsilon()
    assert restored.events == ledger.events
    assert restored.unit == "utterance" and restored.accountant == accountant
    ledger.spend(STEP)
    restored.spend(STEP)
    assert restored.epsilon() == ledger.epsilon()
    assert restored.summary() == ledger.summary()


def test_event_serialisation_round_trip():
  events = [
      STEP,
      dp_accounting.SelfComposedDpEvent(STEP, 7),
      dp_accounting.ComposedDpEvent([STEP, dp_accounting.LaplaceDpEvent(0.5)]),
      dp_accounting.SampledWithoutReplacementDpEvent(1000, 10, dp_accounting.GaussianDpEvent(1.0)),
      dp_accounting.NoOpDpEvent(),
  ]
  for event in events:
    assert ledger_lib.event_from_dict(json.loads(json.dumps(ledger_lib.event_to_dict(event)))) \
        == event


def test_ledger_checked_and_recorded_step_by_step_equals_one_composition():
  # (Its cost per step is a speed target, not a test: no wall-clock assertion on a shared machine.)
  ledger = PrivacyLedger(target_epsilon=100.0, delta=DELTA)
  for _ in range(2000):
    ledger.check(STEP)
    ledger.record(STEP)
  assert ledger.epsilon() == pytest.approx(dpsgd_epsilon(1.1, 0.01, 2000, DELTA), rel=1e-12)


@pytest.mark.parametrize("kwargs,name", [
    (dict(target_epsilon=0.0), "target_epsilon"),
    (dict(delta=0.0), "delta"),
    (dict(accountant="gdp"), "accountant"),
    (dict(unit=""), "unit"),
])
def test_ledger_bad_inputs(kwargs, name):
  args = dict(target_epsilon=1.0, delta=DELTA)
  args.update(kwargs)
  with pytest.raises(ValueError, match=name):
    PrivacyLedger(**args)


def test_ledger_bad_events_and_counts():
  ledger = PrivacyLedger(1.0, DELTA)
  with pytest.raises(ValueError, match="count"):
    ledger.record(STEP, count=-1)
  with pytest.raises(ValueError, match="count"):
    ledger.check(STEP, count=1.5)
  with pytest.raises(ValueError, match="event"):
    ledger.record("step")
  with pytest.raises(ValueError, match="event"):
    PrivacyLedger(1.0, DELTA, "pld").record(dp_accounting.ZCDpEvent(0.1))
  assert ledger.epsilon() == 0.0


def test_module_validators_name_arguments():
  with pytest.raises(ValueError, match="orders"):
    dpsgd.make_accountant("rdp", orders=[0.5, 2.0])
  with pytest.raises(ValueError, match="pld_discretization"):
    dpsgd.make_accountant("pld", pld_discretization=0.0)


def test_calibration_logs_one_line_for_orders_that_do_not_converge(caplog):
  # q = 0.25 with sigma near 1.7: dp_accounting's fractional-order series fails at orders
  # 1.1-1.7 on every evaluation (96 warnings without the filter); the result is unchanged.
  with caplog.at_level("WARNING", logger="absl"):
    sigma = calibrate_noise_multiplier(2.0, 1e-5, 0.25, 4)
  messages = [r.getMessage() for r in caplog.records]
  assert not any("_compute_log_a_frac" in m for m in messages)
  summary = [m for m in messages if m.startswith("noise calibration:")]
  assert len(summary) == 1 and int(summary[0].split()[2]) > 10
  assert dpsgd_epsilon(sigma, 0.25, 4, 1e-5) <= 2.0
  assert dpsgd_epsilon(sigma * 0.99, 0.25, 4, 1e-5) > 2.0  # and it is the smallest such sigma
