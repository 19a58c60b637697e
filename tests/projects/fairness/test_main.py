"""End-to-end: the fairness entrypoint on the tiny configs writes every output the issue names.

`cohorts:tiny` runs through the real entrypoint (a subprocess, one real CPU device) and leaves
what a rerun restores from: checkpoints and cached scores (`ewc:tiny` and `arw:tiny`
run in-process in test_mitigation.py and test_verification.py). The numbers of tiny runs mean
nothing; the checks are on what is written and on the invariants between its parts.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # end-to-end: `make test-fast` skips it

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
COHORTS_TINY = os.path.join(REPO, "projects", "fairness", "configs", "cohorts.py") + ":tiny"


def _results(workdir):
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    return json.load(f)


def _command(workdir):
  return [sys.executable, "-m", "projects.fairness.main", f"--config={COHORTS_TINY}", f"--workdir={workdir}",
          "--config.progress=False"]


def _env(data_dir, cache_env):
  env = dict(os.environ, TSML_DATA_DIR=data_dir, PYTHONUNBUFFERED="1", **cache_env)
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
  return env


def _is_fraction_or_none(x):
  return x is None or (isinstance(x, float) and np.isfinite(x))


def test_cohorts_entrypoint_writes_results_figures_and_checkpoints(tiny_corpus_dir, tmp_path, shared_jax_cache):
  workdir = str(tmp_path / "cohorts")
  env = _env(tiny_corpus_dir, shared_jax_cache)
  proc = subprocess.run(_command(workdir), cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = _results(workdir)
  assert [c["method"] for c in results["cohorts"]] == ["geo_tree", "geo_demographic", "automatic"]
  for c in results["cohorts"]:
    assert 0.0 <= c["bottom_share"] <= 1.0
    assert _is_fraction_or_none(c["wer_gap"])
    if c["wer_gap"] is not None:
      low, high = c["wer_gap_ci"]
      assert low <= c["wer_gap"] <= high
  assert results["automatic"]["k"] in (2, 3)
  assert "geo_tree" in proc.stdout and "bottom share" in proc.stdout
  for name in ("cohort_map", "cohort_gaps", "kmeans_k"):
    assert os.path.getsize(os.path.join(workdir, "figures", f"{name}.png")) > 5_000
  # What a rerun needs is on disk: both models' final checkpoints and the cached scores (the
  # resumable loop restores from them; its resume is tested in tests/train and tests/projects/pate_asr).
  assert sorted(os.listdir(os.path.join(workdir, "asr", "checkpoints")))[-1] == "6"
  assert sorted(os.listdir(os.path.join(workdir, "speaker", "checkpoints")))[-1] == "6"
  assert {"scores_dev.npz", "scores_test.npz"} <= set(os.listdir(os.path.join(workdir, "asr")))
