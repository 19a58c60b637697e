"""Tests for libs/metrics/cohorts.py against brute-force searches, direct NumPy sums and planted cohorts."""

import json

import numpy as np
import pytest

from libs.metrics import cohorts
from libs.metrics.cohorts import (best_split, cohort_gap, cohort_table, fit_geo_tree, geo_demographic_partition,
                                  kmeans_cohorts, speaker_totals)


def _speakers(seed, n, grid=None):
  """Random per-speaker coordinates (rounded onto a grid to create ties), words and errors."""
  rng = np.random.default_rng(seed)
  lat, lon = rng.uniform(30, 50, n), rng.uniform(-120, -70, n)
  if grid:
    lat, lon = np.round(lat / grid) * grid, np.round(lon / grid) * grid
  words = rng.integers(20, 200, n).astype(float)
  errors = rng.binomial(words.astype(int), rng.uniform(0.02, 0.3, n)).astype(float)
  return lat, lon, errors, words


def _brute_split(lat, lon, errors, words, min_speakers):
  """Every (axis, midpoint threshold), in the documented tie order: (gap, axis, threshold) of the best."""
  best = None
  for axis, x in (("lat", lat), ("lon", lon)):
    u = np.unique(x)
    for lo, hi in zip(u[:-1], u[1:]):
      t = (lo + hi) / 2
      left = x <= t
      if min(left.sum(), (~left).sum()) < min_speakers:
        continue
      if words[left].sum() == 0 or words[~left].sum() == 0:
        continue
      gap = abs(errors[left].sum() / words[left].sum() - errors[~left].sum() / words[~left].sum())
      if best is None or gap > best[0]:
        best = (gap, axis, t)
  return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("min_speakers", [1, 3, 8])
def test_best_split_matches_brute_force(seed, min_speakers):
  lat, lon, errors, words = _speakers(seed, 18, grid=2.0 if seed % 2 else None)
  got = best_split(lat, lon, errors, words, min_speakers=min_speakers)
  ref = _brute_split(lat, lon, errors, words, min_speakers)
  assert ref is not None and got is not None
  assert got.gap == pytest.approx(ref[0], rel=1e-12)
  assert (got.axis, got.threshold) == (ref[1], pytest.approx(ref[2], rel=1e-12))
  x = lat if got.axis == "lat" else lon
  left = x <= got.threshold
  assert (got.num_left, got.num_right) == (left.sum(), (~left).sum())
  assert min(got.num_left, got.num_right) >= min_speakers
  assert got.wer_left == pytest.approx(errors[left].sum() / words[left].sum())
  assert got.wer_right == pytest.approx(errors[~left].sum() / words[~left].sum())


def test_best_split_none_when_no_valid_split():
  lat, lon, errors, words = _speakers(0, 10)
  assert best_split(lat, lon, errors, words, min_speakers=6) is None
  # All speakers at one place: no threshold between distinct values.
  assert best_split(np.ones(6), np.ones(6), errors[:6], words[:6], min_speakers=1) is None


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_depth, min_speakers", [(0, 5), (1, 5), (3, 10), (4, 7)])
def test_tree_respects_limits_and_assign_reproduces_leaves(seed, max_depth, min_speakers):
  lat, lon, errors, words = _speakers(seed, 120, grid=0.5)
  tree = fit_geo_tree(lat, lon, errors, words, min_speakers=min_speakers, max_depth=max_depth)
  assert 1 <= tree.num_leaves <= 2 ** max_depth
  assert sorted(lf.id for lf in tree.leaves) == list(range(tree.num_leaves))
  assert [lf.wer for lf in tree.leaves] == sorted((lf.wer for lf in tree.leaves), reverse=True)
  leaf = tree.assign(lat, lon)
  for lf in tree.leaves:
    inside = leaf == lf.id
    assert lf.num_speakers == inside.sum() >= min_speakers
    assert len(lf.rules) <= max_depth
    assert lf.errors == errors[inside].sum() and lf.words == words[inside].sum()
    assert lf.wer == pytest.approx(errors[inside].sum() / words[inside].sum())
    # Every rule on the path, and the box, hold for exactly the leaf's speakers.
    ok = np.ones(lat.size, bool)
    for axis, op, t in lf.rules:
      x = lat if axis == "lat" else lon
      ok &= (x <= t) if op == "<=" else (x > t)
    np.testing.assert_array_equal(ok, inside)
    b = lf.box
    in_box = (lat > b["lat_min"]) & (lat <= b["lat_max"]) & (lon > b["lon_min"]) & (lon <= b["lon_max"])
    np.testing.assert_array_equal(in_box, inside)
  assert tree.wer == pytest.approx(errors.sum() / words.sum())
  json.dumps(tree.to_dict())
  if max_depth == 0:
    assert tree.leaves[0].describe() == "all" and tree.num_leaves == 1


