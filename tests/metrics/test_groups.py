"""Tests for libs/metrics/groups.py against brute-force loops, fairlearn's MetricFrame and known truths."""


import numpy as np
import pytest

from libs.metrics import groups as gmod
from libs.metrics.groups import GroupMetrics, bootstrap


def _asr_data(seed, num_speakers=60, utts=6, num_groups=3):
  """Random utterances: speakers nested in groups, varying reference lengths."""
  rng = np.random.default_rng(seed)
  spk = np.repeat(np.arange(num_speakers), utts)
  grp = np.array(["g%d" % (s % num_groups) for s in spk])
  words = rng.integers(1, 25, spk.size)
  errors = rng.binomial(words, 0.05 + 0.1 * (spk % num_groups) / num_groups)
  return errors, words, grp, spk


def _brute_force(errors, words, grp, higher_is_better=False):
  """Loop-over-examples reference for group metrics and the worst-group gap."""
  tot = {}
  for e, w, g in zip(errors, words, grp):
    ne, nw, nx = tot.get(g, (0.0, 0.0, 0))
    tot[g] = (ne + e, nw + w, nx + 1)
  by_group = {g: tot[g][0] / tot[g][1] for g in sorted(tot)}
  overall = sum(t[0] for t in tot.values()) / sum(t[1] for t in tot.values())
  pick = min if higher_is_better else max
  worst = pick(sorted(by_group), key=lambda g: by_group[g])
  rest_e = sum(e for e, g in zip(errors, grp) if g != worst)
  rest_w = sum(w for w, g in zip(words, grp) if g != worst)
  rest = rest_e / rest_w
  sign = -1 if higher_is_better else 1
  return dict(by_group=by_group, overall=overall, worst=worst, rest=rest,
              abs_rest=sign * (by_group[worst] - rest), rel_rest=sign * (by_group[worst] - rest) / rest,
              abs_overall=sign * (by_group[worst] - overall),
              rel_overall=sign * (by_group[worst] - overall) / overall,
              share=sum(1 for g in grp if g == worst) / len(grp))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_wer_and_gap_match_brute_force(seed):
  errors, words, grp, spk = _asr_data(seed)
  ref = _brute_force(errors, words, grp)
  gm = GroupMetrics(errors, words, groups=grp, clusters=spk, higher_is_better=False, name="wer")
  assert gm.by_group.keys() == ref["by_group"].keys()
  np.testing.assert_allclose(list(gm.by_group.values()), list(ref["by_group"].values()), rtol=1e-12)
  assert gm.overall == pytest.approx(ref["overall"], rel=1e-12)
  vals = list(ref["by_group"].values())
  assert gm.group_max() == pytest.approx(max(vals)) and gm.group_min() == pytest.approx(min(vals))
  assert gm.difference() == pytest.approx(max(vals) - min(vals))
  assert gm.difference("to_overall") == pytest.approx(max(abs(v - ref["overall"]) for v in vals))
  assert gm.ratio() == pytest.approx(min(vals) / max(vals))
  assert gm.ratio("to_overall") == pytest.approx(
      min(min(v / ref["overall"], ref["overall"] / v) for v in vals))

  gap = gm.gap()
  assert gap.worst_group == ref["worst"] == gm.worst_group
  assert gap.reference_value == pytest.approx(ref["rest"])
  assert gap.absolute == pytest.approx(ref["abs_rest"]) and gap.absolute > 0
  assert gap.relative == pytest.approx(ref["rel_rest"])
  assert gap.example_share == pytest.approx(ref["share"])
  worst_speakers = {s for s, g in zip(spk, grp) if g == ref["worst"]}
  assert gap.cluster_share == pytest.approx(len(worst_speakers) / len(set(spk)))
  assert gap.denominator_share == pytest.approx(words[grp == ref["worst"]].sum() / words.sum())
  gap_o = gm.gap("overall")
  assert gap_o.absolute == pytest.approx(ref["abs_overall"])
  assert gap_o.relative == pytest.approx(ref["rel_overall"])
  assert 0 < gap_o.absolute < gap.absolute  # The overall includes the worst group.


