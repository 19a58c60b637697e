"""The embedded corpus: real synthesized speech, metadata, disjoint speakers, unequal accent
shares, determinism to the byte."""

import collections
import hashlib
import os

import numpy as np
import pytest

from libs.data import corpus, espeak, grammar, pipeline, synthetic_speech
from libs.speech.tokenizer import CharTokenizer


def test_espeak_synthesizes_speech_and_rejects_unknown_voice():
  synth = espeak.Synthesizer()
  audio = synth.synthesize("three four five", voice="en-gb-scotland+f3", rate=170, pitch=60)
  assert synth.sample_rate == 22050 and audio.dtype == np.int16
  assert 0.5 < len(audio) / synth.sample_rate < 3.0  # three words, about a second
  assert np.abs(audio).max() > 1000  # not silence
  with pytest.raises(espeak.EspeakError, match="unknown espeak-ng voice 'xx-nowhere'"):
    synth.synthesize("hello", voice="xx-nowhere")


def test_speakers_disjoint_unequal_shares_and_metadata():
  spec = synthetic_speech.BUILDER_CONFIGS[0].spec  # digits
  speakers = corpus.make_speakers(spec)
  ids = {split: {s.speaker_id for s in spk} for split, spk in speakers.items()}
  assert not (ids["train"] & ids["dev"]) and not (ids["train"] & ids["test"]) and not (ids["dev"] & ids["test"])
  assert len(ids["train"]) == spec.train_speakers
  train_counts = collections.Counter(s.accent for s in speakers["train"])
  assert set(train_counts) == set(corpus.ACCENT_NAMES) and len(train_counts) >= 6
  assert max(train_counts.values()) >= 5 * min(train_counts.values())  # some accents are rare
  assert collections.Counter(s.accent for s in speakers["test"]) == {a: spec.test_speakers_per_accent
                                                                     for a in corpus.ACCENT_NAMES}
  assert {s.gender for s in speakers["train"]} == {"male", "female"}
  centres = {a.name: a for a in corpus.ACCENTS}
  for s in speakers["train"]:
    a = centres[s.accent]
    assert abs(s.latitude - a.latitude) < 5 * a.spread_deg + 1e-6
    assert abs(s.longitude - a.longitude) < 5 * a.spread_deg + 1e-6
    assert s.region == a.region and s.voice.startswith(a.voice + "+")


def test_allocate_is_exact_and_keeps_every_part():
  for total in (7, 10, 40, 61):
    parts = corpus.allocate(total, [a.train_share for a in corpus.ACCENTS])
    assert sum(parts) == total and min(parts) >= 1


def test_grammars_produce_tokenizable_text():
  tok = CharTokenizer()
  rng = np.random.default_rng(0)
  for name, make in grammar.GRAMMARS.items():
    for _ in range(200):
      tok.encode(make(rng), context=name)
  assert len(grammar.vocabulary("sentences")) >= 300
  assert grammar.vocabulary("digits") <= set(grammar.DIGIT_WORDS) | {"oh"}


def test_spec_rejects_bad_values():
  with pytest.raises(ValueError, match="grammar"):
    corpus.CorpusSpec(grammar="poems")
  with pytest.raises(ValueError, match="train_speakers"):
    corpus.CorpusSpec(train_speakers=0)
  with pytest.raises(ValueError, match="snr_db"):
    corpus.CorpusSpec(snr_db=(30.0, 10.0))


def test_recording_condition_reaches_requested_snr():
  """Noise is scaled to the drawn SNR: recompute it from the clean and noisy signals."""
  rng_clean = np.random.default_rng(3)
  clean = (np.sin(2 * np.pi * 300 * np.arange(22050) / 22050) * 8000).astype(np.int16)
  for seed in range(5):
    rng = np.random.default_rng(seed)
    audio, cond = corpus.record(rng, clean, 22050, (5.0, 25.0))
    assert audio.dtype == np.int16 and 5.0 <= cond["snr_db"] <= 25.0
    assert np.abs(audio).max() == pytest.approx(32767 * 10 ** (cond["gain_db"] / 20), rel=0.01)
  del rng_clean


def _record_files(data_dir):
  root = os.path.join(data_dir, "synthetic_speech", "tiny", "1.0.0")
  return {f: hashlib.sha256(open(os.path.join(root, f), "rb").read()).hexdigest()
          for f in sorted(os.listdir(root)) if "array_record" in f}


def test_tiny_corpus_contents_and_byte_determinism_also_when_splits_spill(tiny_corpus_dir, tmp_path, monkeypatch):
  builder = pipeline.prepare_synthetic("tiny", tiny_corpus_dir)
  spec = builder.builder_config.spec
  sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert sizes == {"train": spec.train_speakers * spec.train_utterances_per_speaker,
                   "dev": 7 * spec.eval_utterances_per_speaker,
                   "test": 7 * spec.eval_utterances_per_speaker}
  example = builder.as_data_source("train")[0]
  for key in ("audio", "transcript", "speaker_id", "accent", "gender", "latitude", "longitude", "region"):
    assert key in example
  assert example["audio"].dtype == np.int16 and len(example["audio"]) > 8000
  speakers = {split: {int(e["speaker_id"]) for e in builder.as_data_source(split)} for split in sizes}
  assert not (speakers["train"] & speakers["test"])
  # Same version and seed, same bytes: generate again elsewhere (fresh processes) and compare.
  # This second build also shrinks TFDS's in-memory shuffle buffer so that the splits spill
  # to disk through tf.io.gfile, the path our shim makes work without TensorFlow.
  from tensorflow_datasets.core import shuffle  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 50_000)
  again = pipeline.prepare_synthetic("tiny", str(tmp_path))
  assert sum(len(e["audio"]) for e in again.as_data_source("train")) * 2 > 50_000  # really spilled
  first, second = _record_files(tiny_corpus_dir), _record_files(str(tmp_path))
  assert first and first == second


def test_constructing_a_builder_leaves_no_temporary_directories(tmp_path, monkeypatch):
  """TFDS makes an empty temp dir per builder construction to fetch GCS metadata; the
  shim skips that while GCS is disabled (thousands were left in /tmp otherwise)."""
  import tempfile  # pylint: disable=import-outside-toplevel
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  for i in range(3):
    synthetic_speech.SyntheticSpeech(config="tiny", data_dir=str(tmp_path / f"data{i}"))
  assert list(scratch.iterdir()) == []
