"""Word error rate (via jiwer), corpus-level and per utterance.

Example:
  >>> word_error_rate(["one two three"], ["one too three"])
  0.3333333333333333
  >>> utterance_errors(["one two"], ["one"])[0]
  EditCounts(substitutions=0, deletions=1, insertions=0, reference_words=2)
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jiwer


@dataclasses.dataclass(frozen=True)
class EditCounts:
  substitutions: int
  deletions: int
  insertions: int
  reference_words: int

  @property
  def errors(self) -> int:
    return self.substitutions + self.deletions + self.insertions


def _check(references: Sequence[str], hypotheses: Sequence[str]):
  if len(references) != len(hypotheses):
    raise ValueError(f"references and hypotheses differ in length: {len(references)} vs {len(hypotheses)}")
  if not references:
    raise ValueError("references is empty")
  for i, r in enumerate(references):
    if not r.split():
      raise ValueError(f"references[{i}] is empty; WER is undefined for an empty reference")


def utterance_errors(references: Sequence[str], hypotheses: Sequence[str]) -> list[EditCounts]:
  """Edit counts of each (reference, hypothesis) pair, e.g. for per-group WER."""
  _check(references, hypotheses)
  out = jiwer.process_words(list(references), list(hypotheses))
  counts = []
  for ref, chunks in zip(out.references, out.alignments):
    c = {"substitute": 0, "delete": 0, "insert": 0}
    for chunk in chunks:
      if chunk.type == "substitute" or chunk.type == "delete":
        c[chunk.type] += chunk.ref_end_idx - chunk.ref_start_idx
      elif chunk.type == "insert":
        c["insert"] += chunk.hyp_end_idx - chunk.hyp_start_idx
    counts.append(EditCounts(c["substitute"], c["delete"], c["insert"], len(ref)))
  return counts


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
  """Corpus-level WER: total edits over total reference words."""
  _check(references, hypotheses)
  return float(jiwer.wer(list(references), list(hypotheses)))


def pooled_wer(counts: Sequence[EditCounts]) -> float:
  """Corpus-level WER from per-utterance counts (e.g. of one speaker group)."""
  words = sum(c.reference_words for c in counts)
  if words == 0:
    raise ValueError("no reference words")
  return sum(c.errors for c in counts) / words