def test_higher_is_better_picks_lowest_group():
  rng = np.random.default_rng(3)
  correct = rng.random(300) < np.repeat([0.9, 0.6, 0.8], 100)
  grp = np.repeat(["a", "b", "c"], 100)
  ref = _brute_force(correct.astype(float), np.ones(300), grp, higher_is_better=True)
  gap = GroupMetrics(correct, groups=grp, higher_is_better=True).gap()
  assert gap.worst_group == ref["worst"] == "b"
  assert gap.absolute == pytest.approx(ref["abs_rest"]) and gap.absolute > 0
  assert gap.relative == pytest.approx(ref["rel_rest"])


def test_wer_is_corpus_level_not_mean_of_utterance_wers():
  # One short utterance with 1 error of 1 word and one long perfect one: corpus WER 1/21, mean 0.5.
  gm = GroupMetrics([1, 0], [1, 20], groups=["a", "a"], higher_is_better=False)
  assert gm.overall == pytest.approx(1 / 21)
  assert gm.by_group["a"] == pytest.approx(1 / 21)


def test_plain_metric_matches_fairlearn_metricframe():
  fairlearn_metrics = pytest.importorskip("fairlearn.metrics")
  from sklearn.metrics import accuracy_score  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(4)
  y_true = rng.integers(0, 2, 500)
  grp = rng.choice(["f", "m", "x", "y"], 500, p=[0.4, 0.4, 0.15, 0.05])
  flip = rng.random(500) < np.where(grp == "y", 0.4, 0.15)
  y_pred = np.where(flip, 1 - y_true, y_true)
  mf = fairlearn_metrics.MetricFrame(metrics=accuracy_score, y_true=y_true, y_pred=y_pred,
                                     sensitive_features=grp)
  gm = GroupMetrics(y_true == y_pred, groups=grp, higher_is_better=True, name="accuracy")
  assert gm.overall == pytest.approx(mf.overall, rel=1e-12)
  assert gm.by_group == pytest.approx(mf.by_group.to_dict(), rel=1e-12)
  for method in ("between_groups", "to_overall"):
    assert gm.difference(method) == pytest.approx(mf.difference(method=method), rel=1e-12)
    assert gm.ratio(method) == pytest.approx(mf.ratio(method=method), rel=1e-12)
  assert gm.group_min() == pytest.approx(mf.group_min()) and gm.group_max() == pytest.approx(mf.group_max())
  assert gm.worst_group == mf.by_group.idxmin()


def test_ratio_metric_matches_fairlearn_with_sample_params():
  fairlearn_metrics = pytest.importorskip("fairlearn.metrics")
  errors, words, grp, _ = _asr_data(5)
  pooled = lambda y_true, y_pred: np.sum(y_true) / np.sum(y_pred)  # errors / words, pooled.
  mf = fairlearn_metrics.MetricFrame(metrics=pooled, y_true=errors, y_pred=words, sensitive_features=grp)
  gm = GroupMetrics(errors, words, groups=grp, higher_is_better=False)
  assert gm.by_group == pytest.approx(mf.by_group.to_dict(), rel=1e-12)
  assert gm.ratio("to_overall") == pytest.approx(mf.ratio(method="to_overall"), rel=1e-12)


def test_levels_order_and_int_labels_and_summary():
  gm = GroupMetrics([1, 0, 1], groups=[2, 1, 2], higher_is_better=True, levels=[2, 1])
  assert gm.groups == [2, 1] and gm.by_group == {2: 1.0, 1: 0.0}
  s = gm.summary()
  assert s["by_group"] == {"2": 1.0, "1": 0.0} and s["gap"]["worst_group"] == "1"


