"""The audit entrypoint (tiny): every row, the claim check, the figure, the resume, and DP-FedAvg mechanics."""

import json
import os

import numpy as np
import pytest

from libs.audit import dpsgd as dpsgd_audit
from libs.dp.randomness import DpRandomness
from projects.fedlearn import audit
from projects.fedlearn import selection
from projects.fedlearn.configs import audit as audit_configs


def test_fedavg_trials_move_by_the_clipped_canary_update_when_noise_is_negligible():
  setup = dpsgd_audit.CanarySetup(noise_multiplier=1e-6, num_examples=20, steps=5, sampling_probability=0.25,
                                  canary_norm=10.0, l2_clip_norm=0.5, learning_rate=0.7)
  rand = DpRandomness(reproducible_seed=2)
  trials = audit.fedavg_trials(setup, 4, rand=rand)
  y = np.diff(trials.member, axis=0) * (0.25 * 20) / 0.7
  for r in range(4):  # Replay the device selection independently: the canary device is id 0.
    rng = np.random.default_rng(rand.seed(f"audit/fedavg/member/{r}"))
    drawn = np.array([0 in selection.select("poisson", np.ones(20, np.int64), 5, rng).ids for _ in range(5)])
    np.testing.assert_allclose(y[:, r], 0.5 * drawn, atol=1e-4)  # Clipped to C = 0.5.
  np.testing.assert_allclose(trials.non_member, 0.0, atol=1e-4)


def test_audit_tiny_writes_rows_flags_broken_variants_and_resumes(tmp_path, capsys):
  config = audit_configs.get_config("tiny")
  config.insecure_reproducible_noise = True  # Reproducible rows for the test.
  workdir = str(tmp_path / "audit")
  results = audit.run(config, workdir)
  rows = {(r["variant"], r.get("breakage")): r for r in results["audit"]}
  assert set(rows) == {("dpsgd", None), ("dpsgd_broken", "noise multiplier / 4"),
                       ("dpsgd_broken", "clipping disabled"), ("dp_fedavg", None)}
  for r in results["audit"]:
    assert r["claimed_epsilon"] == pytest.approx(2.0, abs=2e-3)  # All calibrated to the config's claim.
    assert r["unit"] == ("device" if r["variant"] == "dp_fedavg" else "example")
    assert r["violates_claim"] == (r["empirical_epsilon_lower"] > r["claimed_epsilon"])
  assert not rows[("dpsgd", None)]["violates_claim"] and not rows[("dp_fedavg", None)]["violates_claim"]
  assert rows[("dpsgd_broken", "clipping disabled")]["violates_claim"]
  assert os.path.getsize(os.path.join(workdir, "figures", "audit.png")) > 10_000
  assert json.load(open(os.path.join(workdir, "results.json")))["audit"] == results["audit"]
  assert "VIOLATES CLAIM" in capsys.readouterr().out
  # A rerun loads every finished row instead of recomputing it.
  again = audit.run(config, workdir)
  assert again["audit"] == results["audit"]


def test_bad_audit_config_names_the_field():
  config = audit_configs.get_config("tiny")
  config.audit.observation = "gradients"
  with pytest.raises(ValueError, match="config.audit.observation"):
    audit.validate(config)
