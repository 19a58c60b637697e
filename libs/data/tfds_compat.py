"""Lets TFDS write large splits without TensorFlow.

TFDS shuffles examples in memory up to 1 GB per split and beyond that spills them to
temporary bucket files, which `tensorflow_datasets.core.shuffle` opens with
`tf.io.gfile` even in TensorFlow-free installs; a split over 1 GB (the `sentences`
corpus, any real LibriSpeech subset) then fails with "No module named 'tensorflow'".
When TensorFlow is absent, this points that module's `tf` at plain local-file
equivalents (the buckets are always local temporary files). With TensorFlow installed
nothing changes.

Independently, TFDS creates (and never removes) an empty temporary directory every
time a builder is constructed before its data exists, to fetch metadata from GCS, even
when GCS is disabled; `enable()` also skips that step when GCS access is off, so test
runs and sweeps do not leave thousands of empty directories in /tmp.

Example:
  >>> enable()   # called by the builders in libs/data at import
"""

from __future__ import annotations

import importlib.util
import os
import types


class _ResourceExhaustedError(OSError):
  """Stand-in for tf.errors.ResourceExhaustedError (never raised by plain files)."""

  message = ""


def _local_tf() -> types.SimpleNamespace:
  gfile = types.SimpleNamespace(GFile=open, exists=os.path.exists, remove=os.remove)
  return types.SimpleNamespace(io=types.SimpleNamespace(gfile=gfile),
                               errors=types.SimpleNamespace(ResourceExhaustedError=_ResourceExhaustedError))


def _skip_disabled_gcs_metadata() -> None:
  from tensorflow_datasets.core import dataset_info  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.core.utils import gcs_utils  # pylint: disable=import-outside-toplevel
  original = dataset_info.DatasetInfo.initialize_from_bucket
  if getattr(original, "_tsml_wrapped", False):
    return

  def initialize_from_bucket(self) -> None:
    if gcs_utils._is_gcs_disabled:  # pylint: disable=protected-access
      return None
    return original(self)

  initialize_from_bucket._tsml_wrapped = True
  dataset_info.DatasetInfo.initialize_from_bucket = initialize_from_bucket


def enable() -> bool:
  """Installs the local-file shim if TensorFlow is missing; returns whether it did."""
  _skip_disabled_gcs_metadata()
  if importlib.util.find_spec("tensorflow") is not None:
    return False
  from tensorflow_datasets.core import shuffle  # pylint: disable=import-outside-toplevel
  if not isinstance(getattr(shuffle, "tf", None), types.SimpleNamespace):
    shuffle.tf = _local_tf()
  return True