def test_tree_root_split_is_best_split_and_min_gap_stops():
  lat, lon, errors, words = _speakers(3, 80)
  tree = fit_geo_tree(lat, lon, errors, words, min_speakers=5, max_depth=1)
  split = best_split(lat, lon, errors, words, min_speakers=5)
  assert tree.num_leaves == 2
  assert {lf.rules[0] for lf in tree.leaves} == {(split.axis, "<=", split.threshold),
                                                   (split.axis, ">", split.threshold)}
  stopped = fit_geo_tree(lat, lon, errors, words, min_speakers=5, max_depth=3, min_gap=split.gap + 1e-9)
  assert stopped.num_leaves == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tree_finds_planted_corner_and_assigns_new_speakers(seed):
  # The gap criterion favours small extreme sides (CART's end-cut preference): a corner of ~16% of the
  # speakers and a min_speakers that keeps sides from being a handful of noisy speakers make it findable.
  rng = np.random.default_rng(seed)
  n = 400
  lat, lon = rng.uniform(30, 50, n), rng.uniform(-120, -70, n)
  corner = (lat > 42) & (lon > -90)
  words = rng.integers(100, 300, n)
  errors = rng.binomial(words, np.where(corner, 0.25, 0.08))
  tree = fit_geo_tree(lat, lon, errors, words, min_speakers=30, max_depth=2)
  worst = tree.leaves[0]
  assert worst.box["lat_min"] == pytest.approx(42, abs=0.5) and worst.box["lon_min"] == pytest.approx(-90, abs=2)
  assert worst.box["lat_max"] == np.inf and worst.box["lon_max"] == np.inf
  assert worst.describe().startswith("lat > 4") and " and lon > -" in worst.describe()
  members = tree.assign(lat, lon) == worst.id
  assert (members & corner).sum() >= 0.9 * max(members.sum(), corner.sum())
  assert worst.wer > 0.2 and tree.leaves[1].wer < 0.12
  # New speakers: far inside the corner, and far outside it.
  got = tree.assign([49.0, 31.0, 49.0], [-71.0, -71.0, -119.0])
  assert got[0] == worst.id and got[1] != worst.id and got[2] != worst.id
  assert tree.describe().splitlines()[0].startswith(f"leaf {worst.id}: lat > ")


def test_tree_bad_input():
  lat, lon, errors, words = _speakers(0, 10)
  with pytest.raises(ValueError, match="min_speakers must be an integer >= 1"):
    fit_geo_tree(lat, lon, errors, words, min_speakers=0, max_depth=1)
  with pytest.raises(ValueError, match="max_depth"):
    fit_geo_tree(lat, lon, errors, words, min_speakers=1, max_depth=-1)
  with pytest.raises(ValueError, match="min_gap"):
    fit_geo_tree(lat, lon, errors, words, min_speakers=1, max_depth=1, min_gap=-1)
  with pytest.raises(ValueError, match=r"latitude\[2\] is nan"):
    fit_geo_tree(np.where(np.arange(10) == 2, np.nan, lat), lon, errors, words, min_speakers=1, max_depth=1)
  with pytest.raises(ValueError, match="longitude has 9 entries but there are 10 speakers"):
    best_split(lat, lon[:9], errors, words, min_speakers=1)
  with pytest.raises(ValueError, match="words sum to zero"):
    best_split(lat, lon, errors, 0 * words, min_speakers=1)


