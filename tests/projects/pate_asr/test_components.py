"""PATE-ASR building blocks: data roles, speaker partition, the noisy ensemble labeler and
the budget prefix."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from libs.data import pipeline
from libs.models import asr as asr_lib
from projects.pate_asr import aggregation, ensemble, partition
from projects.pate_asr.configs import sweep as sweep_configs


def _fake_split(speakers, accents, per_speaker=3):
  n = len(speakers) * per_speaker
  spk = np.repeat(speakers, per_speaker)
  acc = np.repeat(accents, per_speaker)
  return pipeline.SpeechSplit(
      features=[np.zeros((20, 80), np.float32)] * n, labels=[np.array([3, 4], np.int32)] * n,
      transcripts=["ab"] * n, utterance_ids=[f"u{i}" for i in range(n)],
      metadata={"speaker_id": spk, "accent": acc})


def test_roles_are_speaker_disjoint_and_follow_the_scenario():
  speakers = np.arange(20)
  accents = np.array(["a"] * 10 + ["b"] * 6 + ["c"] * 4)
  split = _fake_split(speakers, accents)
  roles = partition.split_roles(split, scenario="matched", public_fraction=0.25, seed=0)
  assert not set(roles.sensitive_speakers) & set(roles.public_speakers)
  assert sorted(roles.sensitive_speakers + roles.public_speakers) == list(range(20))
  assert len(roles.sensitive) + len(roles.public) == len(split)
  assert set(roles.public.metadata["speaker_id"]) == set(roles.public_speakers)
  mismatched = partition.split_roles(split, scenario="mismatched", public_fraction=0.25, seed=0,
                                     public_accents=("c",))
  assert set(mismatched.public.metadata["accent"]) == {"c"}
  assert "c" not in set(mismatched.sensitive.metadata["accent"])
  with pytest.raises(ValueError, match="config.pate.public_accents"):
    partition.split_roles(split, scenario="mismatched", public_fraction=0.25, seed=0, public_accents=("zz",))


def test_speaker_partition_puts_every_speaker_in_exactly_one_part():
  rng = np.random.default_rng(0)
  speakers = np.arange(30)
  split = _fake_split(speakers, np.array(["a"] * 30), per_speaker=1)
  split = split.subset(np.repeat(np.arange(30), rng.integers(1, 6, 30)))  # unequal speaker sizes
  parts = partition.speaker_partition(split, 7, seed=0)
  owner = {}
  for p, idx in enumerate(parts):
    for s in split.metadata["speaker_id"][idx]:
      assert owner.setdefault(int(s), p) == p  # a speaker never spans two parts
  assert len(owner) == 30 and sorted(np.concatenate(parts).tolist()) == list(range(len(split)))
  sizes = [len(p) for p in parts]
  assert max(sizes) - min(sizes) <= 5  # balanced up to one speaker's data
  with pytest.raises(ValueError, match="num_teachers"):
    partition.speaker_partition(split, 31, seed=0)


@pytest.fixture(scope="module")
def tiny_teachers():
  model = asr_lib.build_model(sweep_configs.get_config("tiny").model, 29)
  params = ensemble.init_stacked(model, jax.random.key(0), 3)
  params = jax.tree.map(lambda p: p * 2.0, params)  # so the untrained teachers emit labels
  rng = np.random.default_rng(0)
  feats = jnp.asarray(rng.standard_normal((4, 40, 80)), jnp.float32)
  return model, params, feats, jnp.array([40, 33, 20, 9])


@pytest.mark.parametrize("decode", aggregation.DECODES)
def test_noiseless_labeler_with_one_teacher_is_greedy_decoding(tiny_teachers, decode):
  model, params, feats, lens = tiny_teachers
  one = jax.tree.map(lambda p: p[:1], params)
  labeler = aggregation.make_labeler(model, aggregation.AggregatorConfig("plurality"), max_symbols_per_frame=4,
                                     decode=decode)
  out = jax.device_get(labeler(one, feats, lens, jax.random.key(0)))
  ids, counts = jax.device_get(ensemble.make_ensemble_decode(model)(one, feats, lens))
  assert (out["counts"] == counts[0]).all() and out["counts"].sum() > 0
  capacity = 4 * ((feats.shape[1] + 3) // 4)  # padded 4x-subsampled frames * max symbols per frame
  for b in range(4):
    assert (out["tokens"][b, : counts[0, b]] == ids[0, b, : counts[0, b]]).all()
    if decode == "frame_sync":
      # One query per frame advance plus one per emitted label (no forced advances here).
      assert out["num_queries"][b] >= counts[0, b]
    else:
      # One query per label, plus the final "end" unless the label buffer filled up.
      assert out["num_queries"][b] == counts[0, b] + (counts[0, b] < capacity)


def test_label_sync_majority_decodes_like_the_majority_teacher(tiny_teachers):
  """Three copies of teacher A and one other teacher: plurality releases A's own greedy
  transcript, and in every query A's three votes sit on the released symbol."""
  model, params, feats, lens = tiny_teachers
  four = jax.tree.map(lambda p: jnp.stack([p[0], p[0], p[0], p[1]]), params)
  out = jax.device_get(aggregation.make_labeler(model, aggregation.AggregatorConfig("plurality"),
                                                max_symbols_per_frame=4)(four, feats, lens, jax.random.key(0)))
  ids, counts = jax.device_get(ensemble.make_ensemble_decode(model)(jax.tree.map(lambda p: p[:1], params),
                                                                    feats, lens))
  assert (out["counts"] == counts[0]).all()
  for b in range(4):
    assert (out["tokens"][b, : counts[0, b]] == ids[0, b, : counts[0, b]]).all()
    q = out["num_queries"][b]
    released = list(ids[0, b, : counts[0, b]]) + [0] * (q - counts[0, b])  # then "end" (blank)
    assert all(out["votes"][b, i, released[i]] >= 3 for i in range(q))


def test_unknown_decode_is_rejected(tiny_teachers):
  with pytest.raises(ValueError, match="decode"):
    aggregation.make_labeler(tiny_teachers[0], aggregation.AggregatorConfig("plurality"), max_symbols_per_frame=4,
                             decode="beam")


@pytest.mark.parametrize("decode", aggregation.DECODES)
def test_every_query_holds_one_vote_per_teacher(tiny_teachers, decode):
  model, params, feats, lens = tiny_teachers
  for cfg in (aggregation.AggregatorConfig("gnmax", sigma=0.5),
              aggregation.AggregatorConfig("confident_gnmax", sigma=0.5, threshold=2.5, sigma_threshold=0.5)):
    out = jax.device_get(aggregation.make_labeler(model, cfg, max_symbols_per_frame=3, decode=decode)(
        params, feats, lens, jax.random.key(1)))
    for b in range(4):
      q = out["num_queries"][b]
      assert (out["votes"][b, :q].sum(-1) == 3).all() and (out["votes"][b, q:] == 0).all()
      if cfg.name == "gnmax":
        assert out["labeled"][b] and out["answered"][b, :q].all()
      elif not out["labeled"][b]:
        assert not out["answered"][b, q - 1]  # stopped at the first unanswered step
