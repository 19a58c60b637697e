"""Test setup: 8 fake CPU devices (set before JAX starts), shared tiny corpus fixtures."""

import fcntl
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TSML_JAX_CACHE", "off")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_corpus_dir(tmp_path_factory):
  """The `tiny` synthetic corpus, generated once per test run and shared by the xdist
  workers (the first to take the lock generates it; TFDS reuses it for the others)."""
  from libs.data import pipeline  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # The run's directory, common to every worker.
  data_dir = root / "tiny_tfds"
  with open(root / "tiny_tfds.lock", "w", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    pipeline.prepare_synthetic("tiny", str(data_dir))
  return str(data_dir)


@pytest.fixture(scope="session")
def tiny_builder(tiny_corpus_dir):
  from libs.data import pipeline  # pylint: disable=import-outside-toplevel
  return pipeline.prepare_synthetic("tiny", tiny_corpus_dir)

