"""Membership inference pipeline (tiny): balanced split, rows, bounds, figure, resume; batches never truncate."""

import json
import os

import numpy as np
import pytest

from libs import accounting
from projects.fedlearn import membership
from projects.fedlearn.configs import membership as membership_configs


def test_split_is_balanced_and_universe_is_distinct():
  member = membership._membership(6, 40, seed=0)  # pylint: disable=protected-access
  assert (member.sum(0) == 3).all()
  x, y, _ = membership.universe(50, seed=0)
  assert len(np.unique(x, axis=0)) == 50 == len(y)


def test_poisson_batches_stay_within_each_models_half_and_refuse_to_truncate():
  member = membership._membership(4, 30, seed=1)  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  idx, w = membership._batches(member, 0.5, 30, rng)  # pylint: disable=protected-access
  for m in range(4):
    assert member[m, idx[m][w[m] > 0]].all()
  with pytest.raises(RuntimeError, match="physical batch"):
    membership._batches(member, 1.0, 2, rng)  # pylint: disable=protected-access


def test_membership_tiny_writes_rows_with_dp_bounds_and_resumes(tmp_path):
  config = membership_configs.get_config("tiny")
  config.insecure_reproducible_noise = True
  config.membership.target_epsilons = (1.0,)
  workdir = str(tmp_path / "mia")
  results = membership.run(config, workdir)
  rows = results["membership"]
  assert {(r["model"], r["attack"]) for r in rows} == {(m, a) for m in ("non-private", "dpsgd_eps1")
                                                       for a in ("loss", "lira")}
  cfg = config.membership
  for r in rows:
    assert 0 <= r["auc"] <= 1 and 0 <= r["tpr_at_fpr_0.001"] <= r["tpr_at_fpr_0.01"] <= 1
    if r["model"] == "non-private":
      assert r["epsilon"] is None and r["tpr_bound_at_fpr_0.01"] == 1.0
    else:
      spent = accounting.dpsgd_epsilon(r["noise_multiplier"], cfg.sampling_probability, cfg.steps, cfg.delta)
      assert r["epsilon"] == pytest.approx(spent) and spent <= 1.0 + 1e-6
      assert r["tpr_bound_at_fpr_0.01"] == pytest.approx(min(np.exp(spent) * 0.01 + cfg.delta, 1.0), rel=1e-9)
      assert 0.01 <= r["tpr_profile_bound_at_fpr_0.01"] <= r["tpr_bound_at_fpr_0.01"] + 1e-12
  assert os.path.getsize(os.path.join(workdir, "figures", "membership_roc.png")) > 10_000
  assert json.load(open(os.path.join(workdir, "results.json")))["membership"] == rows
  assert membership.run(config, workdir)["membership"] == rows  # The rerun loads the trained stages.