def _clustered(rng, num_speakers, utts, p, spread):
  """Errors with a speaker random effect: speaker rates ~ Beta with mean p, 10 words per utterance."""
  a = p * (1 / spread - 1)
  rates = rng.beta(a, (1 - p) / p * a, num_speakers)
  return rng.binomial(10, np.repeat(rates, utts)), np.full(num_speakers * utts, 10)


def _coverage(clusters_on, reps=200, speakers=40, utts=5):
  """Coverage of 95% intervals over `reps` data sets with known truth (speaker or utterance bootstrap).

  Three groups of `speakers` speakers, true WERs 0.30 (worst), 0.10, 0.14: the true rest WER is 0.12,
  the true gaps 0.18 (absolute) and 1.5 (relative).
  """
  rng = np.random.default_rng(0)
  true = [0.30, 0.10, 0.14]
  truth = {"g0": 0.30, "g1": 0.10, "g2": 0.14, "overall": np.mean(true), "abs": 0.18, "rel": 1.5}
  grp = np.repeat(["g0", "g1", "g2"], speakers * utts)
  spk = np.repeat(np.arange(3 * speakers), utts) if clusters_on else None
  hits = {k: 0 for k in truth}
  for _ in range(reps):
    parts = [_clustered(rng, speakers, utts, p, spread=0.05) for p in true]
    errors = np.concatenate([e for e, _ in parts])
    words = np.concatenate([w for _, w in parts])
    gm = GroupMetrics(errors, words, groups=grp, clusters=spk, higher_is_better=False)
    ci = bootstrap(gm, rng=rng, num_resamples=400)
    assert ci.gap_group == "g0"
    got = {**ci.by_group, "overall": ci.overall, "abs": ci.gap_absolute, "rel": ci.gap_relative}
    for k, t in truth.items():
      hits[k] += got[k].low <= t <= got[k].high
  return {k: h / reps for k, h in hits.items()}


def test_bootstrap_coverage_on_known_truth():
  coverage = _coverage(clusters_on=True)
  # Binomial(200, 0.95) lies in [0.90, 0.99] with probability > 0.99; percentile intervals on 40
  # clusters run slightly narrow, hence the lower bound of 0.88.
  assert all(0.88 <= c <= 0.995 for c in coverage.values()), coverage
  # Resampling utterances of these clustered speakers covers visibly less (about 0.8).
  naive = _coverage(clusters_on=False)
  assert np.mean(list(naive.values())) < 0.88, naive


def test_cluster_resampling_widens_intervals_on_clustered_data():
  rng = np.random.default_rng(1)
  parts = [_clustered(rng, 30, 20, p, spread=0.1) for p in (0.2, 0.1)]
  errors = np.concatenate([e for e, _ in parts])
  words = np.concatenate([w for _, w in parts])
  grp = np.repeat(["a", "b"], 600)
  spk = np.repeat(np.arange(60), 20)
  width = {}
  for name, clusters in (("speaker", spk), ("utterance", None)):
    gm = GroupMetrics(errors, words, groups=grp, clusters=clusters, higher_is_better=False)
    ci = bootstrap(gm, rng=np.random.default_rng(2), num_resamples=1000)
    width[name] = {"overall": ci.overall.high - ci.overall.low,
                   "a": ci.by_group["a"].high - ci.by_group["a"].low,
                   "gap": ci.gap_absolute.high - ci.gap_absolute.low}
  for k in width["speaker"]:
    assert width["speaker"][k] > 2 * width["utterance"][k], width


