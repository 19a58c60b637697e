"""End-to-end, in-process: `ewc:tiny` writes every output the issue names, and a rerun restores
every stage (on one device: five trainings compile much faster there).

The numbers of tiny runs mean nothing; the checks are on what is written and on the
invariants between its parts.
"""

import os

import pytest

from projects.fairness import mitigation
from projects.fairness.configs import ewc as ewc_configs

pytestmark = pytest.mark.slow  # end-to-end: `make test-fast` skips it


def test_ewc_tiny_runs_every_method(tiny_corpus_dir, tmp_path):
  config = ewc_configs.get_config("tiny")
  config.data.data_dir = tiny_corpus_dir
  config.progress = False
  config.num_devices = 1  # Five trainings: one device compiles each much faster than eight.
  results = mitigation.run(config, str(tmp_path / "ewc"))
  assert [r["method"] for r in results["runs"]] == ["baseline", "finetune", "oversample", "ewc"]
  for r in results["runs"]:
    assert 0.0 <= r["cohort_wer_mean"] <= r["cohort_wer_max"]
    assert r["cohort_wer_var"] >= 0.0 and r["overall_wer"] >= 0.0
  assert results["runs"][-1]["strength"] in tuple(config.ewc.strengths)
  assert len(results["ewc_sweep"]) == len(config.ewc.strengths)
  assert [c["method"] for c in results["controls"]] == ["continue"]
  assert os.path.getsize(os.path.join(str(tmp_path / "ewc"), "figures", "ewc_cohorts.png")) > 5_000
  # A rerun restores every stage (no training step logged again) and reproduces the results.
  rows = {stage: _rows(tmp_path / "ewc" / stage) for stage in ("asr", "continue", "finetune", "ewc_10")}
  again = mitigation.run(config, str(tmp_path / "ewc"))
  assert again["runs"] == results["runs"] and again["controls"] == results["controls"]
  for stage, n in rows.items():
    assert _rows(tmp_path / "ewc" / stage) == n, stage  # no training step ran again


def _rows(stage_dir):
  with open(os.path.join(str(stage_dir), "metrics.jsonl"), encoding="utf-8") as f:
    return sum(1 for line in f if '"train/loss"' in line)
