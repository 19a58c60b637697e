"""Data roles of the PATE experiment: sensitive vs public speakers, teacher partitions.

* Sensitive (private, labeled): training speakers whose data trains the teachers (and the
  DP-SGD and non-private baselines).
* Public (unlabeled): other speakers; the pipeline reads only their audio, never their
  transcripts, except to score the teacher labels at the end.
* Test: the corpus' test split (held-out speakers).

Scenarios:
  * `matched`: public speakers drawn from the same accent/voice distribution as the
    sensitive ones (a stratified split of the training speakers by accent).
  * `mismatched`: public speech from other accents than the sensitive speech
    (`config.pate.public_accents`).

Teachers partition the sensitive data BY SPEAKER: every speaker is in exactly one part,
so one speaker's data can change one teacher only, and the PATE guarantee holds for a
speaker (and hence for an utterance) as the unit of privacy.

Example:
  >>> roles = split_roles(train_split, scenario="matched", public_fraction=0.2, seed=0)
  >>> parts = speaker_partition(roles.sensitive, num_teachers=8, seed=0)
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from libs.data import pipeline
from libs.train import rng as rng_lib

SCENARIOS = ("matched", "mismatched")


@dataclasses.dataclass
class Roles:
  sensitive: pipeline.SpeechSplit
  public: pipeline.SpeechSplit
  sensitive_speakers: list[int]
  public_speakers: list[int]


def _speakers(split: pipeline.SpeechSplit) -> np.ndarray:
  if "speaker_id" not in split.metadata:
    raise ValueError("the split has no speaker_id metadata; PATE partitions data by speaker")
  return np.asarray(split.metadata["speaker_id"])


def split_roles(split: pipeline.SpeechSplit, *, scenario: str, public_fraction: float, seed: int,
                public_accents: Sequence[str] = ()) -> Roles:
  """Splits a training split's speakers into sensitive and public ones."""
  if scenario not in SCENARIOS:
    raise ValueError(f"config.pate.scenario must be one of {SCENARIOS}, got {scenario!r}")
  speakers = _speakers(split)
  unique = np.unique(speakers)
  rng = rng_lib.Streams(seed).numpy("pate/speaker_roles")
  if scenario == "matched":
    if not 0.0 < public_fraction < 1.0:
      raise ValueError(f"config.pate.public_fraction must be in (0, 1), got {public_fraction}")
    accents = split.metadata.get("accent")
    public = []
    groups = ({a: np.unique(speakers[accents == a]) for a in np.unique(accents)} if accents is not None
              else {"all": unique})
    # Stratify by accent; the rounding remainder goes to a random accent, so the public
    # speakers follow the sensitive accent mix.
    for _, members in sorted(groups.items()):
      members = rng.permutation(members)
      take = int(np.floor(public_fraction * len(members) + rng.random()))
      public.extend(members[:take].tolist())
  else:
    if not public_accents:
      raise ValueError("config.pate.public_accents must name accents for the mismatched scenario")
    accents = split.metadata.get("accent")
    if accents is None:
      raise ValueError("the mismatched scenario needs accent metadata")
    unknown = set(public_accents) - set(np.unique(accents).tolist())
    if unknown:
      raise ValueError(f"config.pate.public_accents has accents absent from the data: {sorted(unknown)}")
    public = np.unique(speakers[np.isin(accents, list(public_accents))]).tolist()
  public_set = set(int(s) for s in public)
  sensitive = [int(s) for s in unique if int(s) not in public_set]
  if not public_set or not sensitive:
    raise ValueError(f"scenario {scenario!r} left {len(sensitive)} sensitive and {len(public_set)} public speakers")
  is_public = np.isin(speakers, list(public_set))
  return Roles(split.subset(np.nonzero(~is_public)[0]), split.subset(np.nonzero(is_public)[0]),
               sensitive, sorted(public_set))


def speaker_partition(split: pipeline.SpeechSplit, num_parts: int, *, seed: int) -> list[np.ndarray]:
  """Indices of `split` for each of `num_parts` disjoint, speaker-wise parts.

  Speakers are dealt to the part with the fewest utterances so far (largest speakers
  first, ties broken at random), which balances utterance counts.
  """
  speakers = _speakers(split)
  unique, counts = np.unique(speakers, return_counts=True)
  if num_parts < 1 or num_parts > len(unique):
    raise ValueError(f"config.pate.num_teachers must be in [1, {len(unique)}] (one speaker per teacher at "
                     f"least), got {num_parts}")
  rng = rng_lib.Streams(seed).numpy("pate/teacher_partition")
  order = np.lexsort((rng.random(len(unique)), -counts))
  load = np.zeros(num_parts, np.int64)
  owner = {}
  for i in order:
    part = int(np.argmin(load))
    owner[int(unique[i])] = part
    load[part] += counts[i]
  parts = np.array([owner[int(s)] for s in speakers])
  return [np.nonzero(parts == p)[0] for p in range(num_parts)]
