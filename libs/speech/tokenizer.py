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
  """A fixed list of output units (characters or words); id 0 is the CTC/transducer blank.

  Subclasses set `units` (the symbols of ids 1..n), `_separator` (what joins decoded units)
  and `_unit_name`, and split text into units in `_split`.
  """

  units: tuple[str, ...]
  _separator: str
  _unit_name: str

  def _set_units(self, units: Sequence[str]) -> None:
    self.units = tuple(units)
    self._ids = {u: i + 1 for i, u in enumerate(self.units)}

  def _split(self, text: str) -> Sequence[str]:
    raise NotImplementedError

  @property
  def vocab_size(self) -> int:
    return len(self.units) + 1

  @property
  def blank_id(self) -> int:
    return BLANK_ID

  def encode(self, text: str, *, context: str = "") -> list[int]:
    """Ids of `text`; raises ValueError naming the unknown unit (and `context`, e.g. an
    utterance id)."""
    try:
      return [self._ids[u] for u in self._split(text)]
    except KeyError as e:
      where = f" in {context}" if context else ""
      raise ValueError(f"unknown {self._unit_name} {e.args[0]!r}{where} (transcript {text!r}); the "
                       f"tokenizer accepts {self._accepts()}") from None

  def _accepts(self) -> str:
    return repr(self.units)

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`, skipping blanks and ids outside the vocabulary (e.g. padding)."""
    return self._separator.join(self.units[i - 1] for i in ids if 0 < i <= len(self.units))

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
  """Maps lowercase English text to one id per character."""

  _separator = ""
  _unit_name = "character"

  def __init__(self, alphabet: str = " '" + string.ascii_lowercase):
    if len(set(alphabet)) != len(alphabet):
      raise ValueError(f"alphabet has repeated characters: {alphabet!r}")
    self.alphabet = alphabet
    self._set_units(alphabet)

  def _split(self, text: str) -> Sequence[str]:
    return text

  def _accepts(self) -> str:
    return repr(self.alphabet)


class WordTokenizer(Tokenizer):
  """Maps text over a fixed vocabulary to one id per word.

  The vocabulary must be public (a grammar's word list, never read from private
  transcripts): the ids are the answer domain of every PATE query.
  """

  _separator = " "
  _unit_name = "word"

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
    self._set_units(words)

  def _split(self, text: str) -> Sequence[str]:
    return text.split()


def make_tokenizer(units: str, vocabulary: Sequence[str] = ()) -> CharTokenizer | WordTokenizer:
  """"chars" -> CharTokenizer(); "words" -> WordTokenizer(vocabulary)."""
  if units == "chars":
    return CharTokenizer()
  if units == "words":
    return WordTokenizer(vocabulary)
  raise ValueError(f"units must be 'chars' or 'words', got {units!r}")
