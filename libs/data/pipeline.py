"""Input pipeline: TFDS split -> log-mel features (JAX) -> tokens -> padded, bucketed batches.

A split is featurized once and held in memory (`SpeechSplit`); the corpora this
repository trains on by default are small. Batches are a deterministic function of
(seed, step), so a resumed run sees exactly the batches an uninterrupted run would.

Example:
  >>> builder = prepare_synthetic("digits")
  >>> train = load_split(builder, "train", CharTokenizer())
  >>> batcher = Batcher(train, batch_size=32, seed=0)
  >>> batch = batcher.batch(step=0)   # dict of NumPy arrays, fixed shapes per bucket
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from libs.speech import features as features_lib
from libs.speech.tokenizer import Tokenizer

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_METADATA_KEYS = ("speaker_id", "chapter_id", "accent", "gender", "voice", "latitude", "longitude",
                  "region", "channel", "snr_db", "gain_db")


def default_data_dir() -> str:
  """Where TFDS data sets are written: $TSML_DATA_DIR, else `<repo>/data/tfds`."""
  return os.environ.get("TSML_DATA_DIR") or os.path.join(_REPO_ROOT, "data", "tfds")


def prepare_synthetic(config: str = "digits", data_dir: str | None = None):
  """The embedded corpus builder, generated on first use and cached in `data_dir`."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from libs.data import synthetic_speech  # pylint: disable=import-outside-toplevel

  names = [c.name for c in synthetic_speech.BUILDER_CONFIGS]
  if config not in names:
    raise ValueError(f"unknown synthetic corpus config {config!r}; choose one of {names}")
  tfds.disable_progress_bar()  # Synthesis shows its own progress bar.
  builder = synthetic_speech.SyntheticSpeech(config=config, data_dir=data_dir or default_data_dir())
  builder.download_and_prepare(file_format="array_record")
  return builder


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclasses.dataclass
class SpeechSplit:
  """A featurized split in host memory."""
  features: list[np.ndarray]  # Each [frames, num_mels] float32, normalized.
  labels: list[np.ndarray]  # Each [length] int32.
  transcripts: list[str]
  utterance_ids: list[str]
  metadata: dict[str, np.ndarray]  # Per-utterance columns (speaker_id, accent, ...).

  def __len__(self) -> int:
    return len(self.features)

  @functools.cached_property
  def feature_lengths(self) -> np.ndarray:
    return np.array([len(f) for f in self.features], np.int32)

  @functools.cached_property
  def label_lengths(self) -> np.ndarray:
    return np.array([len(l) for l in self.labels], np.int32)

  def subset(self, indices: Sequence[int]) -> "SpeechSplit":
    idx = np.asarray(indices, np.int64)
    return SpeechSplit(
        features=[self.features[i] for i in idx], labels=[self.labels[i] for i in idx],
        transcripts=[self.transcripts[i] for i in idx],
        utterance_ids=[self.utterance_ids[i] for i in idx],
        metadata={k: v[idx] for k, v in self.metadata.items()})


