"""Counterfactual role-reversal distillation: the polarity metric by hand, config checks, and the
tiny config end to end in-process (its numbers mean nothing; a rerun skips both trainings)."""

import json
import os

import numpy as np
import pytest

from libs.data import gender_text as gt
from projects.fairness import distill
from projects.fairness.configs import distill as distill_configs


def _sequence(vocab, prompt: str, continuation: str):
  ids = [gt.BOS] + [vocab.index[w] for w in prompt.split()]
  length = len(ids)
  ids += [vocab.index[w] for w in continuation.split()] + [gt.EOS]
  return np.array(ids + [gt.PAD] * (gt.MAX_LEN - len(ids)), np.int32), length


def test_polarity_matches_a_hand_computed_example():
  vocab = gt.vocabulary()
  surgeon, nurse = gt.PROFESSIONS.index("surgeon"), gt.PROFESSIONS.index("nurse")
  cases = [
      # (prompt, continuation, profession): per-continuation polarity in the comment.
      ("my brother works as a surgeon and", "he loves it", surgeon),                       # +1 (prompt excluded)
      ("my sister works as a surgeon and", "she loves it", surgeon),                       # -1
      ("the surgeon said that", "he would ask his sister", surgeon),                       # (2 - 1) / 3
      ("the surgeon said that", "the shop is open", surgeon),                              # 0: no gendered word
      ("the nurse said that", "she would help her", nurse),                                # -1
      ("the nurse told me", "he has to go", nurse),                                        # +1
      ("ask the nurse if", "she can", nurse),                                              # -1
  ]
  rows = [_sequence(vocab, p, c) for p, c, _ in cases]
  tokens = np.stack([r[0] for r in rows])
  lengths = np.array([r[1] for r in rows])
  profs = np.array([c[2] for c in cases])
  # Words after EOS do not count: a stray "she" past the end.
  tokens[3, -1] = vocab.index["she"]
  out = distill.polarity(tokens, lengths, profs, vocab)
  p_surgeon = (1 - 1 + 1 / 3 + 0) / 4
  p_nurse = (-1 + 1 - 1) / 3
  assert out["per_profession"][surgeon] == pytest.approx(p_surgeon)
  assert out["per_profession"][nurse] == pytest.approx(p_nurse)
  assert out["polarity"] == pytest.approx((abs(p_surgeon) + abs(p_nurse)) / 2)
  # STEREOTYPE: surgeon +1, nurse -1; both lean to their stereotype here.
  assert out["stereotype_polarity"] == pytest.approx((p_surgeon - p_nurse) / 2)
  assert out["gendered_share"] == pytest.approx(6 / 7)


def test_continuation_counts_exclude_the_prompt_and_stop_at_eos():
  vocab = gt.vocabulary()
  seq, length = _sequence(vocab, "my father works as a pilot and", "his friends say he is proud of it and her")
  m, f = distill.continuation_counts(seq[None], np.array([length]), vocab)
  assert (int(m[0]), int(f[0])) == (2, 1)  # his, he | her; "father" is in the prompt


@pytest.mark.parametrize("field, value, message", [
    ("data.bias", 1.5, "config.data.bias must be a number in [0, 1]"),
    ("student.batch_size", 7, "config.student.batch_size must be even"),
    ("teacher.dim", 30, "config.teacher.dim must be a multiple of teacher.num_heads"),
    ("distill.alpha", -0.1, "config.distill.alpha must be a number in [0, 1]"),
    ("distill.temperature", 0.0, "config.distill.temperature must be a number in (0, 100]"),
    ("generate.samples_per_prompt", 0, "config.generate.samples_per_prompt must be an integer >= 1"),
    ("distill.seeds", 0, "config.distill.seeds must be an integer >= 1"),
])
def test_validate_names_the_field(field, value, message):
  config = distill_configs.get_config("quick")
  distill.validate(config)
  section, key = field.split(".")
  config[section][key] = value
  with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(").replace("[", r"\[")):
    distill.validate(config)


@pytest.mark.slow
def test_tiny_runs_every_method_and_a_rerun_skips_training(tmp_path, capsys):
  config = distill_configs.get_config("tiny")
  config.progress = False
  workdir = str(tmp_path / "distill")
  results = distill.run(config, workdir)
  rows = results["distillation"]
  assert [r["method"] for r in rows] == ["teacher", "distill", "cda", "perturb", "both"]
  for r in rows:
    assert 0.0 <= r["polarity"] <= 1.0 and -1.0 <= r["stereotype_polarity"] <= 1.0
    assert abs(r["stereotype_polarity"]) <= r["polarity"] + 1e-12
    assert np.isfinite(r["perplexity"]) and r["perplexity"] >= 1.0
    assert np.isfinite(r["perplexity_balanced"]) and r["perplexity_balanced"] >= 1.0
    assert len(r["per_seed"]) == (1 if r["method"] == "teacher" else config.distill.seeds)
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    written = json.load(f)
  assert written["distillation"] == rows and written["config"]["mode"] == "distill"
  assert os.path.getsize(os.path.join(workdir, "figures", "distill_polarity_perplexity.png")) > 5_000
  assert "perturb" in capsys.readouterr().out
  params = [os.path.join(workdir, s, "params.msgpack") for s in ("teacher", "students")]
  mtimes = [os.stat(p).st_mtime_ns for p in params]
  again = distill.run(config, workdir)
  assert [os.stat(p).st_mtime_ns for p in params] == mtimes  # neither stage trained again
  assert again["distillation"] == rows  # evaluation is deterministic
  # A rerun with another model size on the same workdir fails with a clear error, losing nothing.
  config.student.dim = 16
  with pytest.raises(ValueError, match="trained with another config"):
    distill.run(config, workdir)
  assert [os.stat(p).st_mtime_ns for p in params] == mtimes
