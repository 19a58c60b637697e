"""The fairness project's data: the embedded corpus's splits, speakers and region table.

Every utterance of the synthetic corpora carries its speaker's accent, gender, home
latitude/longitude and region; the region-level demographic table (majority accent, female
share: what census data is for zip codes) is computed from the corpus's generated population
(`libs.data.regions`), without reading any audio.

Example:
  >>> d = load(config)
  >>> d.train, d.dev, d.test   # libs.data.pipeline.SpeechSplit
  >>> d.region_table["New York City"]["majority_accent"]
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from libs.data import pipeline
from libs.data import regions as regions_lib
from libs.speech import tokenizer as tokenizer_lib

# Metadata the studies need on every utterance.
REQUIRED_METADATA = ("speaker_id", "accent", "gender", "latitude", "longitude", "region")


@dataclasses.dataclass
class Data:
  train: pipeline.SpeechSplit
  dev: pipeline.SpeechSplit
  test: pipeline.SpeechSplit
  tokenizer: tokenizer_lib.Tokenizer
  region_table: dict[str, dict]  # region -> {"majority_accent", "female_share", ...}


def make_tokenizer(config: ml_collections.ConfigDict) -> tokenizer_lib.Tokenizer:
  m = config.model
  return tokenizer_lib.make_tokenizer(m.units, tuple(m.vocabulary))


def region_attributes(table) -> dict[str, dict]:
  """The demographic attributes a geo-demographic partition may split regions on."""
  out = {}
  for name, r in table.items():
    out[name] = {"majority_accent": r.majority_accent, "female_share": float(r.female_share)}
  return out


def load(config: ml_collections.ConfigDict) -> Data:
  """The train/dev/test splits of `config.data.synthetic_config` and its region table.

  Raises:
    ValueError: for a corpus whose utterances lack speaker metadata (e.g. LibriSpeech has no
      accent or location), naming what is missing.
  """
  d = config.data
  if d.corpus != "synthetic":
    raise ValueError(f"config.data.corpus must be 'synthetic' (the studies need each speaker's accent, "
                     f"gender and home location), got {d.corpus!r}")
  builder = pipeline.prepare_synthetic(d.synthetic_config, d.data_dir or None)
  tokenizer = make_tokenizer(config)
  load_split = lambda split, limit=0: pipeline.load_split(builder, split, tokenizer, max_examples=limit or None)
  splits = {"train": load_split("train", d.max_train_examples), "dev": load_split("dev"), "test": load_split("test")}
  for name, split in splits.items():
    missing = [k for k in REQUIRED_METADATA if k not in split.metadata]
    if missing:
      raise ValueError(f"split {name!r} of {builder.name}/{d.synthetic_config} lacks speaker metadata {missing}")
  table = region_attributes(regions_lib.demographic_table(builder.builder_config.spec))
  return Data(splits["train"], splits["dev"], splits["test"], tokenizer, table)


@dataclasses.dataclass(frozen=True)
class SpeakerTable:
  """One row per speaker of a split (sorted by speaker id), with the per-utterance index."""
  speaker_ids: np.ndarray
  accent: np.ndarray
  gender: np.ndarray
  region: np.ndarray
  latitude: np.ndarray
  longitude: np.ndarray
  utterance_speaker: np.ndarray  # For each utterance, its row in this table.


def speaker_table(split: pipeline.SpeechSplit) -> SpeakerTable:
  meta = split.metadata
  ids, first, inverse = np.unique(meta["speaker_id"], return_index=True, return_inverse=True)
  return SpeakerTable(ids, meta["accent"][first], meta["gender"][first], meta["region"][first],
                      meta["latitude"][first].astype(np.float64), meta["longitude"][first].astype(np.float64),
                      inverse)
