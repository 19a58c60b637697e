"""The project's data: embedded synthetic corpus by default, or a local LibriSpeech copy.

Example:
  >>> splits = load_splits(config, CharTokenizer())
  >>> len(splits.train), len(splits.dev), len(splits.test)
"""

from __future__ import annotations

import dataclasses

import ml_collections

from libs.data import pipeline
from libs.speech.tokenizer import CharTokenizer


@dataclasses.dataclass
class Splits:
  train: pipeline.SpeechSplit
  dev: pipeline.SpeechSplit
  test: pipeline.SpeechSplit


def builder_for(data_cfg: ml_collections.ConfigDict):
  data_dir = data_cfg.data_dir or pipeline.default_data_dir()
  if data_cfg.corpus == "librispeech":
    from libs.data import librispeech_local  # pylint: disable=import-outside-toplevel
    return librispeech_local.prepare_librispeech(data_cfg.librispeech_dir, data_dir)
  return pipeline.prepare_synthetic(data_cfg.synthetic_config, data_dir)


def load_splits(config: ml_collections.ConfigDict, tokenizer: CharTokenizer) -> Splits:
  d = config.data
  builder = builder_for(d)
  available = sorted(builder.info.splits)
  for field in ("train_split", "dev_split", "test_split"):
    if d[field] not in available:
      raise ValueError(f"config.data.{field}={d[field]!r} is not a split of {builder.name}; "
                       f"available: {available}")
  load = lambda split, limit: pipeline.load_split(builder, split, tokenizer, max_examples=limit or None)
  return Splits(train=load(d.train_split, d.max_train_examples),
                dev=load(d.dev_split, d.max_eval_examples),
                test=load(d.test_split, d.max_eval_examples))
