"""fedlearn data: the simulated device population, client batches and continual views,
checked against brute-force loops and statistical properties."""

import dataclasses
import re

import numpy as np
import pytest

from projects.fedlearn import continual, data as fd


@pytest.fixture(scope="module")
def pop():
  return fd.generate_population(600, seed=0, num_periods=4, mean_examples=15, max_examples_per_device=200)


def _intent_hist(intents, num):
  return np.bincount(intents, minlength=num) / max(len(intents), 1)


def test_contract_shapes_and_dtypes(pop):
  n = pop.num_examples()
  assert pop.tokens.dtype == np.int32 and pop.tokens.shape == (n.sum(), 16)
  assert pop.intents.dtype == np.int32 and pop.periods.dtype == np.int32
  assert pop.offsets.dtype == np.int64 and pop.offsets.shape == (601,) and n.dtype == np.int64
  assert len(pop.intent_names) >= 10 and pop.vocab[:4] == fd.RESERVED
  assert 200 <= len(pop.vocab) <= 1000
  assert n.min() >= 1 and n.max() <= 200
  assert (pop.tokens[:, 0] == fd.BOS).all() and pop.tokens.max() < len(pop.vocab)
  assert pop.intents.min() >= 0 and pop.intents.max() < len(pop.intent_names)
  assert set(np.unique(pop.periods)) == {0, 1, 2, 3}
  # Padding only after the text: once a 0 appears, the rest of the row is 0.
  after_pad = np.cumsum(pop.tokens == 0, axis=1) > 0
  assert (pop.tokens[after_pad] == 0).all()
  np.testing.assert_array_equal(pop.device_rows(5), np.arange(pop.offsets[5], pop.offsets[6]))
  tokens, intents = pop.pooled()
  assert tokens.shape[0] == intents.shape[0] == n.sum()


