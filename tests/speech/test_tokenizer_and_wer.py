"""Tokenizer round trips and errors; WER against a brute-force edit distance."""

import itertools

import numpy as np
import pytest

from libs.speech import wer
from libs.speech.tokenizer import CharTokenizer


def test_round_trip_and_blank():
  tok = CharTokenizer()
  text = "what's the weather in leeds"
  ids = tok.encode(text)
  assert 0 not in ids and tok.blank_id == 0 and tok.vocab_size == 29
  assert tok.decode(ids) == text
  assert tok.decode([0] + ids + [0, 0]) == text


def test_unknown_character_names_character_and_context():
  with pytest.raises(ValueError, match=r"unknown character 'X' in utterance u1"):
    CharTokenizer().encode("call X", context="utterance u1")


def test_encode_batch_pads():
  ids, lengths = CharTokenizer().encode_batch(["ab", "a", ""])
  assert ids.shape == (3, 2) and list(lengths) == [2, 1, 0]
  assert ids[1, 1] == 0 and ids[2].tolist() == [0, 0]


def _levenshtein(a, b):
  d = np.arange(len(b) + 1)
  for i, x in enumerate(a, 1):
    prev, d[0] = d.copy(), i
    for j, y in enumerate(b, 1):
      d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (x != y))
  return int(d[-1])


def test_wer_matches_brute_force_edit_distance():
  rng = np.random.default_rng(0)
  words = ["one", "two", "three", "oh"]
  refs, hyps = [], []
  for _ in range(50):
    refs.append(" ".join(rng.choice(words, rng.integers(1, 6))))
    hyps.append(" ".join(rng.choice(words, rng.integers(0, 6))))
  edits = sum(_levenshtein(r.split(), h.split()) for r, h in zip(refs, hyps))
  total = sum(len(r.split()) for r in refs)
  assert wer.word_error_rate(refs, hyps) == pytest.approx(edits / total)
  counts = wer.utterance_errors(refs, hyps)
  for c, r, h in zip(counts, refs, hyps):
    assert c.errors == _levenshtein(r.split(), h.split())
    assert c.reference_words == len(r.split())
  assert wer.pooled_wer(counts) == pytest.approx(edits / total)


def test_wer_edit_kinds_and_errors():
  (c,) = wer.utterance_errors(["a b c d"], ["a x c d e"])
  assert (c.substitutions, c.deletions, c.insertions) == (1, 0, 1)
  (c,) = wer.utterance_errors(["a b c"], [""])
  assert (c.deletions, c.errors) == (3, 3)
  with pytest.raises(ValueError, match="differ in length"):
    wer.word_error_rate(["a"], ["a", "b"])
  with pytest.raises(ValueError, match="empty"):
    wer.word_error_rate([" "], ["a"])


def test_word_tokenizer_round_trip_and_errors():
  from libs.speech.tokenizer import WordTokenizer, make_tokenizer  # pylint: disable=import-outside-toplevel
  words = ("oh", "zero", "one", "two")
  tok = WordTokenizer(words)
  assert tok.vocab_size == 5 and tok.blank_id == 0
  rng = np.random.default_rng(0)
  for _ in range(20):
    text = " ".join(rng.choice(words, size=int(rng.integers(1, 6))))
    ids = tok.encode(text)
    assert len(ids) == len(text.split()) and tok.decode(ids) == text
    assert tok.decode([0] + ids + [0, 99]) == text  # blanks and out-of-vocabulary ids are skipped
  ids, lengths = tok.encode_batch(["one two", "oh"])
  assert ids.tolist() == [[3, 4], [1, 0]] and lengths.tolist() == [2, 1]
  with pytest.raises(ValueError, match="unknown word 'three' in utt7"):
    tok.encode("one three", context="utt7")
  with pytest.raises(ValueError, match="repeated"):
    WordTokenizer(("oh", "oh"))
  with pytest.raises(ValueError, match="units"):
    make_tokenizer("phones")
  assert isinstance(make_tokenizer("chars"), CharTokenizer)
