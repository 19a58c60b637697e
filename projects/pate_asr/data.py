"""The project's data: embedded synthetic corpus by default, or a local LibriSpeech copy.

`load_splits` reads the in-domain corpus (`config.data.synthetic_config`); `load_public`
the PATE sweep's public labeled corpus (`config.data.public_config`), whose speakers are
disjoint from the in-domain ones.

Example:
  >>> tokenizer = make_tokenizer(config)
  >>> splits = load_splits(config, tokenizer)
  >>> len(splits.train), len(splits.dev), len(splits.test)
"""

from __future__ import annotations

import dataclasses

import ml_collections

from libs.data import pipeline
from libs.speech import tokenizer as tokenizer_lib


@dataclasses.dataclass
class Splits:
  train: pipeline.SpeechSplit
  dev: pipeline.SpeechSplit
  test: pipeline.SpeechSplit


def make_tokenizer(config: ml_collections.ConfigDict) -> tokenizer_lib.Tokenizer:
  """Characters, or words of the public `config.model.vocabulary`."""
  m = config.model
  return tokenizer_lib.make_tokenizer(m.get("units", "chars"), tuple(m.get("vocabulary", ())))


def builder_for(data_cfg: ml_collections.ConfigDict, synthetic_config: str | None = None):
  data_dir = data_cfg.data_dir or pipeline.default_data_dir()
  if data_cfg.corpus == "librispeech" and synthetic_config is None:
    from libs.data import librispeech_local  # pylint: disable=import-outside-toplevel
    return librispeech_local.prepare_librispeech(data_cfg.librispeech_dir, data_dir)
  return pipeline.prepare_synthetic(synthetic_config or data_cfg.synthetic_config, data_dir)


def load_public(config: ml_collections.ConfigDict, tokenizer: tokenizer_lib.Tokenizer) -> Splits:
  """The public labeled corpus (`config.data.public_config`): train, dev and test splits."""
  builder = builder_for(config.data, config.data.public_config)
  load = lambda split: pipeline.load_split(builder, split, tokenizer)
  return Splits(train=load("train"), dev=load("dev"), test=load("test"))


def load_splits(config: ml_collections.ConfigDict, tokenizer: tokenizer_lib.Tokenizer) -> Splits:
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
