"""Lets TFDS write large splits without TensorFlow.

TFDS shuffles examples in memory up to 1 GB per split and beyond that spills them to
temporary bucket files, which `tensorflow_datasets.core.shuffle` opens with
`tf.io.gfile` even in TensorFlow-free installs; a split over 1 GB (the `sentences`
corpus, any real LibriSpeech subset) then fails with "No module named 'tensorflow'".
When TensorFlow is absent, this points that module's `tf` at plain local-file
equivalents (the buckets are always local temporary files). With TensorFlow installed
nothing changes.

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


def enable() -> bool:
  """Installs the local-file shim if TensorFlow is missing; returns whether it did."""
  if importlib.util.find_spec("tensorflow") is not None:
    return False
  from tensorflow_datasets.core import shuffle  # pylint: disable=import-outside-toplevel
  if not isinstance(getattr(shuffle, "tf", None), types.SimpleNamespace):
    shuffle.tf = _local_tf()
  return True
