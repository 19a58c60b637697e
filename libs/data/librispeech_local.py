"""TFDS builder of a local LibriSpeech copy (array_record, no download, no TensorFlow).

Reads an already extracted LibriSpeech tree given as TFDS's manual directory:

  ROOT/SPEAKERS.TXT                                      (optional)
  ROOT/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
  ROOT/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac

Each subset directory (train-clean-100, dev-clean, test-clean, or any other name)
becomes one split named with '-' replaced by '_' (train-clean-100 -> train_clean_100).
If ROOT directly holds the (numeric) speaker directories, there is a single split
"train". Audio must be 16 kHz mono; it is stored as int16 samples. Transcripts are
lowercased to match the character tokenizer (a-z, space and apostrophe). Gender comes
from SPEAKERS.TXT ("male"/"female"), or is "unknown" when the file or the speaker's
entry is missing.

Examples are generated in sorted order (subsets, speakers, chapters, utterances); TFDS
then stores them in its deterministic key-hash shuffled order. The prepared dataset
is cached in `data_dir` and records the source directory it was built from.

Example:
  >>> builder = prepare_librispeech("/data/LibriSpeech", data_dir="/tmp/tfds")
  >>> source = builder.as_data_source("dev_clean")
  >>> source[0]["transcript"], source[0]["gender"]
  (b'he hoped there would be stew for dinner', b'male')
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterator

from etils import epath
import numpy as np
import soundfile as sf
import tensorflow_datasets as tfds
import tqdm

from libs.data import schema
from libs.data import tfds_compat

tfds_compat.enable()

SAMPLE_RATE = 16000
TRAIN_SPLIT = "train"  # Split name when ROOT holds speaker directories directly.

_UTTERANCE_ID = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_GENDERS = {"M": "male", "F": "female"}


@dataclasses.dataclass(frozen=True)
class Utterance:
  """One transcript line, resolved to its audio file."""
  utterance_id: str
  speaker_id: int
  chapter_id: int
  transcript: str
  audio_path: epath.Path


def split_name(subset: str) -> str:
  """Maps a subset directory name to a TFDS split name.

  Example:
    >>> split_name("train-clean-100")
    'train_clean_100'
  """
  # TFDS split names are word characters; '-' is the only other one LibriSpeech uses.
  return re.sub(r"\W", "_", subset)


def _subdirs(path: epath.Path) -> list[epath.Path]:
  """Non-hidden subdirectories, sorted by name."""
  return sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")),
                key=lambda p: p.name)


def _numeric_subdirs(path: epath.Path, what: str) -> list[epath.Path]:
  """Subdirectories named by integer ids (speakers, chapters), sorted numerically."""
  dirs = _subdirs(path)
  for d in dirs:
    if not d.name.isdigit():
      raise ValueError(f"Expected a numeric LibriSpeech {what} directory, got {d}")
  return sorted(dirs, key=lambda d: int(d.name))


def find_subsets(root: epath.PathLike) -> dict[str, epath.Path]:
  """Returns {split name: subset directory} for a LibriSpeech root, in sorted order.

  Example:
    >>> find_subsets("/data/LibriSpeech")
    {'dev_clean': PosixGPath('/data/LibriSpeech/dev-clean'), ...}
  """
  root = epath.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"LibriSpeech directory does not exist: {root}")
  dirs = _subdirs(root)
  numeric = [d for d in dirs if d.name.isdigit()]
  if numeric and len(numeric) == len(dirs):
    return {TRAIN_SPLIT: root}  # No subsets: ROOT holds speaker directories.
  if numeric:
    raise ValueError(f"{root} mixes speaker directories ({numeric[0].name}, ...) with "
                     "subset directories; expected one or the other")
  subsets = {}
  for d in dirs:
    name = split_name(d.name)
    if name in subsets:
      raise ValueError(f"Subsets {subsets[name]} and {d} both map to split {name!r}")
    subsets[name] = d
  if not subsets:
    raise ValueError(f"No LibriSpeech transcripts found under {root}: it holds no "
                     "subset or speaker directories")
  return subsets


def read_speakers(path: epath.PathLike) -> dict[int, str]:
  """Parses LibriSpeech's SPEAKERS.TXT into {speaker id: "male" | "female"}.

  Data lines read `ID | SEX | SUBSET | MINUTES | NAME`; ';' starts a comment.

  Example:
    >>> read_speakers("/data/LibriSpeech/SPEAKERS.TXT")[19]
    'female'
  """
  path = epath.Path(path)
  genders = {}
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    line = line.strip()
    if not line or line.startswith(";"):
      continue
    # maxsplit keeps names containing '|' (speaker 60 is "|CBW|Simon") in one field.
    fields = [f.strip() for f in line.split("|", 4)]
    if len(fields) < 5 or not fields[0].isdigit() or fields[1] not in _GENDERS:
      raise ValueError(f"Malformed speaker line {number} in {path}: {line!r}; expected "
                       "'ID | SEX | SUBSET | MINUTES | NAME' with SEX M or F")
    genders[int(fields[0])] = _GENDERS[fields[1]]
  return genders


def read_transcripts(path: epath.PathLike) -> list[Utterance]:
  """Parses one `<speaker>-<chapter>.trans.txt` file, sorted by utterance number.

  Checks that every line names an utterance of this file's speaker and chapter and
  that its FLAC file exists next to the transcript.

  Example:
    >>> read_transcripts("/data/LibriSpeech/dev-clean/84/121123/84-121123.trans.txt")[0]
    Utterance(utterance_id='84-121123-0000', speaker_id=84, chapter_id=121123, ...)
  """
  path = epath.Path(path)
  prefix = path.name.removesuffix(".trans.txt")
  match = re.fullmatch(r"(\d+)-(\d+)", prefix)
  if not match:
    raise ValueError(f"Expected a transcript file named <speaker>-<chapter>.trans.txt, "
                     f"got {path}")
  speaker_id, chapter_id = int(match[1]), int(match[2])
  utterances = []
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    if not line.strip():
      continue
    utterance_id, _, text = line.strip().partition(" ")
    words = text.split()
    match = _UTTERANCE_ID.match(utterance_id)
    if not words or not match or (int(match[1]), int(match[2])) != (speaker_id, chapter_id):
      raise ValueError(f"Malformed transcript line {number} in {path}: {line!r}; expected "
                       f"'{prefix}-<utterance> TRANSCRIPT'")
    audio_path = path.parent / f"{utterance_id}.flac"
    if not audio_path.exists():
      raise FileNotFoundError(f"Audio file {audio_path} for transcript line {number} in "
                              f"{path} does not exist")
    utterances.append(Utterance(utterance_id, speaker_id, chapter_id,
                                " ".join(words).lower(), audio_path))
  utterances.sort(key=lambda u: int(u.utterance_id.rsplit("-", 1)[1]))
  return utterances


def list_utterances(subset_dir: epath.PathLike) -> list[Utterance]:
  """All utterances of one subset (or flat root), sorted by speaker, chapter, line.

  Example:
    >>> len(list_utterances("/data/LibriSpeech/dev-clean"))
    2703
  """
  subset_dir = epath.Path(subset_dir)
  utterances = []
  for speaker_dir in _numeric_subdirs(subset_dir, "speaker"):
    for chapter_dir in _numeric_subdirs(speaker_dir, "chapter"):
      for transcript in sorted(chapter_dir.glob("*.trans.txt"), key=lambda p: p.name):
        utterances.extend(read_transcripts(transcript))
  if not utterances:
    raise ValueError(f"No LibriSpeech transcripts found under {subset_dir}: expected "
                     "<speaker>/<chapter>/<speaker>-<chapter>.trans.txt files")
  return utterances


def read_audio(path: epath.PathLike) -> np.ndarray:
  """Reads a 16 kHz mono audio file as int16 samples.

  Example:
    >>> read_audio("/data/LibriSpeech/dev-clean/84/121123/84-121123-0000.flac").dtype
    dtype('int16')
  """
  path = epath.Path(path)
  # A file object rather than a name lets epath serve non-local paths too.
  with path.open("rb") as f:
    try:
      with sf.SoundFile(f) as sound:
        # The format checks raise ValueError, which the except clause lets through.
        if sound.samplerate != SAMPLE_RATE:
          raise ValueError(f"Audio file {path} has sample rate {sound.samplerate} Hz; "
                           f"expected {SAMPLE_RATE} Hz")
        if sound.channels != 1:
          raise ValueError(f"Audio file {path} has {sound.channels} channels; expected mono")
        return sound.read(dtype="int16")
    except (sf.SoundFileError, RuntimeError, EOFError) as e:  # libsndfile decode errors.
      raise ValueError(f"Cannot read audio file {path}: {e}") from e


class LibrispeechLocal(tfds.core.GeneratorBasedBuilder):
  """LibriSpeech read from a local directory given as the TFDS manual directory."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download and extract LibriSpeech (https://www.openslr.org/12), then pass the
  extracted `LibriSpeech` directory (the one holding SPEAKERS.TXT and the subset
  directories such as train-clean-100, dev-clean, test-clean) as the manual directory:
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir="/path/LibriSpeech"))
  or call `libs.data.librispeech_local.prepare_librispeech("/path/LibriSpeech", data_dir)`.
  A directory holding speaker directories directly is read as a single "train" split.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=schema.utterance_features(
            chapter_id=schema.scalar(np.int32),
            gender=tfds.features.Text(),
        ),
        supervised_keys=("audio", "transcript"),
        homepage="https://www.openslr.org/12",
        citation="""@inproceedings{panayotov2015librispeech,
  title={Librispeech: an ASR corpus based on public domain audio books},
  author={Panayotov, Vassil and Chen, Guoguo and Povey, Daniel and Khudanpur, Sanjeev},
  booktitle={ICASSP},
  pages={5206--5210},
  year={2015}}""",
        metadata=tfds.core.MetadataDict(sample_rate=SAMPLE_RATE),
    )

  def _split_generators(self, dl_manager):
    try:
      root = dl_manager.manual_dir
    except AssertionError as e:  # TFDS asserts; its message names the directory.
      raise FileNotFoundError(str(e)) from e
    subsets = find_subsets(root)
    speakers_file = root / "SPEAKERS.TXT"
    genders = read_speakers(speakers_file) if speakers_file.exists() else {}
    # Parse every transcript up front so that layout errors surface before decoding.
    utterances = {split: list_utterances(path) for split, path in subsets.items()}
    # Saved with the dataset, so `prepare_librispeech` can tell what a cache holds.
    self.info.metadata["source_dir"] = os.fspath(root)
    return {split: self._generate_examples(split, utts, genders)
            for split, utts in utterances.items()}

  def _generate_examples(self, split: str, utterances: list[Utterance],
                         genders: dict[int, str]) -> Iterator[tuple[str, dict]]:
    for u in tqdm.tqdm(utterances, unit="utt", desc=f"librispeech_local/{split}"):
      yield u.utterance_id, {
          "audio": read_audio(u.audio_path),
          "transcript": u.transcript,
          "utterance_id": u.utterance_id,
          "speaker_id": u.speaker_id,
          "chapter_id": u.chapter_id,
          "gender": genders.get(u.speaker_id, "unknown"),
      }