def test_unstratified_bootstrap_agrees_with_stratified_on_balanced_data():
  errors, words, grp, spk = _asr_data(6, num_speakers=300)
  gm = GroupMetrics(errors, words, groups=grp, clusters=spk, higher_is_better=False)
  a = bootstrap(gm, rng=np.random.default_rng(0), num_resamples=2000)
  b = bootstrap(gm, rng=np.random.default_rng(0), num_resamples=2000, stratify=False)
  assert not b.stratified and a.stratified
  for g in gm.groups:
    wa = a.by_group[g].high - a.by_group[g].low
    wb = b.by_group[g].high - b.by_group[g].low
    assert wb == pytest.approx(wa, rel=0.25)
    assert a.by_group[g].low < gm.by_group[g] < a.by_group[g].high


def test_bootstrap_is_deterministic_given_seed():
  errors, words, grp, spk = _asr_data(7)
  gm = GroupMetrics(errors, words, groups=grp, clusters=spk, higher_is_better=False)
  for stratify in (True, False):
    a = bootstrap(gm, rng=np.random.default_rng(11), num_resamples=300, stratify=stratify)
    b = bootstrap(gm, rng=np.random.default_rng(11), num_resamples=300, stratify=stratify)
    c = bootstrap(gm, rng=np.random.default_rng(12), num_resamples=300, stratify=stratify)
    for k in a.samples:
      np.testing.assert_array_equal(a.samples[k], b.samples[k])
    assert a.overall == b.overall and a.gap_relative == b.gap_relative
    assert not np.array_equal(a.samples["overall"], c.samples["overall"])


def test_bootstrap_chunking_keeps_resample_statistics(monkeypatch):
  # Small chunks must give the same kind of resamples: point estimates and invariants hold.
  errors, words, grp, spk = _asr_data(8)
  gm = GroupMetrics(errors, words, groups=grp, clusters=spk, higher_is_better=False)
  monkeypatch.setattr(gmod, "_MAX_DRAWS_PER_CHUNK", 100)
  ci = bootstrap(gm, rng=np.random.default_rng(0), num_resamples=50)
  s = ci.samples
  assert s["by_group"].shape == (50, 3) and np.isfinite(s["by_group"]).all()
  # Stratified: each group keeps its word total only up to resampling, but the overall is the pooled value.
  assert (s["overall"] >= s["by_group"].min(1) - 1e-12).all()
  assert (s["overall"] <= s["by_group"].max(1) + 1e-12).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(numerators=[1, 2], denominators=[1], groups=["a", "b"]),
     "denominators has 1 entries but numerators has 2"),
    (dict(numerators=[1, 2], denominators=[1, 1], groups=["a"]), "groups has 1 entries but there are 2"),
    (dict(numerators=[1, 2], groups=["a", "b"], clusters=[1]), "clusters has 1 entries"),
    (dict(numerators=[], groups=[]), "no examples"),
    (dict(numerators=[1, np.nan], groups=["a", "b"]), r"numerators\[1\] is nan"),
    (dict(numerators=[1, 1], denominators=[1, -1], groups=["a", "b"]), r"denominators\[1\] is -1"),
    (dict(numerators=[0, 1, 0], denominators=[0, 5, 0], groups=["quiet", "x", "quiet"]),
     "group 'quiet' sum to zero"),
    (dict(numerators=[1, 1], groups=["a", "b"], levels=["a", "b", "c"]), "group 'c' has no examples"),
    (dict(numerators=[1, 1], groups=["a", "z"], levels=["a", "b"]), r"not in levels: \['z'\]"),
    (dict(numerators=[[1, 1]], groups=["a"]), "one-dimensional"),
])
def test_bad_input_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    GroupMetrics(**kwargs, higher_is_better=False)