def test_speaker_totals_match_loop():
  rng = np.random.default_rng(0)
  spk = rng.choice(["s3", "s1", "s2", "s0"], 50)
  errors, words = rng.integers(0, 5, 50), rng.integers(1, 20, 50)
  lat = {"s0": 1.0, "s1": 2.0, "s2": 3.0, "s3": 4.0}
  per_utt_lat = np.array([lat[s] for s in spk])
  emb = np.stack([per_utt_lat, -per_utt_lat], 1)
  ids, e, w, la, em = speaker_totals(spk, errors, words, per_utt_lat, emb)
  assert ids.tolist() == ["s0", "s1", "s2", "s3"]
  for k, s in enumerate(ids):
    assert e[k] == errors[spk == s].sum() and w[k] == words[spk == s].sum()
    assert la[k] == lat[s] and em[k].tolist() == [lat[s], -lat[s]]
  with pytest.raises(ValueError, match=r"attrs\[0\] has shape \(3,\)"):
    speaker_totals(spk, errors, words, [1, 2, 3])


# Geo-demographic partition ---------------------------------------------------------------------------------

def _region_problem(seed, num_regions=7, num_speakers=90):
  rng = np.random.default_rng(seed)
  accents = ["en-US", "en-GB", "en-029"]
  table = {f"r{k}": {"accent": accents[rng.integers(3)], "female_share": float(np.round(rng.uniform(0.4, 0.6), 2)),
                     "urban": bool(rng.integers(2))} for k in range(num_regions)}
  table["unused"] = {"accent": "en-GB", "female_share": 0.9, "urban": True}  # No speakers: not a candidate.
  regions = rng.choice([f"r{k}" for k in range(num_regions)], num_speakers)
  words = rng.integers(20, 100, num_speakers).astype(float)
  errors = rng.binomial(words.astype(int), rng.uniform(0.05, 0.2, num_speakers)).astype(float)
  return regions, errors, words, table


def _brute_partition(regions, errors, words, table, min_speakers):
  """Every candidate side over speakers, in the documented order: (rel gap, bottom region set) of the best."""
  present = sorted(set(regions))
  best = None
  for a in sorted({a for r in present for a in table[r]}):
    vals = {r: table[r][a] for r in present}
    if all(isinstance(v, float) for v in vals.values()):
      u = sorted(set(vals.values()))
      sides = [{r for r in present if vals[r] > (lo + hi) / 2} for lo, hi in zip(u[:-1], u[1:])]
    else:
      sides = [{r for r in present if vals[r] == v} for v in sorted(set(vals.values()), key=repr)]
    for side in sides:
      m = np.isin(regions, list(side))
      if min(m.sum(), (~m).sum()) < min_speakers:
        continue
      ws, wo = errors[m].sum() / words[m].sum(), errors[~m].sum() / words[~m].sum()
      rel = (max(ws, wo) - min(ws, wo)) / min(ws, wo)
      if best is None or rel > best[0]:
        best = (rel, side if ws >= wo else set(present) - side, max(ws, wo), min(ws, wo))
  return best


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("min_speakers", [1, 20])
def test_partition_matches_brute_force(seed, min_speakers):
  regions, errors, words, table = _region_problem(seed)
  part = geo_demographic_partition(regions, errors, words, table, min_speakers=min_speakers)
  rel, bottom, wer_b, wer_r = _brute_partition(regions, errors, words, table, min_speakers)
  assert part.relative_gap == pytest.approx(rel, rel=1e-12)
  assert set(part.bottom_regions) == bottom
  assert set(part.rest_regions) == set(regions) - bottom
  assert (part.wer_bottom, part.wer_rest) == (pytest.approx(wer_b), pytest.approx(wer_r))
  in_bottom = np.isin(regions, list(bottom))
  assert part.num_speakers_bottom == in_bottom.sum() and part.num_speakers_rest == (~in_bottom).sum()
  np.testing.assert_array_equal(part.contains(regions), in_bottom)
  json.dumps(part.to_dict())


