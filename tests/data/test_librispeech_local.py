"""Tests of the local LibriSpeech TFDS builder on a tiny fake LibriSpeech tree."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds

from libs.data import librispeech_local

tfds.disable_progress_bar()

# (subset, speaker, chapter, utterance, transcript, samples); speaker 19 is in
# SPEAKERS.TXT, speaker 84 is not.
_UTTERANCES = (
    ("train-clean-100", 19, 198, 0, "NORTHANGER ABBEY", 1600),
    ("train-clean-100", 19, 198, 1, "THIS LITTLE WORK WAS FINISHED IN THE YEAR", 2400),
    ("train-clean-100", 84, 121123, 2, "IT'S  THE  END", 800),
    ("dev-clean", 84, 121550, 0, "HE HOPED THERE WOULD BE STEW", 1200),
)

_SPEAKERS = """\
; Some comment lines, as in LibriSpeech.
;ID  |SEX| SUBSET           |MINUTES| NAME
19   | F | train-clean-100  | 25.19 | Kara |Shallenberg
"""


def _utterance_id(speaker, chapter, utterance):
  return f"{speaker}-{chapter}-{utterance:04d}"


def _write_tree(root: pathlib.Path, speakers: bool = True) -> dict[str, np.ndarray]:
  """Writes a fake LibriSpeech tree; returns {utterance id: samples}."""
  rng = np.random.default_rng(0)
  audio, lines = {}, {}
  for subset, speaker, chapter, utterance, text, length in _UTTERANCES:
    chapter_dir = root / subset / str(speaker) / str(chapter)
    chapter_dir.mkdir(parents=True, exist_ok=True)
    uid = _utterance_id(speaker, chapter, utterance)
    audio[uid] = rng.integers(-32768, 32768, size=length, dtype=np.int16)
    sf.write(chapter_dir / f"{uid}.flac", audio[uid], 16000, subtype="PCM_16")
    lines.setdefault(chapter_dir / f"{speaker}-{chapter}.trans.txt", []).append(
        f"{uid} {text}\n")
  for path, chapter_lines in lines.items():
    path.write_text("".join(reversed(chapter_lines)))  # The builder sorts lines.
  if speakers:
    (root / "SPEAKERS.TXT").write_text(_SPEAKERS)
  return audio


def _prepare(source: pathlib.Path, data_dir: pathlib.Path):
  builder = librispeech_local.LibrispeechLocal(data_dir=data_dir)
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=source))
  return builder


def _by_id(source):
  return {ex["utterance_id"].decode(): ex for ex in (source[i] for i in range(len(source)))}


def test_builds_splits_with_features(tmp_path):
  audio = _write_tree(tmp_path / "LibriSpeech")
  builder = _prepare(tmp_path / "LibriSpeech", tmp_path / "tfds")

  assert {name: s.num_examples for name, s in builder.info.splits.items()} == {
      "train_clean_100": 3, "dev_clean": 1}
  examples = {**_by_id(builder.as_data_source("train_clean_100")),
              **_by_id(builder.as_data_source("dev_clean"))}
  assert examples.keys() == audio.keys()
  for uid, samples in audio.items():
    assert examples[uid]["audio"].dtype == np.int16
    np.testing.assert_array_equal(examples[uid]["audio"], samples)
  train = examples["19-198-0001"]
  assert train["transcript"] == b"this little work was finished in the year"
  assert (train["speaker_id"], train["chapter_id"], train["gender"]) == (19, 198, b"female")
  assert examples["84-121123-0002"]["transcript"] == b"it's the end"
  dev = examples["84-121550-0000"]
  assert (dev["speaker_id"], dev["chapter_id"], dev["gender"]) == (84, 121550, b"unknown")
  assert builder.info.metadata["sample_rate"] == 16000


def test_flat_root_is_one_train_split_and_generation_is_sorted(tmp_path):
  _write_tree(tmp_path / "LibriSpeech", speakers=False)
  flat = tmp_path / "LibriSpeech" / "train-clean-100"
  builder = librispeech_local.prepare_librispeech(flat, tmp_path / "tfds")

  assert list(builder.info.splits) == ["train"]
  assert {ex["gender"] for ex in _by_id(builder.as_data_source("train")).values()} == {
      b"unknown"}
  uids = [u.utterance_id for u in librispeech_local.list_utterances(flat)]
  assert uids == ["19-198-0000", "19-198-0001", "84-121123-0002"]


def test_prepare_rejects_cache_from_another_source(tmp_path):
  _write_tree(tmp_path / "a")
  _write_tree(tmp_path / "b")
  librispeech_local.prepare_librispeech(tmp_path / "a", tmp_path / "tfds")
  # The same source reuses the cache; another one must not silently read it.
  librispeech_local.prepare_librispeech(tmp_path / "a", tmp_path / "tfds")
  with pytest.raises(ValueError, match=re.escape(str(tmp_path / "a"))):
    librispeech_local.prepare_librispeech(tmp_path / "b", tmp_path / "tfds")


def test_missing_dir(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
    _prepare(missing, tmp_path / "tfds")
  with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
    librispeech_local.prepare_librispeech(missing, tmp_path / "tfds2")


def test_no_transcripts(tmp_path):
  (tmp_path / "src" / "dev-clean" / "84" / "121550").mkdir(parents=True)
  with pytest.raises(ValueError, match="No LibriSpeech transcripts.*dev-clean"):
    _prepare(tmp_path / "src", tmp_path / "tfds")


def test_corrupt_audio(tmp_path):
  _write_tree(tmp_path / "src")
  corrupt = tmp_path / "src" / "dev-clean" / "84" / "121550" / "84-121550-0000.flac"
  corrupt.write_bytes(b"this is not a flac file" * 10)
  with pytest.raises(ValueError, match=re.escape(f"Cannot read audio file {corrupt}")):
    _prepare(tmp_path / "src", tmp_path / "tfds")


def test_wrong_sample_rate(tmp_path):
  _write_tree(tmp_path / "src")
  wrong = tmp_path / "src" / "dev-clean" / "84" / "121550" / "84-121550-0000.flac"
  sf.write(wrong, np.zeros(800, np.int16), 8000, subtype="PCM_16")
  with pytest.raises(ValueError, match=re.escape(f"{wrong} has sample rate 8000")):
    _prepare(tmp_path / "src", tmp_path / "tfds")


def test_transcript_line_without_audio(tmp_path):
  _write_tree(tmp_path / "src")
  missing = tmp_path / "src" / "dev-clean" / "84" / "121550" / "84-121550-0000.flac"
  missing.unlink()
  with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
    _prepare(tmp_path / "src", tmp_path / "tfds")


def test_malformed_transcript_line(tmp_path):
  _write_tree(tmp_path / "src")
  transcript = tmp_path / "src" / "dev-clean" / "84" / "121550" / "84-121550.trans.txt"
  transcript.write_text("84-121550-0000\n")  # No transcript text.
  with pytest.raises(ValueError, match=re.escape(f"line 1 in {transcript}")):
    _prepare(tmp_path / "src", tmp_path / "tfds")
