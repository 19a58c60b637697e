"""Generation speed of the embedded synthetic speech corpus, and its byte determinism.

  python benchmarks/corpus_speed.py [--config digits_many] [--train_speakers N]
                                    [--workers W] [--second_workers W2] [--data_dir DIR]

Builds the TFDS config twice into fresh directories under a temporary data dir (never
~/tensorflow_datasets): first with `--workers` synthesis processes (default: the
builder's own default, `TSML_CORPUS_WORKERS` or every core), then with
`--second_workers` (default: the same), and compares the two builds:
  * content: SHA-256 over every decoded example (all fields, audio bytes included) in
    utterance id order. It does not depend on the process, so `content_sha256` can be
    compared between runs, commits and machines;
  * files: SHA-256 of every array_record file. These match within one process only:
    TFDS serializes each example as a tf.train.Example whose feature map order changes
    from process to process, so the same examples give other bytes in another run.
`--train_speakers N` builds a smaller copy of the config (same spec, N training
speakers) for a quick look.

On 2 shared cores, `digits_many` (6925 utterances) took 561 s (12.6 utterances/s) when
every speaker ran in a fresh process, and 52.7 s (131 utterances/s) with long-lived
workers that reset espeak-ng before each speaker; the main process, which serializes
the examples for TFDS, is then the bottleneck (one worker takes about as long).

Last lines:
  utterances = ...               (all splits of the first build)
  seconds = ...                  (wall time of the first build)
  utterances_per_second = ...
  content_sha256 = ...           (decoded examples of the first build)
  identical_content = True|False (the two builds hold the same examples, to the byte)
  identical_files = True|False   (the two builds' array_record files are byte-identical)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds

from libs.data import synthetic_speech


def _config(name: str, train_speakers: int | None) -> synthetic_speech.SyntheticSpeechConfig:
  configs = {c.name: c for c in synthetic_speech.BUILDER_CONFIGS}
  if name not in configs:
    raise ValueError(f"unknown config {name!r}; choose one of {sorted(configs)}")
  config = configs[name]
  if train_speakers is None:
    return config
  spec = dataclasses.replace(config.spec, train_speakers=train_speakers)
  return synthetic_speech.SyntheticSpeechConfig(
      name=f"{name}_bench{train_speakers}", description=f"{name} with {train_speakers} train speakers",
      spec=spec)


def _content_sha256(builder) -> str:
  """SHA-256 over all decoded examples of all splits, in (split, utterance id) order."""
  digest = hashlib.sha256()
  for split in sorted(builder.info.splits.keys()):
    source = builder.as_data_source(split)
    examples = sorted((source[i] for i in range(len(source))), key=lambda e: e["utterance_id"])
    for example in examples:
      for key in sorted(example):
        value = np.asarray(example[key])
        digest.update(f"{split}/{key}/{value.dtype.str}/{value.shape}".encode())
        digest.update(value.tobytes())
  return digest.hexdigest()


def _build(config, data_dir: str, workers: int | None) -> tuple[float, int, dict[str, str]]:
  """Builds `config` into `data_dir`; returns (seconds, utterances, hashes).

  The hashes are the content's ("content") and every array_record file's.
  """
  if workers is None:
    os.environ.pop("TSML_CORPUS_WORKERS", None)
  else:
    os.environ["TSML_CORPUS_WORKERS"] = str(workers)
  builder = synthetic_speech.SyntheticSpeech(config=config, data_dir=data_dir)
  start = time.perf_counter()
  builder.download_and_prepare(file_format="array_record")
  seconds = time.perf_counter() - start
  utterances = sum(split.num_examples for split in builder.info.splits.values())
  root = builder.data_dir
  hashes = {"content": _content_sha256(builder)}
  for name in sorted(os.listdir(root)):
    if "array_record" in name:
      with open(os.path.join(root, name), "rb") as f:
        hashes[name] = hashlib.sha256(f.read()).hexdigest()
  return seconds, utterances, hashes


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="digits_many")
  parser.add_argument("--train_speakers", type=int, default=None,
                      help="build a copy of the config with this many training speakers")
  parser.add_argument("--workers", type=int, default=None,
                      help="synthesis processes of the first build (default: the builder's default)")
  parser.add_argument("--second_workers", type=int, default=None,
                      help="synthesis processes of the second build (default: same as --workers)")
  parser.add_argument("--data_dir", default=None,
                      help="parent of the temporary data dir (default: the system's temp dir)")
  parser.add_argument("--keep", action="store_true", help="keep the generated data")
  args = parser.parse_args()

  old_workers = os.environ.get("TSML_CORPUS_WORKERS")
  workers = args.workers if args.workers is not None else (int(old_workers) if old_workers else None)
  second_workers = args.second_workers if args.second_workers is not None else workers
  config = _config(args.config, args.train_speakers)
  tfds.disable_progress_bar()
  if args.data_dir:
    os.makedirs(args.data_dir, exist_ok=True)
  root = tempfile.mkdtemp(prefix="corpus_speed_", dir=args.data_dir)
  try:
    seconds, utterances, first = _build(config, os.path.join(root, "first"), workers)
    print(f"first build: {utterances} utterances in {seconds:.1f} s with "
          f"{synthetic_speech.num_workers()} workers", flush=True)
    seconds2, _, second = _build(config, os.path.join(root, "second"), second_workers)
    print(f"second build: {seconds2:.1f} s with {synthetic_speech.num_workers()} workers", flush=True)
  finally:
    if old_workers is None:
      os.environ.pop("TSML_CORPUS_WORKERS", None)
    else:
      os.environ["TSML_CORPUS_WORKERS"] = old_workers
    if not args.keep:
      shutil.rmtree(root, ignore_errors=True)
  content, content2 = first.pop("content"), second.pop("content")
  for name, digest in first.items():
    print(f"  {name}: {digest[:16]} {'==' if second.get(name) == digest else '!='} "
          f"{second.get(name, 'missing')[:16]}")
  print(f"config = {config.name}")
  print(f"utterances = {utterances}")
  print(f"seconds = {seconds:.1f}")
  print(f"utterances_per_second = {utterances / seconds:.1f}")
  print(f"content_sha256 = {content}")
  print(f"identical_content = {content == content2}")
  print(f"identical_files = {bool(first) and first == second}")


if __name__ == "__main__":
  main()
