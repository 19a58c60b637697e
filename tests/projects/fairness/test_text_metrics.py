"""projects/fairness/text_metrics.py: its statistics against references, and the tiny study end to end."""

import json
import os

import numpy as np
import pytest
import scipy.stats

from libs.data import gender_text as gt
from projects.fairness import text_metrics
from projects.fairness.configs import text_metrics as config_lib


def test_tpr_gap_by_hand():
  # Profession 0 (male-stereotyped): men 2/2 right, women 1/2 -> +0.5. Profession 1 (female):
  # women 1/1, men 0/1 -> +1.0. Others absent. Mean 0.75.
  labels = np.array([0, 0, 0, 0, 1, 1])
  gender = np.array([0, 0, 1, 1, 1, 0])
  pred = np.array([0, 0, 0, 5, 1, 0])
  assert text_metrics.tpr_gap(pred, labels, gender) == pytest.approx(0.75)
  # Anti-stereotypical errors only: the sign flips.
  assert text_metrics.tpr_gap(np.array([0, 5, 0, 0, 5, 1]), labels, gender) == pytest.approx(-0.75)


def test_spearman_with_ci_matches_scipy_and_covers_it():
  rng = np.random.default_rng(0)
  x = rng.normal(size=30)
  y = x + rng.normal(size=30)
  out = text_metrics.spearman_with_ci(x, y, resamples=500, confidence=0.9, rng=np.random.default_rng(1))
  assert out["spearman"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
  low, high = out["ci"]
  assert low < out["spearman"] < high
  # The vectorised bootstrap statistic is Spearman's rho of each resample.
  idx = np.random.default_rng(1).integers(30, size=(500, 30))
  boot = [scipy.stats.spearmanr(x[i], y[i]).statistic for i in idx]
  np.testing.assert_allclose([low, high], np.quantile(boot, [0.05, 0.95]), rtol=1e-10)


def test_word_sets_keep_only_pairs_present_in_both_genders():
  vocab = gt.vocabulary()
  contexts = np.stack([vocab.encode("the nurse said that she would type the letters today"),
                       vocab.encode("the pilot said that he would fly the plane today"),
                       vocab.encode("john works as a surgeon and he loves it")])
  x, y, a, b = text_metrics.word_sets(contexts, text_metrics.MALE_JOBS, text_metrics.FEMALE_JOBS, vocab)
  assert (x, y) == (("he",), ("she",))  # "john" has no "mary" here
  assert set(a) == {"pilot", "surgeon"} and b == ("nurse",)
  with pytest.raises(ValueError, match="generic_contexts"):
    text_metrics.word_sets(contexts[:1], text_metrics.MALE_JOBS, text_metrics.FEMALE_JOBS, vocab)


def test_validation_names_the_field():
  c = config_lib.get_config("tiny")
  c.population.task_biases = (0.0, 1.5)
  with pytest.raises(ValueError, match="population.task_biases"):
    text_metrics.validate(c)


@pytest.mark.slow
def test_tiny_study_end_to_end_and_rerun(tmp_path):
  c = config_lib.get_config("tiny")
  c.progress = False
  workdir = str(tmp_path / "tm")
  results = text_metrics.run(c, workdir)
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert len(saved["models"]) == 4
  assert {(r["intrinsic"], r["aligned_data"], r["model"]) for r in saved["correlation"]} == {
      ("ceat_generic_professions", False, "pretrained"), ("ceat_task_duties", True, "pretrained"),
      ("ceat_task_duties_finetuned", True, "finetuned")}
  for r in saved["correlation"]:
    assert set(r) >= {"intrinsic", "extrinsic", "spearman", "ci", "aligned_data"}
    assert -1 <= r["spearman"] <= 1
  assert {r["metric"] for r in saved["sensitivity"]} >= {"accumulated_prediction_sensitivity",
                                                         "relative_prediction_sensitivity", "counterfactual"}
  assert {(r["metric"], r["bias_level"]) for r in saved["validity"]} >= {("ceat_generic_professions", "lm_bias")}
  for m in saved["models"]:
    assert m["accumulated_prediction_sensitivity"] >= 0 and m["relative_prediction_sensitivity"] >= 0
    assert 0 <= m["counterfactual"] <= 1
    assert np.isfinite(m["ceat_generic_professions"]) and np.isfinite(m["ceat_task_duties"])
  for name in ("intrinsic_vs_extrinsic", "sensitivity_vs_bias"):
    assert os.path.getsize(os.path.join(workdir, "figures", f"{name}.png")) > 5_000
  # A rerun trains nothing: every stage is recorded, and the per-model metrics come back as they were.
  stamp = os.path.getmtime(os.path.join(workdir, "lm_small", "params.msgpack"))
  again = text_metrics.run(c, workdir)
  assert os.path.getmtime(os.path.join(workdir, "lm_small", "params.msgpack")) == stamp
  assert again["models"] == json.loads(json.dumps(results["models"]))
