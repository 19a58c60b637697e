"""Regions that are not just accents (`CorpusSpec(regions="mixed")`), their demographic
table, and population-shaped dev/test splits (`dev_speakers`, `test_speakers`)."""

import collections
import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest

from libs.data import corpus, regions, synthetic_speech

_CONFIGS = {c.name: c.spec for c in synthetic_speech.BUILDER_CONFIGS}


def _all(speakers):
  return [s for split in speakers.values() for s in split]


def test_region_table_is_plausible():
  assert 14 <= len(regions.REGIONS) <= 20
  assert len(set(regions.REGION_NAMES)) == len(regions.REGIONS)
  totals = collections.defaultdict(float)
  for r in regions.REGIONS:
    assert set(r.accent_weights) <= set(corpus.ACCENT_NAMES), r.name
    for accent, w in r.accent_weights.items():
      totals[accent] += w
  # Every accent lives somewhere; its shares over the regions are a distribution.
  assert totals.keys() == set(corpus.ACCENT_NAMES)
  assert all(t == pytest.approx(1.0) for t in totals.values()), totals
  # Non-trivial: some accents spread over several regions, some regions mixed.
  spread = {a: len(regions.accent_regions(a)[0]) for a in corpus.ACCENT_NAMES}
  assert spread["en-US"] >= 5 and spread["en-029"] >= 5 and spread["en-GB-scotland"] >= 3
  mixed = [r.name for r in regions.REGIONS if len(r.accent_weights) >= 3]
  assert {"London", "New York City", "Miami"} <= set(mixed)
  # A region named like an accent's region is the same place.
  for a in corpus.ACCENTS:
    if a.region in regions.REGIONS_BY_NAME:
      r = regions.REGIONS_BY_NAME[a.region]
      assert (r.latitude, r.longitude, r.spread_deg) == (a.latitude, a.longitude, a.spread_deg)


def test_accent_regions_normalises_and_rejects_unknown_accent():
  names, probs = regions.accent_regions("en-029")
  assert {"Jamaica", "Trinidad and Tobago", "New York City", "London", "Miami"} <= set(names)
  assert probs.sum() == pytest.approx(1.0) and (probs > 0).all()
  assert list(names) == [n for n in regions.REGION_NAMES if n in names]  # table order
  with pytest.raises(ValueError, match="accent 'en-XX'"):
    regions.accent_regions("en-XX")


@pytest.fixture(scope="module")
def big_mixed():
  spec = corpus.CorpusSpec(regions="mixed", train_speakers=6000, dev_speakers=300, test_speakers=300)
  return spec, corpus.make_speakers(spec)


def test_mixed_regions_follow_the_accent_weights(big_mixed):
  _, speakers = big_mixed
  by_accent = collections.defaultdict(list)
  for s in _all(speakers):
    by_accent[s.accent].append(s.region)
  for accent, homes in by_accent.items():
    names, probs = regions.accent_regions(accent)
    counts = collections.Counter(homes)
    assert set(counts) <= set(names), accent  # only regions with positive weight
    n = len(homes)
    for name, p in zip(names, probs):
      # Binomial: within 4.5 standard deviations (a false alarm about once in 10^5 cells).
      assert abs(counts[name] / n - p) <= 4.5 * math.sqrt(p * (1 - p) / n) + 1 / n, (accent, name)


def test_mixed_homes_are_drawn_around_their_region_centre(big_mixed):
  _, speakers = big_mixed
  z = []
  for s in _all(speakers):
    r = regions.REGIONS_BY_NAME[s.region]
    assert s.accent in r.accent_weights
    z += [(s.latitude - r.latitude) / r.spread_deg, (s.longitude - r.longitude) / r.spread_deg]
  z = np.asarray(z)
  assert np.abs(z).max() < 6.0
  assert abs(z.mean()) < 0.05 and abs(z.std() - 1.0) < 0.05  # standard normal offsets


def test_mixed_changes_only_where_speakers_live():
  for name in ("digits", "tiny"):
    accent = corpus.make_speakers(_CONFIGS[name])
    mixed = corpus.make_speakers(dataclasses.replace(_CONFIGS[name], regions="mixed"))
    geo = dict(latitude=0.0, longitude=0.0, region="")
    strip = lambda s: dataclasses.replace(s, **geo)  # noqa: E731
    for split in accent:
      assert [strip(s) for s in accent[split]] == [strip(s) for s in mixed[split]]
    assert {s.region for s in _all(mixed)} - set(regions.REGION_NAMES) == set()
  digits = corpus.make_speakers(_CONFIGS["digits"])
  centres = {a.name: a.region for a in corpus.ACCENTS}
  assert all(s.region == centres[s.accent] for s in _all(digits))