def test_gap_and_bootstrap_errors():
  one = GroupMetrics([1, 0], [2, 2], groups=["a", "a"], higher_is_better=False)
  with pytest.raises(ValueError, match="at least two groups"):
    one.gap()
  assert one.gap("overall").absolute == 0.0
  gm = GroupMetrics([1, 0, 1], [2, 2, 2], groups=["a", "b", "b"], clusters=[1, 1, 2], higher_is_better=False)
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="more than one group"):
    bootstrap(gm, rng=rng)
  with pytest.raises(TypeError, match="numpy.random.Generator"):
    bootstrap(gm, rng=0, stratify=False)
  with pytest.raises(ValueError, match="confidence"):
    bootstrap(gm, rng=rng, confidence=95, stratify=False)
  with pytest.raises(ValueError, match="num_resamples"):
    bootstrap(gm, rng=rng, num_resamples=0, stratify=False)
  with pytest.raises(ValueError, match="reference"):
    gm.gap("others")
  with pytest.raises(ValueError, match="method"):
    gm.difference("max")
  # A group of one speaker among many vanishes from some unstratified resamples: named in the error.
  rare = GroupMetrics(np.ones(21), np.ones(21), groups=["rare"] + ["common"] * 20, clusters=np.arange(21),
                      higher_is_better=False)
  with pytest.raises(ValueError, match="group 'rare' has zero denominator in"):
    bootstrap(rare, rng=rng, num_resamples=200, stratify=False)


@pytest.mark.parametrize("seed", [0, 1])
def test_gap_of_named_group_matches_brute_force(seed):
  errors, words, grp, spk = _asr_data(seed)
  gm = GroupMetrics(errors, words, groups=grp, clusters=spk, higher_is_better=False)
  assert gm.gap(group=None) == gm.gap()  # None keeps the worst group.
  for g in gm.groups:
    inside = grp == g
    wer_g = errors[inside].sum() / words[inside].sum()
    rest = errors[~inside].sum() / words[~inside].sum()
    overall = errors.sum() / words.sum()
    gap = gm.gap(group=g)
    assert gap.worst_group == g and gap.worst == pytest.approx(wer_g)
    assert gap.reference_value == pytest.approx(rest)
    assert gap.absolute == pytest.approx(wer_g - rest)
    assert gap.relative == pytest.approx((wer_g - rest) / rest)
    assert gap.cluster_share == pytest.approx(len(set(spk[inside])) / len(set(spk)))
    assert gm.gap("overall", group=g).relative == pytest.approx((wer_g - overall) / overall)
  best = gm.groups[int(np.argmin(list(gm.by_group.values())))]
  assert gm.gap(group=best).relative < 0  # A better group's gap is negative, not flipped.


def test_bootstrap_of_named_group():
  errors, words, grp, spk = _asr_data(9)
  gm = GroupMetrics(errors, words, groups=grp, clusters=spk, higher_is_better=False)
  best = gm.groups[int(np.argmin(list(gm.by_group.values())))]
  default = bootstrap(gm, rng=np.random.default_rng(0), num_resamples=300)
  worst = bootstrap(gm, rng=np.random.default_rng(0), num_resamples=300, group=gm.worst_group)
  np.testing.assert_array_equal(default.samples["gap_relative"], worst.samples["gap_relative"])
  ci = bootstrap(gm, rng=np.random.default_rng(0), num_resamples=300, group=best)
  assert ci.gap_group == best
  assert ci.gap_relative.estimate == pytest.approx(gm.gap(group=best).relative)
  assert ci.gap_relative.low <= ci.gap_relative.estimate <= ci.gap_relative.high < 0
  # Same draws, another group: the resampled per-group WERs are the same, only the gap differs.
  np.testing.assert_array_equal(ci.samples["by_group"], default.samples["by_group"])
  s = ci.samples["by_group"]
  b = gm.groups.index(best)
  others = np.delete(s, b, 1)
  rest = s[:, b] - ci.samples["gap_absolute"]  # The rest's WER pools the other groups: between them.
  assert (rest >= others.min(1) - 1e-12).all() and (rest <= others.max(1) + 1e-12).all()
  with pytest.raises(ValueError, match="group 'nope' is not one of the groups"):
    gm.gap(group="nope")
  with pytest.raises(ValueError, match="group 'nope' is not one of the groups"):
    bootstrap(gm, rng=np.random.default_rng(0), group="nope")
