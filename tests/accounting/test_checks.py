"""The shared argument checks (libs.accounting._checks): one rule, one message per bad input.

Every entry point that takes a noise multiplier, a sampling probability, a step count, a
delta or an epsilon (DP-SGD accounting, the budget ledgers, the PATE analysis, the
samplers' DpEvents) must reject the same bad value with the same ValueError, and treat an
explicit noise multiplier 0 the same way: a non-private release with epsilon inf.
"""

import math

import dp_accounting
import numpy as np
import pytest

from libs import accounting
from libs.accounting import _checks
from libs.accounting import dpsgd
from libs.accounting import pate
from libs.dp import sampling

DELTA = 1e-5
BAD_NOISE_MULTIPLIERS = [-0.1, -math.inf, math.inf, math.nan, True, "1.0", None, np.float64(-1)]


def _message(call):
  with pytest.raises(ValueError) as info:
    call()
  return str(info.value)


NOISE_MULTIPLIER_CALLERS = {
    "check": lambda z: _checks.check_noise_multiplier(z),
    "dpsgd.check": lambda z: dpsgd.check_noise_multiplier(z),
    "poisson_gaussian_event": lambda z: accounting.poisson_gaussian_event(z, 0.01, 10),
    "dpsgd_epsilon": lambda z: accounting.dpsgd_epsilon(z, 0.01, 10, DELTA),
    "poisson_step_event": lambda z: sampling.poisson_step_event(0.01, z),
    "fixed_size_step_event": lambda z: sampling.fixed_size_step_event(100, 10, z),
    "PoissonSampler": lambda z: sampling.PoissonSampler(100, 0.1, seed=0).dp_event(z, 10),
    "FixedSizeSampler": lambda z: sampling.FixedSizeSampler(100, 10, seed=0).dp_event(z, 10),
    "ShufflingSampler": lambda z: sampling.ShufflingSampler(100, 10, seed=0).dp_event(z, 10),
}


@pytest.mark.parametrize("value", BAD_NOISE_MULTIPLIERS, ids=repr)
def test_every_caller_rejects_a_bad_noise_multiplier_with_the_same_error(value):
  messages = {name: _message(lambda: call(value)) for name, call in NOISE_MULTIPLIER_CALLERS.items()}
  assert len(set(messages.values())) == 1, messages
  assert messages["check"] == f"noise_multiplier must be a finite number >= 0, got {value!r}"


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_noise_multiplier_zero_is_accepted_and_accounted_as_epsilon_inf(accountant):
  for name, call in NOISE_MULTIPLIER_CALLERS.items():
    call(0.0)  # accepted everywhere: an explicit request, never a default
    call(0)
  assert accounting.dpsgd_epsilon(0.0, 0.01, 10, DELTA, accountant) == math.inf
  event = accounting.poisson_gaussian_event(0.0, 0.01, 10)
  assert accounting.epsilon_of_event(event, DELTA, accountant) == math.inf
  sampler = sampling.PoissonSampler(100, 0.1, seed=0)
  assert accounting.epsilon_of_event(sampler.dp_event(0.0, 10), DELTA, accountant) == math.inf
  # Nothing released yet costs nothing, noise or not.
  assert accounting.dpsgd_epsilon(0.0, 0.01, 0, DELTA, accountant) == 0.0


def test_zero_noise_without_replacement_is_inf_not_a_division_by_zero():
  # dp_accounting's RDP analysis of sampling without replacement divides by the noise.
  event = sampling.FixedSizeSampler(100, 10, seed=0).dp_event(0.0, 10)
  replace_one = accounting.NeighboringRelation.REPLACE_ONE
  assert accounting.epsilon_of_event(event, DELTA, neighboring_relation=replace_one) == math.inf
  # A composition containing one noiseless release is non-private as a whole.
  mixed = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(1.0),
                                         dp_accounting.GaussianDpEvent(0.0)])
  assert accounting.epsilon_of_event(mixed, DELTA) == math.inf
  assert accounting.epsilon_of_event(dp_accounting.GaussianDpEvent(1.0), DELTA) < math.inf


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5, math.nan, True, "0.1"], ids=repr)
def test_every_caller_rejects_a_bad_sampling_probability_with_the_same_error(value):
  calls = [
      lambda: _checks.check_sampling_probability(value),
      lambda: accounting.poisson_gaussian_event(1.0, value, 10),
      lambda: accounting.dpsgd_epsilon(1.0, value, 10, DELTA),
      lambda: accounting.calibrate_noise_multiplier(1.0, DELTA, value, 10),
      lambda: sampling.poisson_step_event(value, 1.0),
      lambda: sampling.PoissonSampler(100, value, seed=0),
  ]
  messages = {_message(call) for call in calls}
  assert messages == {f"sampling_probability must be in (0, 1], got {value!r}"}


@pytest.mark.parametrize("value", [-1, 2.5, math.inf, math.nan, True, "3"], ids=repr)
def test_every_caller_rejects_a_bad_step_count_with_the_same_error(value):
  calls = [
      lambda: _checks.check_count(value),
      lambda: accounting.poisson_gaussian_event(1.0, 0.01, value),
      lambda: accounting.dpsgd_epsilon(1.0, 0.01, value, DELTA),
      lambda: sampling.PoissonSampler(100, 0.1, seed=0).dp_event(1.0, value),
      lambda: sampling.FixedSizeSampler(100, 10, seed=0).dp_event(1.0, value),
      lambda: sampling.ShufflingSampler(100, 10, seed=0).dp_event(1.0, value),
  ]
  messages = {_message(call) for call in calls}
  assert messages == {f"steps must be a non-negative integer, got {value!r}"}


