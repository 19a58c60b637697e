"""Character tokenizer for transcripts: blank id 0, then space, apostrophe and a-z.

Example:
  >>> tok = CharTokenizer()
  >>> tok.encode("oh two")
  [17, 10, 1, 22, 25, 17]
  >>> tok.decode([17, 10, 0, 1, 22, 25, 17])
  'oh two'
"""

from __future__ import annotations

import string
from typing import Sequence

import numpy as np

BLANK_ID = 0


class CharTokenizer:
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

  def encode_batch(self, texts: Sequence[str], *, pad_to: int | None = None,
                   contexts: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Padded [B, U] int32 ids (padding 0) and [B] lengths."""
    encoded = [self.encode(t, context=contexts[i] if contexts else "") for i, t in enumerate(texts)]
    lengths = np.array([len(e) for e in encoded], np.int32)
    width = max(int(lengths.max(initial=0)), 1) if pad_to is None else pad_to
    if lengths.size and lengths.max() > width:
      raise ValueError(f"a transcript has {lengths.max()} characters, more than pad_to={width}")
    ids = np.zeros((len(texts), width), np.int32)
    for i, e in enumerate(encoded):
      ids[i, : len(e)] = e
    return ids, lengths
