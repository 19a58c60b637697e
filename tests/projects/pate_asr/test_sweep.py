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
REQUIRED = {"method", "scenario", "unit", "target_epsilon", "epsilon", "epsilon_kind",
            "epsilon_data_independent", "delta", "accountant", "wer"}
# What a PATE record may hold besides privacy.PUBLIC_RECORD_KEYS: none of it is computed from votes.
PATE_EXTRA = {"scenario", "randomness", "noise", "wer", "wer_before_self_training", "label_wer", "student"}
# Names of quantities computed from the private votes, which results.json must never hold.
RAW = ("votes", "smooth_sensitivity", "local_sensitivity", "epsilon_data_dependent", "rdp_data_dependent",
       "noisy_epsilon", "agreement", "dev_wer")


def _run(workdir, data_dir, cache_env):
  env = dict(os.environ, TSML_DATA_DIR=data_dir, PYTHONUNBUFFERED="1", **cache_env)
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"  # one real CPU device, fast compiles
  return subprocess.run([sys.executable, "-m", "projects.pate_asr.main", f"--config={CONFIG}",
                         f"--workdir={workdir}", "--config.progress=False",
                         # One target epsilon (the tiny config has two) keeps `make test` under 10 minutes;
                         # several targets are covered by test_components' plan test.
                         "--config.pate.target_epsilons=(2.0,)", "--config.pate.query_utterances=(2,)"],
                        cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def test_pate_sweep_end_to_end_and_resume(tiny_corpus_dir, tmp_path, shared_jax_cache):
  from projects.pate_asr import privacy  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "pate")
  proc = _run(workdir, tiny_corpus_dir, shared_jax_cache)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "PATE-GNMax" in proc.stdout and "DP-SGD (speaker)" in proc.stdout
  text = open(os.path.join(workdir, "results.json")).read()
  for name in RAW:
    assert name not in text, name
  results = json.loads(text)
  # Barely trained tiny models insert words freely: WERs are finite but may exceed 100%.
  assert 0 <= results["public_only_wer"] < math.inf and 0 <= results["nonprivate_wer"] < math.inf
  records = results["records"]
  for r in records:
    assert REQUIRED <= set(r), set(REQUIRED) - set(r)
    assert 0.0 <= r["wer"] < math.inf
  methods = {r["method"] for r in records}
  assert methods == {"pate_noiseless", "pate_lnmax", "pate_gnmax", "pate_confident_gnmax", "pate_noisy_average",
                     "dpsgd_speaker", "dpsgd_utterance", "nonprivate", "public_only"}
  for r in records:
    if r["method"].startswith("pate_"):
      assert set(r) <= set(privacy.PUBLIC_RECORD_KEYS) | PATE_EXTRA, set(r) - set(privacy.PUBLIC_RECORD_KEYS)
      assert r["unit"] == "speaker"
    if r["method"].startswith("pate_") and r["method"] != "pate_noiseless":
      assert r["target_epsilon"] == 2.0
      assert r["epsilon_kind"] in ("formal", "data_dependent_released")
      assert r["epsilon"] <= r["epsilon_data_independent"] + 1e-9
      # The noise was calibrated (from public config) so that the formal bound meets the target.
      assert r["within_target"] and r["epsilon"] <= r["epsilon_data_independent"] <= r["target_epsilon"] + 1e-6
      assert r["randomness"] == "os-secret"  # The shipped default: noise not derived from the seed.
      # Every query made is charged; the formal bound charges the per-utterance cap.
      assert r["num_queries_answered"] <= r["num_queries_made"] <= r["num_queries_charged"]
    if r["method"] in ("pate_lnmax", "pate_noisy_average"):
      assert r["epsilon_kind"] == "formal"
    if r["method"].startswith("dpsgd_"):
      assert r["unit"] == r["method"].removeprefix("dpsgd_")
      assert r["epsilon"] <= r["target_epsilon"] + 1e-6 and r["noise_multiplier"] > 0
      assert r["randomness"] == "os-secret"
  noiseless = [r for r in records if r["method"] == "pate_noiseless"][0]
  assert math.isinf(noiseless["epsilon"])
  assert results["config"]["insecure_reproducible_noise"] is False
  assert json.load(open(os.path.join(workdir, "dp_randomness.json"))) == {"randomness": "os-secret"}
  scenario = os.path.join(workdir, "matched")
  names = sorted(os.listdir(os.path.join(scenario, "private", "labels")))
  assert names == sorted(["plurality_inf.npz"] + [f"{m}_2.npz" for m in ("lnmax", "gnmax", "confident_gnmax",
                                                                        "noisy_average")])
  for name in names:
    labels = np.load(os.path.join(scenario, "private", "labels", name))
    assert labels["votes"].shape[1] == 12 and (labels["votes"].sum(1) == 3).all()  # 3 teachers, 11 words
    assert (labels["query_lengths"] <= 8).all()  # the cap the formal bound charges
  assert os.path.exists(os.path.join(scenario, "private", "privacy", "gnmax_2.json"))
  assert os.path.getsize(os.path.join(workdir, "figures", "wer_vs_epsilon.png")) > 10_000
  # Every stage left its completion record, which a rerun of the same workdir loads instead of
  # recomputing (a full rerun is left out of `make test` for time).
  assert os.path.exists(os.path.join(workdir, "public", "done.json"))
  for stage in ("nonprivate", "teachers", "privacy", "students", "dpsgd_speaker", "dpsgd_utterance"):
    done = os.path.join(scenario, stage, "done.json")
    assert os.path.exists(done) and json.load(open(done)) is not None, stage
