"""Test setup: 8 fake CPU devices (set before JAX starts), shared tiny corpus fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TSML_JAX_CACHE", "off")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_corpus_dir(tmp_path_factory):
  """The `tiny` synthetic corpus, generated once per test session."""
  from libs.data import pipeline  # pylint: disable=import-outside-toplevel
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  pipeline.prepare_synthetic("tiny", data_dir)
  return data_dir


@pytest.fixture(scope="session")
def tiny_builder(tiny_corpus_dir):
  from libs.data import pipeline  # pylint: disable=import-outside-toplevel
  return pipeline.prepare_synthetic("tiny", tiny_corpus_dir)
