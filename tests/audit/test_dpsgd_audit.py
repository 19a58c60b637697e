"""The DP-SGD audit runs the library's DP-SGD, and flags broken variants but not the real one."""

import numpy as np
import pytest

from libs import accounting
from libs.audit import dpsgd as dpsgd_audit
from libs.dp import sampling
from libs.dp.randomness import DpRandomness


def test_per_step_updates_are_the_clipped_canary_when_noise_is_negligible():
  setup = dpsgd_audit.CanarySetup(noise_multiplier=1e-6, num_examples=16, steps=6, sampling_probability=0.5,
                                  canary_norm=10.0, l2_clip_norm=0.5, learning_rate=0.3)
  rand = DpRandomness(reproducible_seed=3)
  trials = dpsgd_audit.run_trials(setup, "dpsgd", 4, rand=rand)
  y = np.diff(trials.member, axis=0) * (0.5 * 16) / 0.3
  # An independent replay of the sampler: the canary (row 0) moves coordinate 0 by exactly C when drawn.
  for r in range(4):
    sampler = sampling.PoissonSampler(16, 0.5, seed=rand.seed(f"audit/dpsgd/member/{r}"))
    drawn = np.array([0 in sampler.indices(t) for t in range(6)])
    np.testing.assert_allclose(y[:, r], 0.5 * drawn, atol=1e-4)
  np.testing.assert_allclose(trials.non_member, 0.0, atol=1e-4)  # Others are orthogonal to e_0.
  # Without clipping the canary moves it by its raw norm, 10 C.
  broken = dpsgd_audit.run_trials(setup, "broken_clip", 4, rand=rand)
  assert np.abs(np.diff(broken.member, axis=0) * 8 / 0.3).max() == pytest.approx(5.0, rel=1e-4)


def test_audit_flags_broken_clipping_and_not_the_real_implementation():
  sigma = accounting.calibrate_noise_multiplier(2.0, 1e-5, 0.1, 20)
  setup = dpsgd_audit.CanarySetup(noise_multiplier=sigma, sampling_probability=0.1, steps=20)
  rand = DpRandomness(reproducible_seed=0)
  real = dpsgd_audit.audit(setup, "dpsgd", 400, rand=rand)
  broken = dpsgd_audit.audit(setup, "broken_clip", 400, rand=rand)
  assert real["claimed_epsilon"] == pytest.approx(2.0, abs=1e-3) == broken["claimed_epsilon"]
  assert not real["violates_claim"] and real["empirical_epsilon_lower"] <= 2.0
  assert broken["violates_claim"] and broken["empirical_epsilon_lower"] > 2.0


def test_bad_setup_raises():
  with pytest.raises(ValueError, match="noise_multiplier > 0"):
    dpsgd_audit.CanarySetup(noise_multiplier=0.0)
  with pytest.raises(ValueError, match="variant"):
    dpsgd_audit.run_trials(dpsgd_audit.CanarySetup(noise_multiplier=1.0), "nope", 8, rand=DpRandomness())