def test_integral_float_step_counts_are_accepted_everywhere():
  assert accounting.poisson_gaussian_event(1.0, 0.01, 10.0).count == 10
  assert sampling.PoissonSampler(100, 0.1, seed=0).dp_event(1.0, 10.0).count == 10
  assert sampling.ShufflingSampler(100, 10, seed=0).dp_event(1.0, 25.0).count == 3
  ledger = pate.PateLedger()
  ledger.record_noisy_average(10.0, 40.0)
  assert ledger.num_answered == 10


@pytest.mark.parametrize("value", [0.0, 1.0, -1e-5, math.nan, True], ids=repr)
def test_every_caller_rejects_a_bad_delta_with_the_same_error(value):
  calls = [
      lambda: _checks.check_delta(value),
      lambda: accounting.dpsgd_epsilon(1.0, 0.01, 10, value),
      lambda: accounting.epsilon_of_event(dp_accounting.GaussianDpEvent(1.0), value),
      lambda: accounting.PrivacyLedger(1.0, value),
      lambda: pate.PateLedger().epsilon(value),
      lambda: pate.PateLedger().would_exceed(1.0, value, gnmax_sigma=40.0),
      lambda: pate.release_data_dependent_epsilon(0.5, 0.1, 0.02, 8.0, 10.0, value, 0),
  ]
  messages = {_message(call) for call in calls}
  assert messages == {f"delta must be in (0, 1), got {value!r}"}


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan, False], ids=repr)
def test_every_caller_rejects_a_bad_target_epsilon_with_the_same_error(value):
  calls = [
      lambda: _checks.check_epsilon(value),
      lambda: accounting.PrivacyLedger(value, DELTA),
      lambda: accounting.calibrate_noise_multiplier(value, DELTA, 0.01, 10),
      lambda: accounting.calibrate_event_noise_multiplier(dp_accounting.GaussianDpEvent, value, DELTA),
      lambda: pate.PateLedger().would_exceed(value, DELTA, gnmax_sigma=40.0),
  ]
  messages = {_message(call) for call in calls}
  assert messages == {f"target_epsilon must be a finite number > 0, got {value!r}"}


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan, True], ids=repr)
def test_pate_noise_scales_must_be_positive(value):
  # The PATE bounds divide by their noise scale, so 0 has no analysis there (unlike a noise
  # multiplier handed to dp_accounting).
  votes = np.array([3, 1])
  messages = {_message(lambda: pate.gnmax_rdp(votes, value, [2.0])),
              _message(lambda: pate.gnmax_log_q(votes, value)),
              _message(lambda: pate.noisy_average_rdp(value, [2.0])),
              _message(lambda: pate.PateLedger().record_gnmax(votes[None], value))}
  assert messages == {f"sigma must be a finite number > 0, got {value!r}"}


def test_calibrate_event_noise_multiplier_under_replace_one_round_trips():
  replace_one = accounting.NeighboringRelation.REPLACE_ONE

  def make_event(z):
    return dp_accounting.SelfComposedDpEvent(sampling.fixed_size_step_event(2000, 40, z), 40)

  def eps(z):
    return accounting.epsilon_of_event(make_event(z), DELTA, neighboring_relation=replace_one)

  z = accounting.calibrate_event_noise_multiplier(make_event, 3.0, DELTA,
                                                  neighboring_relation=replace_one)
  assert eps(z) <= 3.0 < eps(z - 1e-3)
  # Under add/remove-one the same sampling needs less noise.
  poisson = accounting.calibrate_noise_multiplier(3.0, DELTA, 40 / 2000, 40)
  assert poisson < z


def test_calibrate_noise_multiplier_is_the_generic_one_on_the_dpsgd_event():
  got = accounting.calibrate_noise_multiplier(1.0, DELTA, 0.01, 200)
  generic = accounting.calibrate_event_noise_multiplier(
      lambda z: accounting.poisson_gaussian_event(z, 0.01, 200), 1.0, DELTA)
  assert got == generic


@pytest.mark.parametrize("kwargs, name", [
    (dict(make_event="gaussian"), "make_event"),
    (dict(neighboring_relation="replace_one"), "neighboring_relation"),
    (dict(tol=0.0), "tol"),
    (dict(accountant="moments"), "accountant"),
    (dict(delta=0.0), "delta"),
])
def test_calibrate_event_noise_multiplier_bad_inputs(kwargs, name):
  args = dict(make_event=dp_accounting.GaussianDpEvent, target_epsilon=1.0, delta=DELTA)
  args.update(kwargs)
  with pytest.raises(ValueError, match=name):
    accounting.calibrate_event_noise_multiplier(**args)


def test_unsupported_event_under_a_relation_is_refused_naming_it():
  event = sampling.fixed_size_step_event(100, 10, 1.0)
  with pytest.raises(ValueError, match="not supported"):
    accounting.epsilon_of_event(event, DELTA, "pld",
                                neighboring_relation=accounting.NeighboringRelation.REPLACE_ONE)
