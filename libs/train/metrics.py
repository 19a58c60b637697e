"""Metric writers: clu (log + TensorBoard events) plus a `metrics.jsonl` file in the workdir.

clu's `metric_writers` package imports TensorFlow when it is imported (its TF summary
writer; upstream: google/CommonLoopUtils PR #358). TensorFlow is not part of this stack,
so when it is missing we register a TensorBoard writer backed by tensorboardX under clu's
`summary_writer` module name before importing clu; `create_default_writer` then writes
ordinary TensorBoard event files. With TensorFlow installed, clu's own writer is used.

Example:
  >>> writer = create_writer(workdir)
  >>> writer.write_hparams({"learning_rate": 1e-3})
  >>> writer.write_scalars(step, {"train/loss": 1.2, "privacy/epsilon": 0.7})
  >>> writer.flush()
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from typing import Any, Mapping

import jax
import numpy as np


class TensorboardXWriter:
  """A clu MetricWriter writing TensorBoard event files with tensorboardX (no TensorFlow)."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._writer = SummaryWriter(logdir=logdir)

  def write_summaries(self, step, values, metadata=None):
    del metadata
    self.write_scalars(step, {k: v for k, v in values.items() if np.ndim(v) == 0})

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    for key, value in scalars.items():
      self._writer.add_scalar(key, float(value), global_step=int(step))

  def write_images(self, step: int, images: Mapping[str, Any]):
    for key, value in images.items():
      self._writer.add_image(key, np.asarray(value), global_step=int(step), dataformats="HWC")

  def write_videos(self, step, videos):
    del step, videos  # Not used in this repository.

  def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int):
    for key, value in audios.items():
      self._writer.add_audio(key, np.asarray(value), global_step=int(step), sample_rate=sample_rate)

  def write_texts(self, step: int, texts: Mapping[str, str]):
    for key, value in texts.items():
      self._writer.add_text(key, value, global_step=int(step))

  def write_histograms(self, step: int, arrays: Mapping[str, Any], num_buckets=None):
    for key, value in arrays.items():
      bins = (num_buckets or {}).get(key)
      self._writer.add_histogram(key, np.asarray(value), global_step=int(step), max_bins=bins)

  def write_hparams(self, hparams: Mapping[str, Any]):
    flat = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
    self._writer.add_hparams(flat, {}, name="hparams")

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


def _clu_metric_writers():
  name = "clu.metric_writers.summary_writer"
  if importlib.util.find_spec("tensorflow") is None and name not in sys.modules:
    shim = types.ModuleType(name)
    shim.SummaryWriter = TensorboardXWriter
    sys.modules[name] = shim
  from clu import metric_writers  # pylint: disable=import-outside-toplevel
  metric_writers.MetricWriter.register(TensorboardXWriter)
  return metric_writers


metric_writers = _clu_metric_writers()


def _plain(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


class JsonlWriter(metric_writers.MetricWriter):
  """Appends one JSON line per `write_scalars` call: {"step": ..., name: value, ...}.

  A resumed run appends to the same file; a reader takes the last line of each step.
  """

  def __init__(self, path: str):
    self._path = path
    self._file = open(path, "a", encoding="utf-8")  # pylint: disable=consider-using-with

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self._file.write(json.dumps({"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}) + "\n")
    self._file.flush()

  def write_summaries(self, step, values, metadata=None):
    del metadata
    self.write_scalars(step, {k: v for k, v in values.items() if np.ndim(v) == 0})

  def write_hparams(self, hparams: Mapping[str, Any]):
    with open(os.path.join(os.path.dirname(self._path), "hparams.json"), "w", encoding="utf-8") as f:
      json.dump({k: v if isinstance(v, (bool, int, float, str, type(None))) else str(v)
                 for k, v in hparams.items()}, f, indent=1)

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


class NonFiniteMetricError(FloatingPointError):
  """A metric turned NaN (or infinite): the run stops instead of writing it."""


def check_finite(step: int, scalars: Mapping[str, Any]) -> None:
  """Raises NonFiniteMetricError naming the step and every NaN or infinite metric.

  An infinite epsilon is a legitimate value (a release without noise), so names containing
  "epsilon" may be +inf; NaN is never allowed.

  Example:
    >>> check_finite(4, {"dp_fedavg/test/loss": float("nan")})   # NonFiniteMetricError: step 4: ...
  """
  bad = []
  for key, value in scalars.items():
    v = np.asarray(value, np.float64)
    if np.isnan(v).any() or (np.isinf(v).any() and not ("epsilon" in key and (v > 0).all())):
      bad.append(f"{key}={_plain(value)}")
  if bad:
    raise NonFiniteMetricError(f"step {int(step)}: non-finite metric(s) {', '.join(bad)}; stopping before writing "
                               "them (the last checkpoint is from before this step)")


class FiniteMetricWriter(metric_writers.MultiWriter):
  """A MultiWriter that refuses non-finite scalars (`check_finite`) before writing anything."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    check_finite(step, scalars)
    super().write_scalars(step, scalars)


def create_writer(workdir: str, *, jsonl_name: str = "metrics.jsonl") -> metric_writers.MetricWriter:
  """clu default writer (log + TensorBoard under `workdir`) plus `workdir/metrics.jsonl`.

  Only process 0 writes files; other hosts only log. Every process raises
  `NonFiniteMetricError` on a NaN metric (see `check_finite`) instead of writing it.
  """
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() > 0:
    return FiniteMetricWriter([metric_writers.create_default_writer(just_logging=True, asynchronous=False)])
  return FiniteMetricWriter([
      metric_writers.create_default_writer(workdir, asynchronous=False),
      JsonlWriter(os.path.join(workdir, jsonl_name)),
  ])


def read_jsonl(path: str) -> list[dict]:
  """Rows of a metrics.jsonl file, keeping the last row written for each step."""
  rows: dict[int, dict] = {}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        if line.strip():
          row = json.loads(line)
          rows.setdefault(row["step"], {}).update(row)
  return [rows[s] for s in sorted(rows)]
