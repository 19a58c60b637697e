"""TFDS builder of the embedded multi-accent speech corpus (array_record, no TensorFlow).

Real speech synthesized by espeak-ng (see `libs.data.corpus`), with per-speaker
metadata on every example. Configs:

  * `digits`: connected digit strings, 40 training speakers; the quick task (about a
    minute to generate on 2 cores).
  * `digits_large`: digits with 160 training speakers (6400 utterances), for the PATE
    experiments, where every teacher needs enough speakers of its own.
  * `digits_many`: the same 6400 training utterances spread over 640 speakers (10 each),
    so that each of 16 teachers sees ~30 voices and generalizes to new speakers.
  * `sentences`: assistant commands and questions over ~480 words, 60 training speakers.
  * `tiny`: a few speakers and utterances, for tests.

Example:
  >>> builder = SyntheticSpeech(config="digits", data_dir="/tmp/tfds")
  >>> builder.download_and_prepare(file_format="array_record")
  >>> source = builder.as_data_source("train")
  >>> source[0]["transcript"], source[0]["accent"]
  (b'four oh seven', b'en-GB-scotland')
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from libs.data import corpus
from libs.data import schema
from libs.data import tfds_compat

tfds_compat.enable()


@dataclasses.dataclass(eq=False)
class SyntheticSpeechConfig(tfds.core.BuilderConfig):
  spec: corpus.CorpusSpec = dataclasses.field(default_factory=corpus.CorpusSpec)


def _config(name: str, description: str, **spec: object) -> SyntheticSpeechConfig:
  return SyntheticSpeechConfig(name=name, description=description, spec=corpus.CorpusSpec(**spec))


BUILDER_CONFIGS = (
    _config("digits", "Connected digit strings; the quick configuration.",
            grammar="digits", train_speakers=40, train_utterances_per_speaker=60,
            eval_utterances_per_speaker=25),
    _config("digits_large", "Digits with 160 training speakers, for PATE (teachers need data).",
            grammar="digits", train_speakers=160, train_utterances_per_speaker=40,
            eval_utterances_per_speaker=25),
    _config("digits_many", "Digits with 640 training speakers of 10 utterances each (6400), for PATE.",
            grammar="digits", train_speakers=640, train_utterances_per_speaker=10,
            eval_utterances_per_speaker=25),
    _config("sentences", "Voice-assistant commands and questions, ~480 words.",
            grammar="sentences", train_speakers=60, train_utterances_per_speaker=100,
            eval_utterances_per_speaker=30),
    _config("tiny", "A few digit utterances per split, for tests.",
            grammar="digits", train_speakers=7, dev_speakers_per_accent=1,
            test_speakers_per_accent=1, train_utterances_per_speaker=4,
            eval_utterances_per_speaker=2),
)


def _synthesize(args):
  spec, speaker, count = args
  return corpus.synthesize_speaker(spec, speaker, count)


def _pool_context():
  # A fresh process per speaker (maxtasksperchild=1) keeps espeak-ng's hidden state from
  # leaking between speakers. forkserver forks from a clean, single-threaded server, so it
  # is safe after JAX has started its threads; spawn elsewhere.
  # The server preloads only the synthesis module, never the caller's `__main__`.
  if sys.platform.startswith("linux"):
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["libs.data.corpus", "libs.data.espeak"])
    return context
  return multiprocessing.get_context("spawn")


def num_workers() -> int:
  return int(os.environ.get("TSML_CORPUS_WORKERS", os.cpu_count() or 1))


class SyntheticSpeech(tfds.core.GeneratorBasedBuilder):
  """Multi-accent synthetic English speech with speaker metadata."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = list(BUILDER_CONFIGS)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=schema.utterance_features(
            accent=tfds.features.Text(),
            gender=tfds.features.Text(),
            voice=tfds.features.Text(),
            latitude=schema.scalar(np.float32),
            longitude=schema.scalar(np.float32),
            region=tfds.features.Text(),
            channel=tfds.features.Text(),
            snr_db=schema.scalar(np.float32),
            gain_db=schema.scalar(np.float32),
        ),
        supervised_keys=("audio", "transcript"),
        homepage="https://github.com/espeak-ng/espeak-ng",
        metadata=tfds.core.MetadataDict(sample_rate=corpus.SAMPLE_RATE),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    speakers = corpus.make_speakers(self.builder_config.spec)
    return {split: self._generate_examples(split, spk) for split, spk in speakers.items()}

  def _generate_examples(self, split, speakers):
    spec = self.builder_config.spec
    count = (spec.train_utterances_per_speaker if split == "train"
             else spec.eval_utterances_per_speaker)
    tasks = [(spec, s, count) for s in speakers]
    workers = min(num_workers(), len(tasks))
    with tqdm.tqdm(total=count * len(tasks), unit="utt",
                   desc=f"synthesizing {self.builder_config.name}/{split}") as bar:
      with _pool_context().Pool(workers, maxtasksperchild=1) as pool:
        for examples in pool.imap(_synthesize, tasks):
          bar.update(len(examples))
          yield from examples
