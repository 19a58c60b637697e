"""TFDS builder of the embedded multi-accent speech corpus (array_record, no TensorFlow).

Real speech synthesized by espeak-ng (see `libs.data.corpus`), with per-speaker
metadata on every example. Configs:

  * `digits`: connected digit strings, 40 training speakers; the quick task (under
    a minute to generate on 2 cores).
  * `digits_large`: digits with 160 training speakers (6400 utterances), for the PATE
    experiments, where every teacher needs enough speakers of its own.
  * `digits_many`: the same 6400 training utterances spread over 640 speakers (10 each),
    so that each of 16 teachers sees ~30 voices and generalizes to new speakers.
  * `digits_public` and `digits_indomain`: the two data roles of a PATE experiment with
    a public pretraining corpus. `digits_public` is a labeled corpus of other speakers
    under clean conditions: en-US and en-GB-x-rp only, clean channel, SNR 30-40 dB, 120
    training speakers (speaker ids from 100000). `digits_indomain` is the sensitive
    in-domain corpus: all accents, all channels, a harder SNR of 5-30 dB, 640 training
    speakers of 10 utterances (speaker ids from 200000). Their seeds and speaker ids
    differ, so no voice or id is shared.
  * `digits_fairness`: the fairness corpus. Speakers live in regions that are not
    just their accents (`regions="mixed"`, see `libs.data.regions`), so geographic and
    geo-demographic cohorts differ from accent cohorts; all accents and channels, SNR
    5-30 dB, 480 training speakers and population-shaped dev (210) and test (280)
    splits whose accent mix is the training one (rare accents stay rare), 8
    utterances per speaker (7760 in all; speaker ids from 300000); about 2.5 minutes
    to generate on 2 shared cores.
  * `sentences`: assistant commands and questions over ~480 words, 60 training speakers.
  * `tiny`: a few speakers and utterances, for tests.

Every speaker is synthesized from espeak-ng's start-up state (see `libs.data.espeak`),
so a config always gives the same examples, audio identical to the byte, whatever the
number of worker processes (`TSML_CORPUS_WORKERS`, default: every core) and the order
they take speakers in. (The array_record files themselves are byte-identical only
between builds in one process: TFDS serializes tf.train.Example feature maps in an
order that changes from process to process.)

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
    _config("digits_public",
            "Public pretraining corpus: en-US and en-GB-x-rp speakers, clean channel, SNR 30-40 dB.",
            grammar="digits", accents=("en-US", "en-GB-x-rp"), channel_probs=(1.0, 0.0, 0.0),
            snr_db=(30.0, 40.0), seed=1, speaker_id_offset=100_000, train_speakers=120,
            train_utterances_per_speaker=10, dev_speakers_per_accent=1,
            test_speakers_per_accent=1, eval_utterances_per_speaker=25),
    _config("digits_indomain",
            "In-domain corpus: all accents and channels, SNR 5-30 dB, 640 speakers of 10 utterances.",
            grammar="digits", snr_db=(5.0, 30.0), seed=2, speaker_id_offset=200_000,
            train_speakers=640, train_utterances_per_speaker=10, dev_speakers_per_accent=4,
            test_speakers_per_accent=4, eval_utterances_per_speaker=20),
    _config("digits_fairness",
            "Fairness corpus: regions mixed across accents, population-shaped dev and test splits.",
            grammar="digits", regions="mixed", snr_db=(5.0, 30.0), seed=3,
            speaker_id_offset=300_000, train_speakers=480, train_utterances_per_speaker=8,
            dev_speakers=210, test_speakers=280, eval_utterances_per_speaker=8),
    _config("tiny", "A few digit utterances per split, for tests.",
            grammar="digits", train_speakers=7, dev_speakers_per_accent=1,
            test_speakers_per_accent=1, train_utterances_per_speaker=4,
            eval_utterances_per_speaker=2),
)


def _pool_context():
  # Workers live for the whole split: `corpus.synthesize_speaker` resets espeak-ng before
  # each speaker, so no state leaks between speakers. forkserver forks from a clean,
  # single-threaded server, so it is safe after JAX has started its threads; spawn
  # elsewhere. The server preloads only the synthesis modules, never the caller's
  # `__main__` (workers still import it, as under spawn, so scripts need the
  # `if __name__ == "__main__"` guard), and the task function lives in `corpus`, so
  # workers need not import TFDS.
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
    # A few speakers per message; small enough to keep every worker busy to the end.
    chunksize = max(1, min(8, len(tasks) // (4 * workers)))
    with tqdm.tqdm(total=count * len(tasks), unit="utt",
                   desc=f"synthesizing {self.builder_config.name}/{split}") as bar:
      with _pool_context().Pool(workers) as pool:
        for examples in pool.imap(corpus.synthesize_task, tasks, chunksize=chunksize):
          bar.update(len(examples))
          yield from examples
