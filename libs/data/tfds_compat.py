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

And TFDS serializes each example as a `tf.train.Example`, whose features are a protobuf map:
without `deterministic=True` the map's byte order follows the process's hash seed, so the
same corpus came out with different bytes in every process (decoded content identical).
`enable()` makes the serialization deterministic (sorted keys), so a corpus is byte-for-byte
reproducible.

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


def _deterministic_example_bytes() -> None:
  from tensorflow_datasets.core import example_serializer  # pylint: disable=import-outside-toplevel
  cls = example_serializer.ExampleSerializer
  if getattr(cls.serialize_example, "_tsml_wrapped", False):
    return

  def serialize_example(self, example):
    return self.get_tf_example(example).SerializeToString(deterministic=True)

  serialize_example._tsml_wrapped = True
  cls.serialize_example = serialize_example


def enable() -> bool:
  """Installs the local-file shim if TensorFlow is missing; returns whether it did. Always
  makes example serialization deterministic and skips disabled GCS metadata lookups."""
  _skip_disabled_gcs_metadata()
  _deterministic_example_bytes()
  if importlib.util.find_spec("tensorflow") is not None:
    return False
  from tensorflow_datasets.core import shuffle  # pylint: disable=import-outside-toplevel
  if not isinstance(getattr(shuffle, "tf", None), types.SimpleNamespace):
    shuffle.tf = _local_tf()
  return True
