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


# The slowest files (end-to-end runs, big compiles) go first: `make test` hands files to its
# xdist workers in collection order, and a long file started last becomes the run's tail.
_SLOW_FIRST = (
    "tests/projects/test_pate_sweep.py",
    "tests/projects/test_pate_asr_main.py",
    "tests/dp/test_clipping_and_noise.py",
    "tests/projects/test_fedlearn_main.py",
    "tests/train/test_data_parallel.py",
    "tests/models/test_models.py",
    "tests/projects/test_pate_components.py",
)


def pytest_collection_modifyitems(items):
  def rank(item):
    path = item.nodeid.split("::")[0]
    return _SLOW_FIRST.index(path) if path in _SLOW_FIRST else len(_SLOW_FIRST)
  items.sort(key=rank)  # stable: the order within a file is kept
