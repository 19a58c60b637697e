"""PATE-ASR building blocks: data roles, speaker partition, the noisy ensemble labeler and
the budget prefix."""


import dataclasses

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


def test_query_cap_stops_an_utterance_unlabeled_and_keeps_the_shorter_ones(tiny_teachers):
  """With a cap of c queries, an utterance that needs more stops after c, unlabeled; the
  others are answered exactly as without the cap."""
  model, params, feats, lens = tiny_teachers
  cfg = aggregation.AggregatorConfig("plurality")
  free = jax.device_get(aggregation.make_labeler(model, cfg, max_symbols_per_frame=4)(params, feats, lens,
                                                                                       jax.random.key(0)))
  cap = int(np.median(free["num_queries"]))
  assert free["num_queries"].max() > cap  # some utterance needs more than the cap
  capped = jax.device_get(aggregation.make_labeler(model, cfg, max_symbols_per_frame=4,
                                                   max_queries_per_utterance=cap)(params, feats, lens,
                                                                                  jax.random.key(0)))
  assert capped["votes"].shape[1] == cap and (capped["num_queries"] <= cap).all()
  for b in range(4):
    if free["num_queries"][b] <= cap:
      assert capped["labeled"][b] == free["labeled"][b]
      assert capped["counts"][b] == free["counts"][b]
      assert (capped["tokens"][b, : free["counts"][b]] == free["tokens"][b, : free["counts"][b]]).all()
    else:
      assert capped["num_queries"][b] == cap and not capped["labeled"][b]
  with pytest.raises(ValueError, match="max_queries_per_utterance"):
    aggregation.make_labeler(model, cfg, max_symbols_per_frame=4, decode="frame_sync", max_queries_per_utterance=3)


def test_labels_subset_keeps_each_utterances_answers():
  rng = np.random.default_rng(0)
  votes = [rng.integers(0, 3, (q, 5)) for q in (2, 0, 3)]
  labels = aggregation.Labels([np.array([1]), np.zeros(0, np.int32), np.array([2, 3])], np.array([True, False, True]),
                              votes, [np.ones(len(v), bool) for v in votes])
  sub = labels.subset([2, 0])
  assert [t.tolist() for t in sub.tokens] == [[2, 3], [1]] and sub.labeled.tolist() == [True, True]
  assert (sub.votes[0] == votes[2]).all() and (sub.votes[1] == votes[0]).all()


def test_query_plan_meets_every_target_formally_from_public_config_only():
  """The plan is a function of the config: each run's noise is the least whose formal epsilon
  for its utterance count meets the target (checked against privacy.formal_epsilon), and a
  target below the cost of a smooth-sensitivity release is met by dropping the release."""
  from projects.pate_asr import privacy, sweep  # pylint: disable=import-outside-toplevel
  pcfg = sweep_configs.get_config("quick").pate
  plan = sweep.query_plan(pcfg)
  assert plan[0].method == "plurality" and plan[0].count == max(pcfg.query_utterances)
  assert len(plan) == 1 + len(pcfg.methods) * len(pcfg.target_epsilons)
  for q in plan[1:]:
    eps = privacy.formal_epsilon(q.aggregator, q.analysis, q.count)
    assert eps <= q.target
    # 5% less noise would break the target: the calibration is tight.
    noisier = dataclasses.replace(q.aggregator, sigma=q.aggregator.sigma * 0.95, scale=q.aggregator.scale * 0.95,
                                  sigma_threshold=q.aggregator.sigma_threshold * 0.95)
    assert privacy.formal_epsilon(noisier, q.analysis, q.count) > q.target
    if q.method in privacy.RELEASED_METHODS and q.target < 1.5:
      assert not q.analysis.release  # a release alone costs more than this target
  assert [q.name for q in sweep.query_plan(pcfg)] == [q.name for q in plan]