def test_accent_mode_is_the_default_and_keeps_existing_speakers():
  for name in ("tiny", "digits", "digits_large", "digits_many", "sentences", "digits_public",
               "digits_indomain"):
    spec = _CONFIGS[name]
    assert spec.regions == "accent" and spec.dev_speakers == spec.test_speakers == 0
    assert corpus.make_speakers(spec) == corpus.make_speakers(dataclasses.replace(spec, regions="accent"))


def _independent_table(speakers):
  rows = {}
  for s in speakers:
    row = rows.setdefault(s.region, {"n": 0, "female": 0, "accents": collections.Counter()})
    row["n"] += 1
    row["female"] += s.gender == "female"
    row["accents"][s.accent] += 1
  return rows


@pytest.mark.parametrize("spec", [
    corpus.CorpusSpec(regions="mixed", train_speakers=300, dev_speakers=50, test_speakers=70),
    corpus.CorpusSpec(train_speakers=60),
], ids=["mixed", "accent"])
def test_demographics_match_an_independent_count(spec):
  speakers = corpus.make_speakers(spec)
  table = regions.demographics(speakers)
  expected = _independent_table(_all(speakers))
  assert set(table) == set(expected)
  assert sum(d.speakers for d in table.values()) == len(_all(speakers))
  for name, d in table.items():
    row = expected[name]
    assert d.region == name and d.speakers == row["n"]
    assert d.female_share == pytest.approx(row["female"] / row["n"])
    assert dict(d.accent_shares) == pytest.approx({a: c / row["n"] for a, c in row["accents"].items()})
    top = max(row["accents"].values())
    assert d.majority_accent == min(a for a, c in row["accents"].items() if c == top)
    assert list(d.accent_shares)[0] == d.majority_accent
    shares = list(d.accent_shares.values())
    assert shares == sorted(shares, reverse=True) and sum(shares) == pytest.approx(1.0)
    if name in regions.REGIONS_BY_NAME:
      r = regions.REGIONS_BY_NAME[name]
      assert (d.latitude, d.longitude) == (r.latitude, r.longitude)
    else:  # an accent's own region ("accent" mode)
      (a,) = [a for a in corpus.ACCENTS if a.region == name]
      assert (d.latitude, d.longitude) == (a.latitude, a.longitude)
  # Regions of the table come first, in table order.
  known = [n for n in table if n in regions.REGIONS_BY_NAME]
  assert known == [n for n in regions.REGION_NAMES if n in table]
  assert list(table)[: len(known)] == known
  # A flat list of speakers gives the same table; so does the spec helper.
  assert regions.demographics(_all(speakers)) == table == regions.demographic_table(spec)


def test_demographics_of_a_region_outside_the_tables_uses_its_speakers():
  base = corpus.make_speakers(corpus.CorpusSpec(regions="mixed"))["train"][:3]
  moved = [dataclasses.replace(s, region="Atlantis", latitude=float(i), longitude=-float(i))
           for i, s in enumerate(base)]
  d = regions.demographics(moved)["Atlantis"]
  assert (d.speakers, d.latitude, d.longitude) == (3, 1.0, -1.0)


def test_population_shaped_eval_splits_match_allocate():
  spec = corpus.CorpusSpec(train_speakers=100, dev_speakers=40, test_speakers=61,
                           dev_speakers_per_accent=5, test_speakers_per_accent=5)
  speakers = corpus.make_speakers(spec)
  shares = [a.train_share for a in corpus.ACCENTS]
  for split, total in (("train", 100), ("dev", 40), ("test", 61)):
    counts = collections.Counter(s.accent for s in speakers[split])
    assert [counts[a] for a in corpus.ACCENT_NAMES] == corpus.allocate(total, shares)
  assert spec.split_sizes == {"train": 100, "dev": 40, "test": 61}
  # Only the split asked for changes shape; the other keeps its per-accent count.
  half = corpus.make_speakers(dataclasses.replace(spec, test_speakers=0))
  assert half["dev"] == speakers["dev"]
  assert collections.Counter(s.accent for s in half["test"]) == {a: 5 for a in corpus.ACCENT_NAMES}
  # With an accent subset the shares are renormalised, as for train.
  subset = corpus.CorpusSpec(accents=("en-029", "en-US"), train_speakers=20, dev_speakers=9)
  dev = collections.Counter(s.accent for s in corpus.make_speakers(subset)["dev"])
  assert dev == dict(zip(("en-US", "en-029"), corpus.allocate(9, [0.32, 0.04])))
  ids = [s.speaker_id for s in _all(speakers)]
  assert ids == list(range(len(ids)))