def test_partition_finds_planted_bottom_and_places_unseen_regions():
  rng = np.random.default_rng(1)
  table = {"glasgow": {"accent": "scot", "female_share": 0.51},
           "edinburgh": {"accent": "scot", "female_share": 0.49},
           "boston": {"accent": "us", "female_share": 0.50},
           "austin": {"accent": "us", "female_share": 0.52},
           "london": {"accent": "rp", "female_share": 0.48},
           "aberdeen": {"accent": "scot", "female_share": 0.47}}  # Held out: no fitting speakers.
  fit_regions = ["glasgow", "edinburgh", "boston", "austin", "london"]
  regions = rng.choice(fit_regions, 300)
  words = rng.integers(30, 90, 300)
  scot = np.isin(regions, ["glasgow", "edinburgh"])
  errors = rng.binomial(words, np.where(scot, 0.3, 0.1))
  part = geo_demographic_partition(regions, errors, words, table, min_speakers=30)
  assert (part.attribute, part.kind, part.value, part.direction) == ("accent", "categorical", "scot", "==")
  assert part.bottom_regions == ("edinburgh", "glasgow")
  assert part.describe() == "accent == 'scot'"
  assert part.relative_gap == pytest.approx((part.wer_bottom - part.wer_rest) / part.wer_rest)
  assert part.relative_gap > 1
  np.testing.assert_array_equal(part.contains(["aberdeen", "boston", "glasgow"]), [True, False, True])
  with pytest.raises(ValueError, match="'paris' is not in the region table"):
    part.contains(["boston", "paris"])
  # The bottom side can be the rest ("!=") or the lower values ("<=").
  low = geo_demographic_partition(regions, rng.binomial(words, np.where(scot, 0.05, 0.2)), words,
                                  {r: {"accent": v["accent"]} for r, v in table.items()}, min_speakers=30)
  assert (low.value, low.direction) == ("scot", "!=")
  np.testing.assert_array_equal(low.contains(["aberdeen", "london"]), [False, True])
  share = np.array([table[r]["female_share"] for r in regions])
  num = geo_demographic_partition(regions, rng.binomial(words, np.where(share <= 0.49, 0.3, 0.1)), words,
                                  {r: {"female_share": v["female_share"]} for r, v in table.items()},
                                  min_speakers=30)
  assert (num.attribute, num.value, num.direction) == ("female_share", pytest.approx(0.495), "<=")
  assert num.describe() == "female_share <= 0.495"
  np.testing.assert_array_equal(num.contains(["aberdeen", "austin"]), [True, False])


def test_partition_bad_input():
  regions, errors, words, table = _region_problem(0)
  with pytest.raises(ValueError, match=r"speaker_regions\[0\] = 'nowhere' is not in the region table"):
    geo_demographic_partition(["nowhere"] + list(regions[1:]), errors, words, table, min_speakers=1)
  broken = {**table, "r0": {"accent": "en-US"}}
  with pytest.raises(ValueError, match="region 'r0' has no attribute 'female_share'"):
    geo_demographic_partition(regions, errors, words, broken, min_speakers=1)
  mixed = {r: {**v, "accent": 3.0 if r == "r1" else v["accent"]} for r, v in table.items()}
  with pytest.raises(ValueError, match="attribute 'accent' mixes numeric"):
    geo_demographic_partition(regions, errors, words, mixed, min_speakers=1)
  with pytest.raises(ValueError, match="no candidate partition"):
    geo_demographic_partition(regions, errors, words, table, min_speakers=80)


# K-means cohorts ---------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _one_blas_thread():
  """k-means on ~100 points: threads only add overhead (10x on a busy 2-core CI machine)."""
  threadpoolctl = pytest.importorskip("threadpoolctl")
  import sklearn.cluster  # pylint: disable=import-outside-toplevel,unused-import  # Loads its OpenMP first.
  with threadpoolctl.threadpool_limits(1):
    yield


def _blobs(seed, sizes=(30, 30, 30, 12), wers=(0.05, 0.10, 0.15, 0.30), dims=8, noise=0.08):
  """Speaker embeddings around orthogonal directions (random norms: only the direction matters)."""
  rng = np.random.default_rng(seed)
  centers = np.linalg.qr(rng.normal(size=(dims, dims)))[0][: len(sizes)]
  truth = np.repeat(np.arange(len(sizes)), sizes)
  emb = (centers[truth] + noise * rng.normal(size=(truth.size, dims))) * rng.uniform(0.5, 5, (truth.size, 1))
  words = rng.integers(100, 300, truth.size)
  errors = rng.binomial(words, np.array(wers)[truth])
  return emb, errors, words, truth