def prepare_librispeech(source_dir: epath.PathLike,
                        data_dir: epath.PathLike | None = None) -> LibrispeechLocal:
  """Builds (or reuses) the array_record dataset of a local LibriSpeech copy.

  Args:
    source_dir: the extracted `LibriSpeech` directory (see `LibrispeechLocal`).
    data_dir: TFDS data directory for the prepared dataset; TFDS's default if None.

  Returns:
    The prepared builder; read splits with `builder.as_data_source(split)`.

  Raises:
    FileNotFoundError: `source_dir` does not exist.
    ValueError: the tree is malformed, or `data_dir` already holds this dataset
      prepared from a different source directory.

  Example:
    >>> builder = prepare_librispeech("/data/LibriSpeech", "/tmp/tfds")
    >>> sorted(builder.info.splits)
    ['dev_clean', 'test_clean', 'train_clean_100']
  """
  source = epath.Path(os.path.expanduser(os.fspath(source_dir))).resolve()
  if not source.is_dir():
    raise FileNotFoundError(f"LibriSpeech directory does not exist: {source}")
  builder = LibrispeechLocal(data_dir=data_dir)
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(source)))
  # TFDS reuses a prepared dataset without looking at the manual directory again.
  built_from = builder.info.metadata.get("source_dir")
  if built_from is not None and built_from != os.fspath(source):
    raise ValueError(f"{builder.data_dir} holds LibriSpeech prepared from {built_from}, "
                     f"not {source}; use another data_dir or delete that one")
  return builder
