"""Tokenizers for transcripts; id 0 is the CTC/transducer blank in both.

* `CharTokenizer`: space, apostrophe and a-z (open vocabulary).
* `WordTokenizer`: the words of a fixed, public vocabulary (a closed domain such as
  connected digits). One output unit per word: a transducer emits ~4 labels for a digit
  string instead of ~18 characters, which is what PATE's per-query cost needs.

Example:
  >>> tok = CharTokenizer()
  >>> tok.encode("oh two")
  [17, 10, 1, 22, 25, 17]
  >>> tok.decode([17, 10, 0, 1, 22, 25, 17])
  'oh two'
  >>> words = WordTokenizer(("oh", "one", "two"))
  >>> words.encode("two oh"), words.decode([3, 0, 1])
  ([3, 1], 'two oh')
"""

from __future__ import annotations

import string
from typing import Sequence

import numpy as np

BLANK_ID = 0


class Tokenizer:
  """What every tokenizer shares: padded batch encoding of its `encode`."""

  def encode(self, text: str, *, context: str = "") -> list[int]:
    raise NotImplementedError

  def encode_batch(self, texts: Sequence[str], *, pad_to: int | None = None,
                   contexts: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Padded [B, U] int32 ids (padding 0) and [B] lengths."""
    encoded = [self.encode(t, context=contexts[i] if contexts else "") for i, t in enumerate(texts)]
    lengths = np.array([len(e) for e in encoded], np.int32)
    width = max(int(lengths.max(initial=0)), 1) if pad_to is None else pad_to
    if lengths.size and lengths.max() > width:
      raise ValueError(f"a transcript has {lengths.max()} tokens, more than pad_to={width}")
    ids = np.zeros((len(texts), width), np.int32)
    for i, e in enumerate(encoded):
      ids[i, : len(e)] = e
    return ids, lengths


class CharTokenizer(Tokenizer):
  """Maps lowercase English text to ids; id 0 is the CTC/transducer blank."""

  def __init__(self, alphabet: str = " '" + string.ascii_lowercase):
    if len(set(alphabet)) != len(alphabet):
      raise ValueError(f"alphabet has repeated characters: {alphabet!r}")
    self.alphabet = alphabet
    self._ids = {c: i + 1 for i, c in enumerate(alphabet)}

  @property
  def vocab_size(self) -> int:
    return len(self.alphabet) + 1

  @property
  def blank_id(self) -> int:
    return BLANK_ID

  def encode(self, text: str, *, context: str = "") -> list[int]:
    """Ids of `text`; raises ValueError naming the character (and `context`, e.g. an
    utterance id) for characters outside the alphabet."""
    try:
      return [self._ids[c] for c in text]
    except KeyError as e:
      where = f" in {context}" if context else ""
      raise ValueError(f"unknown character {e.args[0]!r}{where} (transcript {text!r}); the "
                       f"tokenizer accepts {self.alphabet!r}") from None

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`, skipping blanks and ids outside the vocabulary (e.g. padding)."""
    return "".join(self.alphabet[i - 1] for i in ids if 0 < i <= len(self.alphabet))


class WordTokenizer(Tokenizer):
  """Maps text over a fixed vocabulary to one id per word; id 0 is the blank.

  The vocabulary must be public (a grammar's word list, never read from private
  transcripts): the ids are the answer domain of every PATE query.
  """

  def __init__(self, words: Sequence[str]):
    words = tuple(words)
    if not words:
      raise ValueError("WordTokenizer needs at least one word")
    if len(set(words)) != len(words):
      raise ValueError(f"the vocabulary has repeated words: {words!r}")
    bad = [w for w in words if not w or any(c.isspace() for c in w)]
    if bad:
      raise ValueError(f"vocabulary entries must be non-empty words without spaces, got {bad!r}")
    self.words = words
    self._ids = {w: i + 1 for i, w in enumerate(words)}

  @property
  def vocab_size(self) -> int:
    return len(self.words) + 1

  @property
  def blank_id(self) -> int:
    return BLANK_ID

  def encode(self, text: str, *, context: str = "") -> list[int]:
    """Ids of the whitespace-separated words of `text`; ValueError naming an unknown word."""
    try:
      return [self._ids[w] for w in text.split()]
    except KeyError as e:
      where = f" in {context}" if context else ""
      raise ValueError(f"unknown word {e.args[0]!r}{where} (transcript {text!r}); the vocabulary is "
                       f"{self.words!r}") from None

  def decode(self, ids: Sequence[int]) -> str:
    """Words of `ids` joined by spaces, skipping blanks and ids outside the vocabulary."""
    return " ".join(self.words[i - 1] for i in ids if 0 < i <= len(self.words))




def make_tokenizer(units: str, vocabulary: Sequence[str] = ()) -> CharTokenizer | WordTokenizer:
  """"chars" -> CharTokenizer(); "words" -> WordTokenizer(vocabulary)."""
  if units == "chars":
    return CharTokenizer()
  if units == "words":
    return WordTokenizer(vocabulary)
  raise ValueError(f"units must be 'chars' or 'words', got {units!r}")
