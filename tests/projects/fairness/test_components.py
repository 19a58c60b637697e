"""The fairness project's own pieces: speaker batches, speaker means, held-out cohort gaps, data checks."""

import numpy as np
import pytest

from libs.data import pipeline
from projects.fairness import cohorts as cohorts_mod
from projects.fairness import data as data_lib
from projects.fairness import recognizer
from projects.fairness import speaker as speaker_mod
from projects.fairness import validation
from projects.fairness.configs import cohorts as cohorts_configs


def _split(speakers, per_speaker, lengths=(30, 50, 80)):
  rng = np.random.default_rng(0)
  feats, ids = [], []
  for s in range(speakers):
    for u in range(per_speaker):
      feats.append(rng.standard_normal((lengths[(s + u) % len(lengths)], 5)).astype(np.float32))
      ids.append(1000 + s)
  n = len(feats)
  meta = {"speaker_id": np.array(ids), "accent": np.array(["a", "b"] * (n // 2) + ["a"] * (n % 2)),
          "gender": np.array(["female"] * n), "region": np.array(["r"] * n),
          "latitude": np.zeros(n, np.float32), "longitude": np.zeros(n, np.float32)}
  return pipeline.SpeechSplit(feats, [np.array([1], np.int32)] * n, ["one"] * n, [f"u{i}" for i in range(n)], meta)


def test_pair_batcher_is_p_speakers_by_m_utterances_and_a_function_of_the_step():
  split = _split(speakers=6, per_speaker=5)
  b = speaker_mod.PairBatcher(split, speakers_per_batch=3, utterances_per_speaker=2, crop_frames=40, seed=7)
  batch = b.batch(4)
  assert batch["features"].shape == (6, 40, 5) and list(batch["labels"]) == [0, 0, 1, 1, 2, 2]
  assert np.all(batch["lengths"] <= 40) and np.all(batch["lengths"] >= 30)
  # Frames past a crop's length are zero, and every crop is a window of one of its speaker's utterances.
  for row in range(6):
    assert not batch["features"][row, batch["lengths"][row]:].any()
  again = speaker_mod.PairBatcher(split, 3, 2, 40, seed=7).batch(4)
  assert all(np.array_equal(batch[k], again[k]) for k in batch)
  assert not np.array_equal(batch["features"], b.batch(5)["features"])


def test_pair_batcher_rejects_too_few_speakers():
  with pytest.raises(ValueError, match="speakers_per_batch=4"):
    speaker_mod.PairBatcher(_split(speakers=3, per_speaker=4), 4, 2, 40, seed=0)


def test_speaker_means_are_renormalized_means_of_each_speakers_utterances():
  emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
  means = speaker_mod.speaker_means(emb, np.array([0, 0, 1, 1]), 2)
  expected0 = np.array([1.0, 1.0]) / np.sqrt(2)
  expected1 = np.array([1.6, 0.8]) / np.linalg.norm([1.6, 0.8])
  np.testing.assert_allclose(means, [expected0, expected1], rtol=1e-12)


def test_held_out_gap_against_a_direct_computation():
  config = cohorts_configs.get_config("tiny")
  split = _split(speakers=6, per_speaker=2)
  table = data_lib.speaker_table(split)
  errors = np.array([3, 2, 1, 0, 1, 1, 0, 1, 2, 2, 0, 0])
  words = np.full(12, 10)
  bottom = np.array([True, False, False, False, True, False])
  gap = cohorts_mod.held_out_gap(config, recognizer.Scores(errors, words), table, bottom, "x")
  in_bottom = bottom[table.utterance_speaker]
  wer_b = errors[in_bottom].sum() / words[in_bottom].sum()
  wer_r = errors[~in_bottom].sum() / words[~in_bottom].sum()
  assert gap["wer_gap"] == pytest.approx((wer_b - wer_r) / wer_r)
  assert gap["bottom_share"] == pytest.approx(2 / 6)
  assert gap["wer_gap_ci"][0] <= gap["wer_gap"] <= gap["wer_gap_ci"][1]
  none = cohorts_mod.held_out_gap(config, recognizer.Scores(errors, words), table, np.zeros(6, bool), "x")
  assert none["wer_gap"] is None and "no test speaker" in none["note"]


def test_speaker_table_rows_and_utterance_index():
  split = _split(speakers=3, per_speaker=2)
  t = data_lib.speaker_table(split)
  assert list(t.speaker_ids) == [1000, 1001, 1002]
  np.testing.assert_array_equal(t.speaker_ids[t.utterance_speaker], split.metadata["speaker_id"])


def test_load_refuses_a_corpus_without_speaker_locations():
  config = cohorts_configs.get_config("tiny")
  config.data.corpus = "librispeech"
  with pytest.raises(ValueError, match="config.data.corpus must be 'synthetic'"):
    data_lib.load(config)


@pytest.mark.parametrize("field, value, match", [
    ("speaker.utterances_per_speaker", 1, "speaker.utterances_per_speaker"),
    ("cohorts.k_values", (1, 2), "cohorts.k_values"),
    ("cohorts.confidence", 1.0, "cohorts.confidence"),
    ("mode", "other", "config.mode"),
])
def test_validation_names_the_bad_field(field, value, match):
  config = cohorts_configs.get_config("quick")
  section, _, name = field.rpartition(".")
  target = config[section] if section else config
  target[name] = value
  with pytest.raises(ValueError, match=match):
    validation.validate(config)

