"""The example schema every speech builder in libs/data shares.

Each utterance has int16 audio, its transcript, a string id and an integer speaker id;
a corpus adds its own metadata (accent, chapter, ...) next to them. The input pipeline
(`libs.data.pipeline`) relies on the four common fields.

Example:
  >>> features = utterance_features(gender=tfds.features.Text())
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds


def utterance_features(**metadata: tfds.features.FeatureConnector) -> tfds.features.FeaturesDict:
  """Audio, transcript, utterance_id and speaker_id, then `metadata` in its order."""
  common = ("audio", "transcript", "utterance_id", "speaker_id")
  clash = sorted(set(common) & set(metadata))
  if clash:
    raise ValueError(f"metadata fields {clash} would replace the common fields {common}")
  return tfds.features.FeaturesDict({
      "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
      "transcript": tfds.features.Text(),
      "utterance_id": tfds.features.Text(),
      "speaker_id": tfds.features.Tensor(shape=(), dtype=np.int32),
      **metadata,
  })


def scalar(dtype: type) -> tfds.features.Tensor:
  """A scalar feature of `dtype` (np.int32, np.float32, ...)."""
  return tfds.features.Tensor(shape=(), dtype=dtype)
