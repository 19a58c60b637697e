"""libs.audit.canaries: exposure against a brute-force rank, extraction against enumeration."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from libs.audit import canaries


def test_all_fillings_is_the_lexicographic_product_and_fill_template_places_slots():
  fill = canaries.all_fillings(3, 4)
  assert fill.tolist() == [list(t) for t in itertools.product(range(4), repeat=3)]
  # The index of a filling is its base-A number, which the fedlearn config relies on.
  assert np.array_equal(fill @ (4 ** np.arange(3)[::-1]), np.arange(64))
  rows = canaries.fill_template([2, 7, 0, 9, 0, 3], [2, 4], [10, 11, 12], [[0, 2], [1, 1]])
  assert rows.tolist() == [[2, 7, 10, 9, 12, 3], [2, 7, 11, 9, 11, 3]]
  with pytest.raises(ValueError):
    canaries.all_fillings(0, 3)


def _brute_force_exposure(scores, index):
  """Exposure from the canary's best position in a sorted list (ties broken in its favour)."""
  order = sorted(range(len(scores)), key=lambda i: (scores[i], i != index))
  rank = order.index(index) + 1
  return math.log2(len(scores)) - math.log2(rank)


def test_exposure_matches_a_brute_force_rank_on_a_tiny_candidate_space():
  rng = np.random.default_rng(0)
  for trial in range(50):
    n = int(rng.integers(1, 40))
    scores = rng.integers(0, 6, n).astype(float) if trial % 2 else rng.normal(size=n)  # ties half the time
    index = int(rng.integers(0, n))
    assert canaries.exposure(scores, index) == pytest.approx(_brute_force_exposure(list(scores), index))
  # The most likely candidate has the full log2(N) bits, the least likely 0.
  assert canaries.exposure([3.0, 1.0, 2.0, 5.0], 1) == pytest.approx(2.0)
  assert canaries.exposure([3.0, 1.0, 2.0, 5.0], 3) == pytest.approx(0.0)
  with pytest.raises(ValueError):
    canaries.rank([1.0, 2.0], 2)


def test_unseen_canaries_have_the_expected_exposure_of_a_uniform_rank():
  # A model that never saw the canary ranks it uniformly: E[exposure] = log2 N - E[log2 U{1..N}].
  rng = np.random.default_rng(1)
  n = 1000
  values = [canaries.exposure(rng.normal(size=n), 0) for _ in range(2000)]
  expected = math.log2(n) - np.mean(np.log2(np.arange(1, n + 1)))
  assert np.mean(values) == pytest.approx(expected, abs=0.1)


def _toy_model(num_slots=3, vocab=12, length=6, seed=0):
  """A 'classifier' whose label logit is a sum of per-position token weights: its best filling is
  the per-slot argmax over the alphabet."""
  w = jax.random.normal(jax.random.key(seed), (length, vocab))

  def label_log_prob(params, soft):  # soft [L, V]
    logit = jnp.sum(soft * params)
    return jax.nn.log_softmax(jnp.stack([logit, jnp.zeros(()), jnp.ones(())]))[0]

  return w, label_log_prob


def test_relaxed_extraction_finds_the_filling_that_enumeration_finds():
  template, slots, alphabet = np.array([2, 5, 0, 0, 0, 3]), np.array([2, 3, 4]), np.array([6, 7, 8, 9, 10])
  for seed in range(3):
    w, label_log_prob = _toy_model(seed=seed)
    attack = canaries.make_relaxed_extractor(label_log_prob, template, slots, alphabet, vocab_size=12, steps=150,
                                             learning_rate=0.2, restarts=4)
    decoded, score = attack(w, jax.random.key(seed))

    def scores_of(rows):
      return np.array([float(label_log_prob(w, jax.nn.one_hot(r, 12))) for r in rows])

    best = canaries.enumeration_extraction(scores_of, template, slots, alphabet, batch_size=7)
    brute = max(itertools.product(range(5), repeat=3),
                key=lambda f: sum(float(w[s, alphabet[a]]) for s, a in zip(slots, f)))
    assert tuple(best) == brute
    assert tuple(np.asarray(decoded)) == brute
    assert float(score) == pytest.approx(scores_of(canaries.fill_template(template, slots, alphabet, [brute]))[0],
                                         rel=1e-5)


def test_enumeration_extraction_handles_a_leading_model_axis():
  template, slots, alphabet = np.array([2, 0, 0, 3]), np.array([1, 2]), np.array([4, 5, 6])
  targets = np.array([[0, 2], [1, 1], [2, 0]])

  def scores_of(rows):  # model m scores a row by minus its distance to targets[m]
    picked = np.searchsorted(alphabet, rows[:, slots])
    return -np.abs(picked[None] - targets[:, None]).sum(-1)

  assert np.array_equal(canaries.enumeration_extraction(scores_of, template, slots, alphabet, batch_size=4), targets)


def test_slot_accuracy():
  assert canaries.slot_accuracy([1, 2, 3, 4], [1, 0, 3, 0]) == 0.5
  with pytest.raises(ValueError):
    canaries.slot_accuracy([1, 2], [1, 2, 3])
