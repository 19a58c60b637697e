"""The recognizer whose errors the studies look at: train (or fine-tune) and score per utterance.

Training is `libs.speech.trainer.train` (the resumable loop); a stage's per-utterance edit
counts are cached next to its checkpoints, so a rerun does not decode again.

Example:
  >>> model, params = train_base(config, workdir, data)
  >>> scores = score(config, os.path.join(workdir, "asr"), model, params, data.test, data.tokenizer, "test")
  >>> scores.wer, scores.errors[:3], scores.words[:3]
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import ml_collections
import numpy as np

from libs.data import pipeline
from libs.models import asr as asr_lib
from libs.speech import evaluate as evaluate_lib
from libs.speech import trainer
from libs.speech.tokenizer import Tokenizer
from libs.train import io as io_lib


@dataclasses.dataclass(frozen=True)
class Scores:
  """Edit errors and reference words of every utterance of a split (split order)."""
  errors: np.ndarray
  words: np.ndarray

  @property
  def wer(self) -> float:
    return float(self.errors.sum() / max(self.words.sum(), 1))


def with_train(config: ml_collections.ConfigDict, section: str) -> ml_collections.ConfigDict:
  """`config` whose `train` section is `config[section]` (trainer.train reads `config.train`)."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.train = ml_collections.ConfigDict(config[section].to_dict())
  return out


def train_stage(config: ml_collections.ConfigDict, stage_dir: str, model, split: pipeline.SpeechSplit,
                dev: pipeline.SpeechSplit | None, tokenizer: Tokenizer, *, desc: str, init_params=None,
                loss_fn: Callable | None = None):
  """Trains (or resumes, or just restores) one model in `stage_dir`; None if interrupted."""
  result = trainer.train(config, stage_dir, model, split, dev, tokenizer, desc=desc, init_params=init_params,
                         loss_fn=loss_fn)
  if result.preempted:
    return None
  return result


def train_base(config: ml_collections.ConfigDict, workdir: str, data):
  """The base recognizer, trained from scratch on every training speaker (`workdir/asr`).

  Returns (model, params), or None if a signal stopped training (rerun to resume).
  """
  model = asr_lib.build_model(config.model, data.tokenizer.vocab_size)
  result = train_stage(config, os.path.join(workdir, "asr"), model, data.train, data.dev, data.tokenizer,
                       desc="asr")
  return None if result is None else (model, result.state.params)


@dataclasses.dataclass(frozen=True)
class Base:
  """The base recognizer and its per-utterance scores on the dev and test speakers."""
  model: Any
  params: Any
  dev: Scores
  test: Scores


def base_and_scores(config: ml_collections.ConfigDict, workdir: str, data) -> Base | None:
  """`train_base`, then its dev and test scores (cached); None if a signal stopped training."""
  base = train_base(config, workdir, data)
  if base is None:
    return None
  model, params = base
  stage = os.path.join(workdir, "asr")
  return Base(model, params, score(config, stage, model, params, data.dev, data.tokenizer, "dev"),
              score(config, stage, model, params, data.test, data.tokenizer, "test"))


def score(config: ml_collections.ConfigDict, stage_dir: str, model, params, split: pipeline.SpeechSplit,
          tokenizer: Tokenizer, name: str) -> Scores:
  """Greedy-decodes `split` and returns its per-utterance edit counts (cached in `stage_dir`)."""
  path = os.path.join(stage_dir, f"scores_{name}.npz")
  if os.path.exists(path):
    with np.load(path) as f:
      if len(f["errors"]) == len(split):
        return Scores(f["errors"], f["words"])
  result = evaluate_lib.evaluate(evaluate_lib.make_decode_fn(model), params, split, tokenizer,
                                 batch_size=config.eval.batch_size)
  scores = Scores(np.array([e.errors for e in result.errors], np.int64),
                  np.array([e.reference_words for e in result.errors], np.int64))
  if io_lib.is_primary():
    os.makedirs(stage_dir, exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, errors=scores.errors, words=scores.words)
    os.replace(tmp, path)
  return scores