def test_deterministic_in_seed():
  a = fd.generate_population(300, seed=3, num_periods=2)
  b = fd.generate_population(300, seed=3, num_periods=2)
  c = fd.generate_population(300, seed=4, num_periods=2)
  for field in ("tokens", "intents", "periods", "offsets"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  assert a.tokens.shape != c.tokens.shape or not np.array_equal(a.tokens, c.tokens)


def test_texts_round_trip_through_encode(pop):
  rows = np.nonzero((pop.tokens == fd.EOS).any(1))[0][:400]  # untruncated rows
  assert len(rows) > 300
  texts = fd.decode(pop.tokens[rows], pop.vocab)
  np.testing.assert_array_equal(fd.encode_texts(texts, pop.vocab, max_len=16), pop.tokens[rows])
  enc = fd.encode_texts(["Set a TIMER for zzzz minutes", "play"], pop.vocab, max_len=4)
  idx = {w: i for i, w in enumerate(pop.vocab)}
  np.testing.assert_array_equal(enc, [[fd.BOS, idx["set"], idx["a"], idx["timer"]],
                                      [fd.BOS, idx["play"], fd.EOS, 0]])
  assert fd.encode_texts(["zzzz"], pop.vocab)[0, 1] == fd.UNK


def test_max_len_truncates_the_same_texts():
  # The random draws do not depend on max_len, so a shorter max_len is exactly a truncation.
  long = fd.generate_population(100, seed=5, max_len=24)
  short = fd.generate_population(100, seed=5, max_len=6)
  assert (long.tokens[:, -4:] == 0).all()  # nothing was cut at 24
  np.testing.assert_array_equal(short.tokens, long.tokens[:, :6])
  np.testing.assert_array_equal(short.intents, long.intents)
  assert (short.tokens != 0).all(1).mean() > 0.5  # most texts fill all 6 slots


def test_texts_match_their_intent_templates(pop):
  # Independent check of the vectorized writer: each untruncated text is an optional wake
  # phrase then one of its intent's templates with slot values filled in.
  alt = lambda name: "(?:" + "|".join(re.escape(v) for v in fd.SLOTS[name] if v) + ")"
  prefix = "(?:" + alt("prefix") + " )?"
  patterns = [re.compile(prefix + "(?:" + "|".join(
      re.sub(r"\\{(\w+)\\}", lambda m: alt(m.group(1)), re.escape(t)) for t in temps) + ")")
      for temps in fd.INTENTS.values()]
  rows = np.nonzero((pop.tokens == fd.EOS).any(1))[0][:1500]
  texts = fd.decode(pop.tokens[rows], pop.vocab)
  for text, intent in zip(texts, pop.intents[rows]):
    assert patterns[intent].fullmatch(text), (text, pop.intent_names[intent])
  assert not patterns[pop.intent_names.index("set_timer")].fullmatch("play some jazz music")


def test_activity_is_a_capped_power_law():
  for a in (1.5, 2.5):
    d = fd.generate_population(30000, seed=1, mean_examples=8, zipf_a=a, max_examples_per_device=1000)
    n = d.num_examples()
    assert abs(n.mean() - 8) < 0.15 * 8, (a, n.mean())
    # Survival P(n >= k) of a power law with density ~ x^-a halves by 2^-(a-1) per doubling of k.
    surv = np.array([(n >= k).mean() for k in (16, 32, 64)])
    np.testing.assert_allclose(surv[1:] / surv[:-1], 2.0 ** -(a - 1), atol=0.1)
  heavy = fd.generate_population(5000, seed=1, mean_examples=20, zipf_a=1.3, max_examples_per_device=300)
  n = heavy.num_examples()
  assert n.min() == 1 and n.max() == 300 and np.median(n) < n.mean() / 2


def test_devices_are_non_iid(pop):
  num = len(pop.intent_names)
  glob = _intent_hist(pop.intents, num)
  rng = np.random.default_rng(0)
  shuffled = dataclasses.replace(pop, intents=rng.permutation(pop.intents),
                                 tokens=pop.tokens[rng.permutation(len(pop.tokens))])
  big = np.nonzero(pop.num_examples() >= 40)[0]
  assert len(big) >= 20

  def skew(d):
    tv = np.mean([0.5 * np.abs(_intent_hist(d.intents[d.device_rows(i)], num) - glob).sum() for i in big])
    words = np.mean([len(np.unique(d.tokens[d.device_rows(i)])) for i in big])
    return tv, words

  tv, words = skew(pop)
  tv_iid, words_iid = skew(shuffled)
  assert tv > 2 * tv_iid and tv > 0.3
  assert words < 0.85 * words_iid  # devices reuse their own favourite slot values


def test_rows_are_chronological_and_drift_changes_intents():
  def early_late_tv(drift):
    d = fd.generate_population(1500, seed=2, num_periods=4, mean_examples=40, drift=drift)
    dev = d.device_of_rows()
    assert (np.diff(d.periods)[np.diff(dev) == 0] >= 0).all()
    num = len(d.intent_names)
    tvs = []
    for i in np.nonzero(d.num_examples() >= 150)[0]:
      r = d.device_rows(i)
      early, late = r[d.periods[r] == 0], r[d.periods[r] == 3]
      if len(early) >= 20 and len(late) >= 20:
        tvs.append(0.5 * np.abs(_intent_hist(d.intents[early], num) - _intent_hist(d.intents[late], num)).sum())
    assert len(tvs) >= 10
    return np.mean(tvs)

  assert early_late_tv(1.0) > early_late_tv(0.0) + 0.1


def test_held_out_devices_share_the_world_but_not_the_users():
  train = fd.generate_population(800, seed=0)
  test = fd.held_out(800, seed=0)
  other_world = fd.held_out(800, seed=9)
  assert test.vocab == train.vocab and test.intent_names == train.intent_names
  assert not np.array_equal(train.num_examples(), test.num_examples())
  train_texts = set(map(tuple, train.tokens))
  # Different users, but the same popular requests: many test texts also occur in training.
  assert 0.2 < np.mean([tuple(t) in train_texts for t in test.tokens]) < 0.95

  def word_freq(d):
    return np.bincount(d.tokens.ravel(), minlength=len(d.vocab))[4:] / d.tokens.size

  same = np.corrcoef(word_freq(train), word_freq(test))[0, 1]
  other = np.corrcoef(word_freq(train), word_freq(other_world))[0, 1]
  assert same > 0.9 and same > other + 0.02


@pytest.mark.parametrize("kwargs,name", [
    ({"num_devices": 0}, "num_devices"), ({"num_devices": -3}, "num_devices"),
    ({"zipf_a": 1.0}, "zipf_a"), ({"max_len": 1}, "max_len"), ({"num_periods": 0}, "num_periods"),
    ({"mean_examples": 600}, "mean_examples"), ({"mean_examples": 0.5}, "mean_examples"),
    ({"max_examples_per_device": 0}, "max_examples_per_device"), ({"drift": 1.5}, "drift")])
def test_bad_arguments_name_the_argument(kwargs, name):
  args = {"num_devices": 10, **kwargs}
  with pytest.raises(ValueError, match=name):
    fd.generate_population(seed=0, **args)
  with pytest.raises(ValueError, match=name):
    fd.held_out(seed=0, **args)


def test_client_batch_matches_a_loop(pop):
  ids = [0, 7, 3, 7, 599] + list(np.argsort(-pop.num_examples())[:3])
  for rng in (None, np.random.default_rng(0)):
    b = pop.client_batch(ids, 12, rng)
    assert b.tokens.shape == (8, 12, 16) and b.tokens.dtype == np.int32
    assert b.mask.dtype == np.float32 and b.num_examples.dtype == np.int32
    np.testing.assert_array_equal(b.num_examples, b.mask.sum(1))
    for c, d in enumerate(ids):
      rows = pop.device_rows(d)
      k = min(len(rows), 12)
      assert b.num_examples[c] == k and (b.mask[c, :k] == 1).all() and (b.mask[c, k:] == 0).all()
      assert (b.tokens[c, k:] == 0).all() and (b.intents[c, k:] == 0).all()
      if rng is None or len(rows) <= 12:
        np.testing.assert_array_equal(b.tokens[c, :k], pop.tokens[rows[:k]])
        np.testing.assert_array_equal(b.intents[c, :k], pop.intents[rows[:k]])
      else:
        # A subset of the device's own examples: each picked row matches a distinct row.
        pairs = {tuple(pop.tokens[r]) + (pop.intents[r],) for r in rows}
        assert all(tuple(b.tokens[c, j]) + (b.intents[c, j],) in pairs for j in range(k))
  big = int(np.argmax(pop.num_examples()))
  picks = [pop.client_batch([big], 5, np.random.default_rng(s)).tokens[0] for s in range(2)]
  assert not np.array_equal(*picks)
  with pytest.raises(ValueError, match="device_ids"):
    pop.client_batch([600], 4)
  with pytest.raises(ValueError, match="max_examples"):
    pop.client_batch([0], 0)


def _brute_available(d, period, budget):
  tokens, intents, periods, counts = [], [], [], []
  for i in range(d.num_devices):
    rows = [r for r in range(d.offsets[i], d.offsets[i + 1]) if d.periods[r] <= period]
    rows = sorted(rows, key=lambda r: d.periods[r])  # stable: row order within a period
    if budget is not None:
      rows = rows[max(0, len(rows) - budget):]
    counts.append(len(rows))
    tokens += [d.tokens[r] for r in rows]
    intents += [d.intents[r] for r in rows]
    periods += [d.periods[r] for r in rows]
  return np.array(tokens).reshape(-1, d.max_len), np.array(intents), np.array(periods), np.array(counts)


def _assert_matches(got, want):
  np.testing.assert_array_equal(got.tokens, want[0])
  np.testing.assert_array_equal(got.intents, want[1])
  np.testing.assert_array_equal(got.periods, want[2])
  np.testing.assert_array_equal(got.num_examples(), want[3])


@pytest.mark.parametrize("period", [0, 2, 3])
@pytest.mark.parametrize("budget", [1, 7, None])
def test_available_matches_a_loop(pop, period, budget):
  small = pop.regroup(np.arange(pop.offsets[150]), pop.num_examples()[:150])
  _assert_matches(continual.available(small, period, budget), _brute_available(small, period, budget))
  # Rows not stored in period order (e.g. after a re-partition) are ordered by period first.
  rng = np.random.default_rng(period)
  perm = np.concatenate([rng.permutation(small.device_rows(i)) for i in range(small.num_devices)])
  mixed = small.regroup(perm, small.num_examples())
  _assert_matches(continual.available(mixed, period, budget), _brute_available(mixed, period, budget))


def test_period_slice_matches_a_loop(pop):
  for period in range(4):
    got = continual.period_slice(pop, period)
    keep = [r for r in range(len(pop.periods)) if pop.periods[r] == period]
    np.testing.assert_array_equal(got.tokens, pop.tokens[keep])
    np.testing.assert_array_equal(got.intents, pop.intents[keep])
    np.testing.assert_array_equal(
        got.num_examples(), [sum(pop.periods[r] == period for r in pop.device_rows(i)) for i in range(600)])
  assert continual.period_slice(pop, 9).num_examples().sum() == 0
  with pytest.raises(ValueError, match="period"):
    continual.period_slice(pop, -1)
  with pytest.raises(ValueError, match="storage_budget"):
    continual.available(pop, 1, 0)
