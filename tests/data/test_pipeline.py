"""Featurized splits and deterministic, bucketed batches."""

import numpy as np
import pytest

from libs.data import pipeline
from libs.speech import features
from libs.speech.tokenizer import CharTokenizer


@pytest.fixture(scope="module")
def train_split(tiny_builder):
  return pipeline.load_split(tiny_builder, "train", CharTokenizer())


def test_load_split_features_labels_metadata(train_split, tiny_builder):
  source = tiny_builder.as_data_source("train")
  assert len(train_split) == len(source)
  tok = CharTokenizer()
  for f, l, t in zip(train_split.features, train_split.labels, train_split.transcripts):
    assert f.shape[1] == 80 and np.isfinite(f).all()
    assert tok.decode(l) == t
  by_id = {e["utterance_id"].decode(): e for e in source}
  uid = train_split.utterance_ids[0]
  assert len(train_split.features[0]) == features.num_frames(len(by_id[uid]["audio"]))
  assert train_split.metadata["accent"][0] == by_id[uid]["accent"].decode()
  assert train_split.utterance_ids == sorted(train_split.utterance_ids)


def test_batcher_is_a_deterministic_function_of_step(train_split):
  a = pipeline.Batcher(train_split, 4, seed=3, num_buckets=2)
  b = pipeline.Batcher(train_split, 4, seed=3, num_buckets=2)
  for step in [5, 0, 13, 5]:
    x, y = a.batch(step), b.batch(step)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  # One epoch visits distinct utterances, each at most once.
  seen = np.concatenate([a.batch(s)["index"] for s in range(a.steps_per_epoch)])
  assert len(seen) == len(set(seen.tolist())) == a.steps_per_epoch * 4
  # Another seed, another order.
  c = pipeline.Batcher(train_split, 4, seed=4, num_buckets=2)
  assert not all(np.array_equal(a.batch(s)["index"], c.batch(s)["index"]) for s in range(a.steps_per_epoch))


def test_batches_hold_the_right_padded_data(train_split):
  batcher = pipeline.Batcher(train_split, 4, seed=0, num_buckets=2)
  batch = batcher.batch(1)
  assert batch["features"].shape[1] in batcher.buckets
  for row, i in enumerate(batch["index"]):
    n = train_split.feature_lengths[i]
    np.testing.assert_array_equal(batch["features"][row, :n], train_split.features[i])
    assert not batch["features"][row, n:].any()
    assert batch["labels"][row, : batch["label_lengths"][row]].tolist() == train_split.labels[i].tolist()


def test_eval_batches_cover_every_utterance_once(train_split):
  seen = []
  for batch in pipeline.eval_batches(train_split, 5):
    assert batch["features"].shape[0] == 5
    real = batch["index"] >= 0
    assert (batch["weights"] == real).all()
    seen += batch["index"][real].tolist()
  assert sorted(seen) == list(range(len(train_split)))


def test_bad_batch_sizes(train_split):
  with pytest.raises(ValueError, match="batch_size"):
    pipeline.Batcher(train_split, 0, seed=0)
  with pytest.raises(ValueError, match="fewer than batch_size"):
    pipeline.Batcher(train_split, 10_000, seed=0)