def _round_up(x: int, multiple: int) -> int:
  return -(-int(x) // multiple) * multiple


@functools.partial(jax.jit, static_argnames=("config",))
def _featurize(audio, lengths, config):
  return features_lib.log_mel(audio, lengths, config=config)


def featurize(audios: Sequence[np.ndarray], config: features_lib.FeatureConfig = features_lib.FeatureConfig(),
              *, batch_size: int = 32, desc: str | None = None) -> list[np.ndarray]:
  """Normalized log-mel features of each waveform, computed under jit in length buckets."""
  lengths = np.array([len(a) for a in audios])
  too_short = np.nonzero(lengths < config.frame_length)[0]
  if too_short.size:
    raise ValueError(f"{too_short.size} utterances are shorter than one frame "
                     f"({config.frame_length} samples), e.g. index {too_short[0]}")
  order = np.argsort(lengths, kind="stable")
  out: list[np.ndarray | None] = [None] * len(audios)
  # Pad to 1/2-second multiples: few shapes to compile, little padding.
  bucket = config.sample_rate // 2
  for start in tqdm.trange(0, len(order), batch_size, desc=desc or "features", unit="batch",
                           leave=False, disable=desc is None):
    idx = order[start: start + batch_size]
    width = _round_up(lengths[idx].max(), bucket)
    batch = np.zeros((batch_size, width), np.int16)
    for row, i in enumerate(idx):
      batch[row, : lengths[i]] = audios[i]
    feats, frames = jax.device_get(_featurize(batch, np.pad(lengths[idx], (0, batch_size - len(idx)),
                                                            constant_values=width), config))
    for row, i in enumerate(idx):
      out[i] = np.asarray(feats[row, : frames[row]], np.float32)
  return out  # type: ignore[return-value]


def load_split(builder, split: str, tokenizer: Tokenizer,
               feature_config: features_lib.FeatureConfig = features_lib.FeatureConfig(),
               *, max_examples: int | None = None) -> SpeechSplit:
  """Reads a TFDS split (synthetic or LibriSpeech), featurizes and tokenizes it.

  Raises:
    ValueError: naming the utterance, for a transcript character the tokenizer lacks.
  """
  source = builder.as_data_source(split)
  count = len(source) if max_examples is None else min(len(source), max_examples)
  examples = [source[i] for i in range(count)]
  # Storage order is TFDS's key hash; sort by utterance id for a stable, readable order.
  examples.sort(key=lambda e: _text(e["utterance_id"]))
  ids = [_text(e["utterance_id"]) for e in examples]
  transcripts = [_text(e["transcript"]) for e in examples]
  labels = [np.asarray(tokenizer.encode(t, context=f"utterance {u!r} of split {split!r}"), np.int32)
            for t, u in zip(transcripts, ids)]
  metadata = {}
  for key in _METADATA_KEYS:
    if key in examples[0]:
      values = [e[key] for e in examples]
      metadata[key] = (np.array([_text(v) for v in values]) if isinstance(values[0], bytes | str)
                       else np.asarray(values))
  feats = featurize([np.asarray(e["audio"]) for e in examples], feature_config, desc=f"features {split}")
  return SpeechSplit(feats, labels, transcripts, ids, metadata)


def frame_buckets(lengths: np.ndarray, num_buckets: int = 3, multiple: int = 16) -> tuple[int, ...]:
  """Padding boundaries at length quantiles (rounded up to `multiple`); the last covers all."""
  qs = np.quantile(lengths, np.linspace(0, 1, num_buckets + 1)[1:])
  return tuple(sorted({_round_up(q, multiple) for q in qs}))


def _pad_batch(split: SpeechSplit, idx: np.ndarray, batch_size: int, frames: int, label_width: int) -> dict:
  num_mels = split.features[0].shape[1]
  batch = {
      "features": np.zeros((batch_size, frames, num_mels), np.float32),
      "feature_lengths": np.ones((batch_size,), np.int32),  # >= 1 keeps padded rows well-formed.
      "labels": np.zeros((batch_size, label_width), np.int32),
      "label_lengths": np.zeros((batch_size,), np.int32),
      "weights": np.zeros((batch_size,), np.float32),
      "index": np.full((batch_size,), -1, np.int32),
  }
  for row, i in enumerate(idx):
    f, l = split.features[i], split.labels[i]
    batch["features"][row, : len(f)] = f
    batch["feature_lengths"][row] = len(f)
    batch["labels"][row, : len(l)] = l
    batch["label_lengths"][row] = len(l)
    batch["weights"][row] = 1.0
    batch["index"][row] = i
  return batch


def bucket_label_widths(split: SpeechSplit, buckets: Sequence[int]) -> tuple[int, ...]:
  """Label padding for each frame bucket: the longest transcript that can land in it,
  rounded up to 8 (one label shape per frame bucket keeps compilations few)."""
  bucket_of = np.searchsorted(buckets, split.feature_lengths)
  return tuple(_round_up(max(int(split.label_lengths[bucket_of <= b].max(initial=1)), 1), 8)
               for b in range(len(buckets)))


def make_batch(split: SpeechSplit, indices: Sequence[int], batch_size: int, buckets: Sequence[int],
               label_widths: Sequence[int]) -> dict:
  """A padded batch of the given utterances (at most `batch_size`; the rest is padding of
  weight 0 and index -1), frames padded to the smallest bucket that fits."""
  idx = np.asarray(indices, np.int64)
  if len(idx) > batch_size:
    raise ValueError(f"{len(idx)} utterances do not fit in a batch of {batch_size}")
  longest = int(split.feature_lengths[idx].max()) if len(idx) else 1
  pos = int(np.searchsorted(buckets, longest))
  if pos == len(buckets):
    raise ValueError(f"buckets {tuple(buckets)} do not cover an utterance of {longest} frames")
  return _pad_batch(split, idx, batch_size, buckets[pos], label_widths[pos])


class Batcher:
  """Deterministic, length-bucketed training batches: `batch(step)` depends only on
  (seed, step), so resuming at any step reproduces the same data order.

  Each epoch is a seeded permutation; within windows of `window` batches utterances are
  sorted by length (so a batch pads little), and the order of batches is shuffled.
  """

  def __init__(self, split: SpeechSplit, batch_size: int, *, seed: int, num_buckets: int = 3,
               window: int = 50, buckets: tuple[int, ...] | None = None):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(split) < batch_size:
      raise ValueError(f"split has {len(split)} utterances, fewer than batch_size={batch_size}")
    self.split, self.batch_size, self.seed, self.window = split, batch_size, seed, window
    lengths = split.feature_lengths
    self.buckets = buckets or frame_buckets(lengths, num_buckets)
    if max(self.buckets) < lengths.max():
      raise ValueError(f"buckets {self.buckets} do not cover the longest utterance ({lengths.max()} frames)")
    self.label_widths = bucket_label_widths(split, self.buckets)
    self.steps_per_epoch = len(split) // batch_size
    self._epoch_cache: tuple[int, list[np.ndarray]] | None = None

  def _epoch(self, epoch: int) -> list[np.ndarray]:
    if self._epoch_cache is None or self._epoch_cache[0] != epoch:
      rng = np.random.default_rng((self.seed, epoch))
      perm = rng.permutation(len(self.split))[: self.steps_per_epoch * self.batch_size]
      span = self.window * self.batch_size
      lengths = self.split.feature_lengths
      chunks = [perm[s: s + span] for s in range(0, len(perm), span)]
      ordered = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
      batches = ordered.reshape(self.steps_per_epoch, self.batch_size)
      self._epoch_cache = (epoch, [batches[i] for i in rng.permutation(self.steps_per_epoch)])
    return self._epoch_cache[1]

  def batch(self, step: int) -> dict:
    epoch, index = divmod(int(step), self.steps_per_epoch)
    return make_batch(self.split, self._epoch(epoch)[index], self.batch_size, self.buckets, self.label_widths)


def eval_batches(split: SpeechSplit, batch_size: int, buckets: Sequence[int] | None = None) -> Iterator[dict]:
  """Every utterance once, sorted by length, in fixed-size batches; the last batch is
  padded with rows of weight 0 and index -1."""
  lengths = split.feature_lengths
  buckets = tuple(buckets or ())
  if not buckets or max(buckets) < lengths.max():
    buckets = buckets + (_round_up(lengths.max(), 16),)
  order = np.argsort(lengths, kind="stable")
  for start in range(0, len(order), batch_size):
    idx = order[start: start + batch_size]
    frames = buckets[int(np.searchsorted(buckets, lengths[idx].max()))]
    label_width = _round_up(max(int(split.label_lengths[idx].max()), 1), 8)
    yield _pad_batch(split, idx, batch_size, frames, label_width)
