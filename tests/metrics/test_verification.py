"""Tests for libs/metrics/verification.py against brute-force sweeps, counting and an analytic EER."""

import json
from collections import Counter

import numpy as np
import pytest
from scipy.stats import norm

from libs.metrics.verification import (cosine_scores, det_curve, eer, eer_summary, group_eer, make_trials,
                                       plot_det)


def _utterances(seed, num_speakers=12):
  rng = np.random.default_rng(seed)
  counts = rng.integers(1, 7, num_speakers)
  spk = np.repeat(np.array([f"s{k:02d}" for k in range(num_speakers)]), counts)
  gender = np.repeat(rng.choice(["f", "m"], num_speakers), counts)
  return spk[rng.permutation(spk.size)] if seed % 2 else spk, gender, counts


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("ratio", [0.5, 1.0, 3.0])
def test_trials_counts_and_pairs(seed, ratio):
  spk, _, counts = _utterances(seed)
  i, j, is_target = make_trials(spk, rng=np.random.default_rng(seed), nontarget_per_target=ratio)
  num_targets = int(sum(n * (n - 1) // 2 for n in Counter(spk.tolist()).values()))
  assert num_targets == int(sum(c * (c - 1) // 2 for c in counts))
  assert is_target.sum() == num_targets
  available = spk.size * (spk.size - 1) // 2 - num_targets
  assert (~is_target).sum() == min(round(ratio * num_targets), available)
  assert (i < j).all() and i.dtype == j.dtype == np.int64  # No self pairs, each pair once as i < j.
  assert len(set(zip(i.tolist(), j.tolist()))) == i.size
  assert (spk[i] == spk[j])[is_target].all() and (spk[i] != spk[j])[~is_target].all()
  # Every same-speaker pair is there.
  same = {(a, b) for a in range(spk.size) for b in range(a + 1, spk.size) if spk[a] == spk[b]}
  assert same == set(zip(i[is_target].tolist(), j[is_target].tolist()))


def test_trials_deterministic_and_uniform():
  spk = np.repeat(np.arange(40), 5)
  a = make_trials(spk, rng=np.random.default_rng(0))
  b = make_trials(spk, rng=np.random.default_rng(0))
  c = make_trials(spk, rng=np.random.default_rng(1))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0])
  # Uniform over different-speaker pairs: each speaker's share of non-target ends is about equal.
  i, j, t = make_trials(spk, rng=np.random.default_rng(2), nontarget_per_target=20)
  ends = np.bincount(np.concatenate([spk[i[~t]], spk[j[~t]]]), minlength=40)
  assert ends.min() > 0.8 * ends.mean() and ends.max() < 1.2 * ends.mean()


def test_trials_all_pairs_same_attribute_and_max_trials():
  spk, gender, _ = _utterances(4)
  # More non-targets asked than exist: all of them.
  i, j, t = make_trials(spk, rng=np.random.default_rng(0), nontarget_per_target=1e6)
  assert (~t).sum() == spk.size * (spk.size - 1) // 2 - t.sum()
  i, j, t = make_trials(spk, rng=np.random.default_rng(0), nontarget_per_target=2, same_attribute=gender)
  assert (gender[i] == gender[j])[~t].all() and (spk[i] != spk[j])[~t].all()
  assert (~t).sum() == 2 * t.sum() or (~t).sum() < 2 * t.sum()  # Capped by the same-gender pairs.
  i, j, t = make_trials(spk, rng=np.random.default_rng(0), nontarget_per_target=3, max_trials=40)
  assert i.size == 40 and 5 <= t.sum() <= 15 and (spk[i] == spk[j]).tolist() == t.tolist()


def test_trials_errors():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="no speaker with two utterances"):
    make_trials(["a", "b", "c"], rng=rng)
  with pytest.raises(ValueError, match="no pair of different speakers"):
    make_trials(["a", "a", "a"], rng=rng)
  with pytest.raises(ValueError, match="no pair of different speakers with the same attribute"):
    make_trials(["a", "a", "b"], rng=rng, same_attribute=["f", "f", "m"])
  with pytest.raises(ValueError, match="nontarget_per_target"):
    make_trials(["a", "a", "b"], rng=rng, nontarget_per_target=0)
  with pytest.raises(ValueError, match="same_attribute has 2 entries"):
    make_trials(["a", "a", "b"], rng=rng, same_attribute=["f", "f"])
  with pytest.raises(TypeError, match="numpy.random.Generator"):
    make_trials(["a", "a", "b"], rng=0)


def _brute_eer(scores, is_target):
  """Sweep every threshold (accept score >= t) from +inf down; interpolate where FNR - FPR changes sign."""
  tar, non = scores[is_target], scores[~is_target]
  thresholds = np.concatenate([[np.inf], np.unique(scores)[::-1]])
  fpr = np.array([(non >= t).mean() for t in thresholds])
  fnr = np.array([(tar < t).mean() for t in thresholds])
  for k in range(1, thresholds.size):
    if fnr[k] - fpr[k] <= 0:
      d0, d1 = fnr[k - 1] - fpr[k - 1], fnr[k] - fpr[k]
      w = d0 / (d0 - d1)
      thr = thresholds[k] if k == 1 else (1 - w) * thresholds[k - 1] + w * thresholds[k]
      return fpr[k - 1] + w * (fpr[k] - fpr[k - 1]), thr, fpr, fnr, thresholds
  raise AssertionError("FNR and FPR never cross")


@pytest.mark.parametrize("seed", range(6))
def test_eer_matches_brute_force(seed):
  rng = np.random.default_rng(seed)
  n_t, n_n = rng.integers(5, 60, 2)
  scores = np.concatenate([rng.normal(1.0, 1, n_t), rng.normal(0, 1, n_n)])
  if seed % 2:
    scores = np.round(scores, 1)  # Ties between target and non-target scores.
  is_target = np.concatenate([np.ones(n_t, bool), np.zeros(n_n, bool)])
  rate, thr, fpr, fnr, thresholds = _brute_eer(scores, is_target)
  got = eer(scores, is_target)
  assert got.eer == pytest.approx(rate, abs=1e-12) and got.threshold == pytest.approx(thr, abs=1e-12)
  assert (got.num_target, got.num_nontarget) == (n_t, n_n)
  # det_curve's points are points of the brute-force sweep.
  dfpr, dfnr, dthr = det_curve(scores, is_target)
  for a, b, t in zip(dfpr, dfnr, dthr):
    k = int(np.flatnonzero(thresholds == t)[0])
    assert (a, b) == (pytest.approx(fpr[k]), pytest.approx(fnr[k]))
  json.dumps(got.to_dict())


def test_eer_known_cases():
  # Two unit Gaussians with means 0 and d: the EER is Phi(-d/2), at the threshold d/2.
  rng = np.random.default_rng(0)
  for d in (1.0, 2.0, 3.0):
    scores = np.concatenate([rng.normal(d, 1, 100_000), rng.normal(0, 1, 100_000)])
    is_target = np.arange(200_000) < 100_000
    got = eer(scores, is_target)
    assert got.eer == pytest.approx(norm.cdf(-d / 2), abs=4e-3)
    assert got.threshold == pytest.approx(d / 2, abs=0.03)
  assert eer([3, 2, 1, 0], [1, 1, 0, 0]).eer == 0.0  # Separable.
  assert eer([0, 1, 2, 3], [1, 1, 0, 0]).eer == 1.0  # Inverted.
  assert eer([1, 1, 1, 1], [1, 0, 1, 0]).eer == 0.5  # Uninformative.
  assert eer([0.9, 0.8, 0.3, 0.7, 0.2, 0.1], [1, 1, 1, 0, 0, 0]).eer == pytest.approx(1 / 3)


def test_eer_errors():
  with pytest.raises(ValueError, match="no target trial"):
    eer([0.1, 0.2], [False, False])
  with pytest.raises(ValueError, match="no non-target trial"):
    eer([0.1, 0.2], [True, True])
  with pytest.raises(ValueError, match=r"scores\[1\] is nan"):
    eer([0.1, np.nan, 0.3], [True, False, True])
  with pytest.raises(ValueError, match="is_target has 2 entries but scores has 3"):
    det_curve([0.1, 0.2, 0.3], [True, False])
  with pytest.raises(ValueError, match="boolean"):
    eer([0.1, 0.2], [2, 0])


def test_group_eer_and_summary_match_subsets(tmp_path):
  spk, gender, _ = _utterances(5, num_speakers=30)
  rng = np.random.default_rng(5)
  i, j, t = make_trials(spk, rng=rng, nontarget_per_target=2, same_attribute=gender)
  # Noisier scores for "m": a planted EER gap.
  noise = np.where(gender[i] == "m", 1.5, 0.7)
  scores = t + noise * rng.normal(size=t.size)
  groups = gender[i]
  by_group = group_eer(scores, t, groups)
  assert list(by_group) == ["f", "m"]
  for g, v in by_group.items():
    assert v == eer(scores[groups == g], t[groups == g]).eer
  assert by_group["m"] > by_group["f"]
  s = eer_summary(scores, t, groups)
  v = np.array([by_group["f"], by_group["m"]])
  assert s.overall == eer(scores, t).eer and s.by_group == by_group
  assert (s.worst_group, s.best_group) == ("m", "f")
  assert s.max_min_gap == pytest.approx(v.max() - v.min())
  assert s.relative_gap == pytest.approx((v.max() - v.min()) / v.min())
  assert s.std == pytest.approx(v.std())
  json.dumps(s.to_dict())
  only_targets = groups.copy()
  only_targets[np.flatnonzero(t)[:3]] = "a"
  with pytest.raises(ValueError, match="group 'a': is_target has no non-target trial"):
    group_eer(scores, t, only_targets)
  # The DET plot: a PNG on probit axes.
  curves = {g: det_curve(scores[groups == g], t[groups == g])[:2] for g in by_group}
  path = plot_det(curves, str(tmp_path / "figures" / "det.png"), title="per-gender DET")
  assert (tmp_path / "figures" / "det.png").stat().st_size > 1000 and path.endswith("det.png")
  with pytest.raises(ValueError, match="curves is empty"):
    plot_det({}, str(tmp_path / "x.png"))


def test_cosine_scores():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(10, 4))
  i, j = np.array([0, 1, 2]), np.array([3, 4, 5])
  ref = [x[a] @ x[b] / np.linalg.norm(x[a]) / np.linalg.norm(x[b]) for a, b in zip(i, j)]
  np.testing.assert_allclose(cosine_scores(x, i, j), ref, rtol=1e-12)
  with pytest.raises(ValueError, match=r"embeddings\[0\] is all zeros"):
    cosine_scores(np.zeros((2, 3)), [0], [1])