def test_kmeans_recovers_planted_clusters_and_bottom():
  emb, errors, words, truth = _blobs(0)
  km = kmeans_cohorts(emb, errors, words, k_values=range(2, 8), seed=0)
  assert km.k == 4
  assert km.silhouette[4] == max(km.silhouette.values()) and set(km.silhouette) == set(range(2, 8))
  # The clusters are the planted blobs (up to renaming).
  for t in range(4):
    assert np.unique(km.labels[truth == t]).size == 1
  assert np.unique(km.labels).size == 4
  assert (km.labels == km.bottom).tolist() == (truth == 3).tolist()
  assert km.clusters[0].cohort == km.bottom and km.clusters[0].num_speakers == 12
  assert [c.wer for c in km.clusters] == sorted((c.wer for c in km.clusters), reverse=True)
  for c in km.clusters:
    inside = km.labels == c.cohort
    assert c.num_speakers == inside.sum() and c.wer == pytest.approx(errors[inside].sum() / words[inside].sum())
  np.testing.assert_array_equal(km.assign(emb), km.labels)
  np.testing.assert_array_equal(km.assign(emb * 7.5), km.labels)  # Cosine geometry: scale is irrelevant.
  # New speakers from the same blobs land in their blob's cluster.
  new, _, _, new_truth = _blobs(0, sizes=(5, 5, 5, 5), noise=0.05)
  got = km.assign(new)
  for t in range(4):
    assert (got[new_truth == t] == km.labels[truth == t][0]).all()
  # A minimum size skips the small worst blob: the bottom is the next-worst cluster.
  km20 = kmeans_cohorts(emb, errors, words, k_values=range(2, 8), seed=0, min_cluster_speakers=20)
  assert (km20.labels == km20.bottom).tolist() == (truth == 2).tolist()
  json.dumps(km.to_dict())
  # Deterministic given the seed.
  again = kmeans_cohorts(emb, errors, words, k_values=range(2, 8), seed=0)
  assert again.silhouette == km.silhouette and (again.labels == km.labels).all()


def test_kmeans_silhouette_ties_go_to_smaller_k(monkeypatch):
  emb, errors, words, _ = _blobs(1)
  import sklearn.metrics  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(sklearn.metrics, "silhouette_score", lambda x, labels, metric: 0.5)
  km = kmeans_cohorts(emb, errors, words, k_values=[5, 3, 4], seed=0)
  assert km.k == 3


def test_kmeans_bad_input():
  emb, errors, words, _ = _blobs(0)
  with pytest.raises(ValueError, match=r"embeddings\[1\] is all zeros"):
    kmeans_cohorts(np.where(np.arange(len(emb))[:, None] == 1, 0.0, emb), errors, words, seed=0)
  with pytest.raises(ValueError, match="no k below the number of speakers"):
    kmeans_cohorts(emb[:3], errors[:3], words[:3], k_values=[3, 4], seed=0)
  with pytest.raises(ValueError, match="embeddings has 102 entries but there are 101 speakers"):
    kmeans_cohorts(emb, errors[:-1], words[:-1], seed=0)
  with pytest.raises(ValueError, match="no cluster has >= min_cluster_speakers=500"):
    kmeans_cohorts(emb, errors, words, k_values=[4], seed=0, min_cluster_speakers=500)


# Held-out cohort gap and cohort tables ------------------------------------------------------------------------

def _heldout(seed, bottom_rate=0.2, rest_rate=0.1, num_speakers=60, utts=8):
  rng = np.random.default_rng(seed)
  spk = np.repeat(np.arange(num_speakers), utts)
  in_bottom = spk < num_speakers // 4
  words = rng.integers(5, 30, spk.size)
  errors = rng.binomial(words, np.where(in_bottom, bottom_rate, rest_rate))
  return errors, words, in_bottom, spk


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cohort_gap_matches_numpy(seed):
  errors, words, in_bottom, spk = _heldout(seed)
  gap = cohort_gap(errors, words, in_bottom, spk, rng=np.random.default_rng(seed), num_resamples=500)
  wb = errors[in_bottom].sum() / words[in_bottom].sum()
  wr = errors[~in_bottom].sum() / words[~in_bottom].sum()
  assert gap.wer_bottom == pytest.approx(wb) and gap.wer_rest == pytest.approx(wr)
  assert gap.wer_gap == pytest.approx((wb - wr) / wr) and gap.wer_gap_absolute == pytest.approx(wb - wr)
  assert gap.bottom_share == pytest.approx(15 / 60)
  assert (gap.num_speakers_bottom, gap.num_speakers_rest) == (15, 45)
  assert (gap.num_utterances_bottom, gap.num_utterances_rest) == (in_bottom.sum(), (~in_bottom).sum())
  lo, hi = gap.wer_gap_ci
  assert lo < gap.wer_gap < hi and lo > 0  # A planted 2x WER: the interval excludes 0.
  assert gap.wer_gap_absolute_ci[0] < gap.wer_gap_absolute < gap.wer_gap_absolute_ci[1]
  d = gap.to_dict()
  assert d["wer_gap"] == gap.wer_gap and d["num_resamples"] == 500
  json.dumps(d)
  again = cohort_gap(errors, words, in_bottom, spk, rng=np.random.default_rng(seed), num_resamples=500)
  assert again == gap