def test_digits_fairness_config():
  spec = _CONFIGS["digits_fairness"]
  assert (spec.grammar, spec.regions, spec.accents, spec.channel_probs, spec.snr_db, spec.seed) == (
      "digits", "mixed", (), None, (5.0, 30.0), 3)
  speakers = corpus.make_speakers(spec)
  assert [len(speakers[k]) for k in ("train", "dev", "test")] == [480, 210, 280]
  utterances = 480 * spec.train_utterances_per_speaker + 490 * spec.eval_utterances_per_speaker
  assert utterances == 7760
  for split in ("dev", "test"):  # rare accents stay rare, but present enough to evaluate
    counts = collections.Counter(s.accent for s in speakers[split])
    assert counts.most_common()[-1][0] == "en-029"
  assert collections.Counter(s.accent for s in speakers["dev"])["en-029"] >= 8
  assert collections.Counter(s.accent for s in speakers["test"])["en-029"] >= 10
  ids = [s.speaker_id for s in _all(speakers)]
  assert ids == list(range(300_000, 300_000 + 970))
  others = {s.speaker_id for name in ("digits_public", "digits_indomain", "digits_many")
            for s in _all(corpus.make_speakers(_CONFIGS[name]))}
  assert not others & set(ids)
  table = regions.demographic_table(spec)
  assert len(table) >= 15 and table["London"].majority_accent == "en-GB-x-rp"
  assert len(table["London"].accent_shares) >= 4  # a mixed region
  # Pinned, so that the corpus stays the same once generated and used.
  blob = json.dumps({k: [dataclasses.asdict(s) for s in v] for k, v in speakers.items()}, sort_keys=True)
  assert hashlib.sha256(blob.encode()).hexdigest()[:16] == "919b0759cb0055cf"


def test_mixed_speaker_region_reaches_the_examples():
  spec = _CONFIGS["digits_fairness"]
  speaker = next(s for s in corpus.make_speakers(spec)["dev"]
                 if s.region == "London" and s.accent == "en-029")
  ((key, example),) = corpus.synthesize_speaker(spec, speaker, 1)
  assert example["region"] == "London" and example["accent"] == "en-029" and "300" in key
  assert example["latitude"] == np.float32(speaker.latitude)


def test_determinism():
  spec = _CONFIGS["digits_fairness"]
  assert corpus.make_speakers(spec) == corpus.make_speakers(dataclasses.replace(spec))
  assert regions.demographic_table(spec) == regions.demographic_table(spec)
  other = corpus.make_speakers(dataclasses.replace(spec, seed=4))
  assert [s.region for s in _all(other)] != [s.region for s in _all(corpus.make_speakers(spec))]


def test_int32_id_check_counts_population_shaped_splits():
  total = 40 + 1000 + 2000
  corpus.CorpusSpec(dev_speakers=1000, test_speakers=2000, speaker_id_offset=2**31 - 1 - total)
  with pytest.raises(ValueError, match="fit in int32"):
    corpus.CorpusSpec(dev_speakers=1000, test_speakers=2000, speaker_id_offset=2**31 - total)


@pytest.mark.parametrize("kwargs, match", [
    (dict(regions="zip"), r"regions must be one of \('accent', 'mixed'\), got 'zip'"),
    (dict(regions=None), "regions must be one of"),
    (dict(dev_speakers=-1), "dev_speakers must be 0"),
    (dict(test_speakers=3), "test_speakers must be 0 .* 7 generated accents"),
    (dict(dev_speakers=1, accents=("en-US", "en-029")), "2 generated accents"),
    (dict(dev_speakers=10.0), "dev_speakers must be 0"),
    (dict(test_speakers=True), "test_speakers must be 0"),
])
def test_spec_rejects_bad_region_and_split_values(kwargs, match):
  with pytest.raises(ValueError, match=match):
    corpus.CorpusSpec(**kwargs)
