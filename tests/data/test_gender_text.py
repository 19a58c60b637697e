"""The gendered-text generator: determinism, role reversal, and the bias it controls."""

import numpy as np
import pytest

from libs.data import gender_text as gt


@pytest.fixture(scope="module")
def vocab():
  return gt.vocabulary()


def test_corpora_are_deterministic_and_seed_dependent(vocab):
  a = gt.task_corpus(vocab, 200, bias=0.5, seed=3)
  b = gt.task_corpus(vocab, 200, bias=0.5, seed=3)
  c = gt.task_corpus(vocab, 200, bias=0.5, seed=4)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)
  np.testing.assert_array_equal(gt.lm_corpus(vocab, 100, bias=0.2, seed=1), gt.lm_corpus(vocab, 100, bias=0.2, seed=1))


def test_role_reversal_is_an_involution_that_swaps_every_pair(vocab):
  tokens = gt.lm_corpus(vocab, 500, bias=1.0, seed=0)
  twice = vocab.swap_gender(vocab.swap_gender(tokens))
  np.testing.assert_array_equal(twice, tokens)
  for m, f in gt.GENDER_PAIRS:
    assert vocab.swap_ids[vocab.index[m]] == vocab.index[f] and vocab.swap_ids[vocab.index[f]] == vocab.index[m]
  male, female = vocab.gender_counts(tokens)
  rmale, rfemale = vocab.gender_counts(vocab.swap_gender(tokens))
  np.testing.assert_array_equal(male, rfemale)
  np.testing.assert_array_equal(female, rmale)
  neutral = tokens[~vocab.is_gendered(tokens)]
  assert neutral.shape[0] > 0  # the role-neutral sentences are their own reversal
  np.testing.assert_array_equal(vocab.swap_gender(neutral), neutral)


@pytest.mark.parametrize("bias", [0.0, 0.5, 1.0])
def test_the_stereotypical_share_is_one_plus_bias_over_two(vocab, bias):
  data = gt.task_corpus(vocab, 4000, bias=bias, seed=0)
  share = data.stereotypical.mean()
  assert abs(share - (1 + bias) / 2) < 3 * np.sqrt(0.25 / 4000) + 1e-9
  # The gender the generator records is the one the words say.
  male, female = vocab.gender_counts(data.tokens)
  np.testing.assert_array_equal(male > 0, data.gender == gt.MALE)
  np.testing.assert_array_equal(female > 0, data.gender == gt.FEMALE)


def test_only_ambiguous_examples_share_a_duty_and_no_task_text_names_the_profession(vocab):
  data = gt.task_corpus(vocab, 2000, bias=0.0, seed=1, ambiguity=0.5)
  assert 0.45 < data.ambiguous.mean() < 0.55
  assert not np.isin(data.tokens, vocab.profession_ids).any()
  texts = [vocab.decode(t) for t in data.tokens]
  for text, label, amb in zip(texts, data.labels, data.ambiguous):
    own = gt.DUTIES[gt.PROFESSIONS[label]]
    if amb:
      assert gt.SHARED_DUTIES[label // 2] in text
    else:
      assert any(d in text for d in own)


def test_bad_arguments_are_named(vocab):
  with pytest.raises(ValueError, match="bias must be in"):
    gt.task_corpus(vocab, 10, bias=1.5, seed=0)
  with pytest.raises(ValueError, match="ambiguity"):
    gt.task_corpus(vocab, 10, bias=0.5, seed=0, ambiguity=-0.1)


def test_prompts_balance_the_genders_of_each_profession(vocab):
  tokens, lengths, professions = gt.prompts(vocab)
  for p in range(len(gt.PROFESSIONS)):
    male, female = vocab.gender_counts(tokens[professions == p])
    assert male.sum() == female.sum() > 0
  assert np.all(tokens[np.arange(len(lengths)), lengths - 1] > 0)
  assert np.all(tokens[np.arange(len(lengths)), np.minimum(lengths, gt.MAX_LEN - 1)] == gt.PAD)
