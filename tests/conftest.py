"""Test setup: 8 fake CPU devices (set before JAX starts), shared tiny corpus fixtures."""

import fcntl
import os

# Tests compile many small programs and run each a few times: XLA's CPU backend without its
# LLVM optimisation passes compiles about twice as fast, which is most of `make test`'s time.
# The entrypoint tests (tests/projects/*/test_main.py, pate_asr/test_sweep.py) set the same flag for
# their subprocesses, which run on the one real CPU device.
# Flags a user already set (e.g. XLA_FLAGS=--xla_backend_optimization_level=0 make test) are kept;
# the 8 fake devices are added whatever they are, since the multi-device tests need them.
_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
if "--xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("TSML_JAX_CACHE", "off")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def shared_jax_cache(tmp_path_factory):
  """A persistent XLA compilation cache shared by the entrypoint subprocesses of one test run and
  its xdist workers, storing every program (TSML_JAX_CACHE_MIN_SECONDS=0): the sweep, membership
  and main smoke tests compile many of the same tiny-transducer programs, each in fresh processes.
  Returns the environment entries to add."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  path = root / "shared_jax_cache"
  path.mkdir(exist_ok=True)
  return {"TSML_JAX_CACHE": str(path), "TSML_JAX_CACHE_MIN_SECONDS": "0"}


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



# The slowest files (end-to-end runs, big compiles) go first: `make test` hands files to its
# xdist workers in collection order (`--no-loadscope-reorder`: xdist would otherwise order them
# by their number of tests), and a long file started last becomes the run's tail.
_SLOW_FIRST = (  # by each file's total time in a `--durations` run (2026-12-03), longest first
    "tests/projects/pate_asr/test_membership.py",
    "tests/projects/pate_asr/test_sweep.py",
    "tests/projects/pate_asr/test_main.py",
    "tests/projects/pate_asr/test_dpsgd.py",
    "tests/projects/pate_asr/test_inversion.py",
    "tests/models/test_models.py",
    "tests/projects/fairness/test_mitigation.py",
    "tests/dp/test_clipping_and_noise.py",
    "tests/train/test_multihost.py",
    "tests/projects/fedlearn/test_main.py",
    "tests/projects/fedlearn/test_canaries.py",
    "tests/projects/fairness/test_main.py",
    "tests/speech/test_beam_search.py",
    "tests/projects/fedlearn/test_core.py",
    "tests/projects/fairness/test_distill.py",
    "tests/metrics/test_sensitivity.py",
    "tests/projects/fairness/test_text_metrics.py",
    "tests/projects/fairness/test_verification.py",
    "tests/models/test_speaker.py",
    "tests/projects/fedlearn/test_membership.py",
    "tests/train/test_data_parallel.py",
    "tests/projects/fedlearn/test_audit.py",
)


def pytest_collection_modifyitems(items):
  def rank(item):
    path = item.nodeid.split("::")[0]
    return _SLOW_FIRST.index(path) if path in _SLOW_FIRST else len(_SLOW_FIRST)
  items.sort(key=rank)  # stable: the order within a file is kept
