"""Smoke test of the PATE sweep on the tiny corpus: every stage, output and ledger."""

import pytest
import json
import math
import os
import subprocess
import sys

import numpy as np

pytestmark = pytest.mark.slow  # end-to-end: `make test-fast` skips it

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CONFIG = os.path.join(REPO, "projects", "pate_asr", "configs", "sweep.py") + ":tiny"
REQUIRED = {"method", "scenario", "target_epsilon", "epsilon", "delta", "wer", "unit", "accountant",
            "queries_answered", "queries_total"}


def _run(workdir, data_dir, cache):
  env = dict(os.environ, TSML_DATA_DIR=data_dir, TSML_JAX_CACHE=cache, PYTHONUNBUFFERED="1")
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"  # one real CPU device, fast compiles
  return subprocess.run([sys.executable, "-m", "projects.pate_asr.main", f"--config={CONFIG}",
                         f"--workdir={workdir}", "--config.progress=False"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def test_pate_sweep_end_to_end_and_resume(tiny_corpus_dir, tmp_path):
  workdir, cache = str(tmp_path / "pate"), str(tmp_path / "cache")
  proc = _run(workdir, tiny_corpus_dir, cache)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "PATE-GNMax" in proc.stdout and "DP-SGD" in proc.stdout
  results = json.load(open(os.path.join(workdir, "results.json")))
  records = results["records"]
  for r in records:
    assert REQUIRED <= set(r), set(REQUIRED) - set(r)
  methods = {r["method"] for r in records}
  assert methods == {"pate_noiseless", "pate_lnmax", "pate_gnmax", "pate_confident_gnmax",
                     "pate_noisy_average", "dpsgd", "nonprivate"}
  targets = [2.0, 10.0]
  for r in records:
    if r["method"].startswith("pate_") and r["method"] != "pate_noiseless":
      assert r["target_epsilon"] in targets
      assert r["epsilon"] <= r["target_epsilon"] + 1e-9  # the ledger stopped in time
      assert r["epsilon_data_dependent"] <= r["epsilon_data_independent"] + 1e-9
      assert 0 <= r["queries_answered"] <= r["queries_total"]
      assert r["utterances_labeled"] <= r["utterances_released"] <= r["public_utterances"]
      assert r["randomness"] == "os-secret"  # The shipped default: noise not derived from the seed.
    if r["method"] == "dpsgd":
      assert r["epsilon"] <= r["target_epsilon"] + 1e-6 and r["unit"] == "utterance"
      assert r["noise_multiplier"] > 0
      assert r["randomness"] == "os-secret"
    assert 0.0 <= r["wer"] <= 5.0
  # A larger budget never releases fewer answers.
  for m in ("pate_lnmax", "pate_gnmax", "pate_confident_gnmax", "pate_noisy_average"):
    by_target = {r["target_epsilon"]: r for r in records if r["method"] == m}
    assert by_target[10.0]["queries_total"] >= by_target[2.0]["queries_total"]
  noiseless = [r for r in records if r["method"] == "pate_noiseless"][0]
  assert math.isinf(noiseless["epsilon"]) and noiseless["queries_answered"] == noiseless["queries_total"] > 0
  assert results["config"]["insecure_reproducible_noise"] is False
  assert json.load(open(os.path.join(workdir, "dp_randomness.json"))) == {"randomness": "os-secret"}
  scenario = os.path.join(workdir, "matched")
  # The smooth-sensitivity releases are kept, so that a rerun republishes the same noisy values.
  # Whether the 3 barely trained teachers agree on any whole utterance (so that something is
  # released) depends on the secret aggregation noise: the check covers the releases there are.
  released = [r["released_epsilon"] for r in records if "released_epsilon" in r]
  if released:
    kept = json.load(open(os.path.join(scenario, "labels", "smooth_sensitivity_releases.json")))
    assert all(r in kept.values() for r in released)
  for stage in ("floor", "teachers", "dpsgd"):
    assert os.path.exists(os.path.join(scenario, stage, "done.json")), stage
  for m in ("plurality", "lnmax", "gnmax", "confident_gnmax", "noisy_average"):
    labels = np.load(os.path.join(scenario, "labels", f"{m}.npz"))
    assert labels["votes"].shape[1] == 29 and (labels["votes"].sum(1) == 3).all()  # 3 teachers vote
  assert os.path.getsize(os.path.join(workdir, "figures", "wer_vs_epsilon.png")) > 10_000
  # Every stage left its completion record, which a rerun of the same workdir loads instead of
  # recomputing (a full rerun is left out of `make test` for time).
  for stage in ("floor", "teachers", "students", "dpsgd"):
    done = os.path.join(scenario, stage, "done.json")
    assert os.path.exists(done) and json.load(open(done)), stage