def test_cohort_gap_negative_is_reported_not_flipped():
  errors, words, in_bottom, spk = _heldout(4, bottom_rate=0.05, rest_rate=0.15)
  gap = cohort_gap(errors, words, in_bottom, spk, rng=np.random.default_rng(0), num_resamples=300)
  wb = errors[in_bottom].sum() / words[in_bottom].sum()
  wr = errors[~in_bottom].sum() / words[~in_bottom].sum()
  assert gap.wer_gap == pytest.approx((wb - wr) / wr) and gap.wer_gap < 0
  assert gap.wer_gap_ci[0] < gap.wer_gap < gap.wer_gap_ci[1] < 0
  assert gap.bottom_share == pytest.approx(0.25)


def test_cohort_gap_errors():
  errors, words, in_bottom, spk = _heldout(0)
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="bottom cohort is empty"):
    cohort_gap(errors, words, np.zeros_like(in_bottom), spk, rng=rng)
  with pytest.raises(ValueError, match="the rest is empty"):
    cohort_gap(errors, words, np.ones_like(in_bottom), spk, rng=rng)
  with pytest.raises(ValueError, match="rest's WER is 0"):
    cohort_gap(np.where(in_bottom, errors, 0), words, in_bottom, spk, rng=rng)
  mixed = in_bottom.copy()
  mixed[np.flatnonzero(~in_bottom)[0]] = True
  with pytest.raises(ValueError, match="speaker 15 .* both in and out of the bottom cohort"):
    cohort_gap(errors, words, mixed, spk, rng=rng)
  with pytest.raises(ValueError, match="in_bottom must be boolean"):
    cohort_gap(errors, words, in_bottom.astype(int), spk, rng=rng)
  with pytest.raises(ValueError, match="clusters has 3 entries"):
    cohort_gap(errors, words, in_bottom, spk[:3], rng=rng)
  with pytest.raises(ValueError, match="group 'bottom' sum to zero"):
    cohort_gap(errors, np.where(in_bottom, 0, words), in_bottom, spk, rng=rng)


def test_cohort_table_matches_numpy():
  rng = np.random.default_rng(0)
  spk = np.repeat(np.arange(40), 5)
  cohort = np.array(["c%d" % (s % 4) for s in spk])
  words = rng.integers(5, 30, spk.size)
  errors = rng.binomial(words, 0.05 + 0.05 * (spk % 4))
  table = cohort_table(errors, words, cohort, spk)
  wers = []
  for row, c in zip(table.cohorts, ["c0", "c1", "c2", "c3"]):
    m = cohort == c
    wers.append(errors[m].sum() / words[m].sum())
    assert row.cohort == c and row.wer == pytest.approx(wers[-1])
    assert (row.num_speakers, row.num_utterances) == (10, 50)
    assert (row.errors, row.words) == (errors[m].sum(), words[m].sum())
  assert table.mean_wer == pytest.approx(np.mean(wers)) and table.max_wer == pytest.approx(max(wers))
  assert table.var_wer == pytest.approx(np.var(wers)) and table.worst_cohort == "c3"
  assert table.overall_wer == pytest.approx(errors.sum() / words.sum())
  json.dumps(table.to_dict())
  assert cohorts.CohortStats("x", 0.1, 1, 1.0, 10.0).to_dict()["num_utterances"] is None
