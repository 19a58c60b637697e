"""The entrypoint every project's `main.py` shares: flags, multi-host start-up, exit codes.

A project's `main.py` names its runners (`config.mode` -> `run(config, workdir)`, given as a
callable or as a lazily imported "module:function" string) and hands them to `run_main`:

  from libs.train import app
  RUNNERS = {"nonprivate": "projects.pate_asr.nonprivate:run"}
  if __name__ == "__main__":
    app.run_main(RUNNERS)

Flags: `--config=FILE[:VARIANT]` (ml_collections' config_flags calls the file's `get_config(VARIANT)`,
or `get_config()` without a colon; `--config.key=value` overrides), `--workdir=DIR` and, for a run
over several hosts, `--multihost` with `--coordinator_address=HOST:PORT`, `--num_processes=N`
and `--process_id=I` (or the variables JAX reads, e.g. JAX_COORDINATOR_ADDRESS, or a cluster
JAX detects on its own: Slurm, Open MPI, Cloud TPU). One command per host, e.g. on two hosts:

  python -m projects.pate_asr.main --config=... --workdir=/shared/w --multihost \
      --coordinator_address=host0:12355 --num_processes=2 --process_id=0    # on host0
  python -m projects.pate_asr.main --config=... --workdir=/shared/w --multihost \
      --coordinator_address=host0:12355 --num_processes=2 --process_id=1    # on host1

Exit codes (`EXIT_CODES`): 0 finished; 2 bad config or data (a ValueError, printed as one
message without a traceback); 3 stopped by a signal after checkpointing (the runner returned
None: rerun the same command to resume); 4 the privacy budget would be exceeded
(`libs.accounting.PrivacyBudgetExceeded`; the last checkpoint is kept). A wrong flag or an
unknown `config.mode` is absl's usage error (1).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from typing import Any, Callable, Mapping, Union

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

Runner = Union[Callable[[Any, str], Any], str]

EXIT_CODES = {"done": 0, "bad_config": 2, "interrupted": 3, "privacy_budget": 4}

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results and figures.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Start jax.distributed first: one process per host, all running the same command.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "With --multihost: HOST:PORT of process 0's coordinator "
    "(default: $JAX_COORDINATOR_ADDRESS or the cluster's).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --multihost: the number of processes (default: the cluster's).", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --multihost: this process's index in [0, num_processes).", lower_bound=0)
flags.mark_flags_as_required(["config", "workdir"])


def initialize_multihost(coordinator_address: str | None = None, num_processes: int | None = None,
                         process_id: int | None = None) -> None:
  """`jax.distributed.initialize`, with cross-process collectives on CPU hosts too.

  Must run before anything touches a JAX backend (no arrays, no `jax.devices()`). Arguments
  left None are filled by JAX from its environment variables or the cluster (Slurm, MPI, TPU).

  Example:
    >>> initialize_multihost("localhost:12355", num_processes=2, process_id=0)
  """
  import jax  # pylint: disable=import-outside-toplevel
  # CPU devices of different processes exchange gradients through gloo (TCP, shipped with
  # jaxlib); without a collectives implementation a multi-process CPU all-reduce fails.
  # A user's own choice (e.g. JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi) wins.
  if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)


def resolve_runner(runners: Mapping[str, Runner], mode: str) -> Callable[[Any, str], Any]:
  """The runner for `mode`, importing it if it is named as "module:function".

  Raises:
    app.UsageError: `mode` is not one of `runners`.

  Example:
    >>> resolve_runner({"experiment": "projects.fedlearn.simulation:run"}, "experiment")
  """
  if mode not in runners:
    raise app.UsageError(f"config.mode must be one of {sorted(runners)}, got {mode!r}")
  runner = runners[mode]
  if isinstance(runner, str):
    module, _, name = runner.partition(":")
    runner = getattr(importlib.import_module(module), name)
  return runner


def run_config(runners: Mapping[str, Runner], config, workdir: str) -> int:
  """Runs `config` with its runner and returns the exit code (see `EXIT_CODES`).

  Example:
    >>> sys.exit(run_config({"nonprivate": nonprivate.run}, nonprivate_configs.get_config("tiny"), "/tmp/w"))
  """
  runner = resolve_runner(runners, config.mode)
  # Imported here, not at the top: libs.accounting pulls in JAX, which must not start
  # before jax.distributed.initialize().
  from libs.accounting import PrivacyBudgetExceeded  # pylint: disable=import-outside-toplevel
  try:
    results = runner(config, os.path.abspath(workdir))
  except PrivacyBudgetExceeded as e:  # Nothing is lost: the last checkpoint is on disk.
    print(f"error: privacy budget: {e}", file=sys.stderr)
    return EXIT_CODES["privacy_budget"]
  except ValueError as e:  # Bad configuration or data: a clear message, no traceback.
    print(f"error: {e}", file=sys.stderr)
    return EXIT_CODES["bad_config"]
  if results is None:
    print("stopped early by a signal; rerun the same command to resume from the checkpoint", file=sys.stderr)
    return EXIT_CODES["interrupted"]
  return EXIT_CODES["done"]


def _main(runners: Mapping[str, Runner], argv) -> int:
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Keep the terminal for the progress bar and results.
  multihost_flags = {"--coordinator_address": _COORDINATOR.value, "--num_processes": _NUM_PROCESSES.value,
                     "--process_id": _PROCESS_ID.value}
  if _MULTIHOST.value:
    initialize_multihost(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif any(v is not None for v in multihost_flags.values()):
    given = [k for k, v in multihost_flags.items() if v is not None]
    raise app.UsageError(f"{', '.join(given)} only apply with --multihost")
  from libs.train import compilation_cache  # pylint: disable=import-outside-toplevel
  compilation_cache.enable()
  return run_config(runners, _CONFIG.value, _WORKDIR.value)


def run_main(runners: Mapping[str, Runner]) -> None:
  """Parses the flags and runs the config's mode; exits with the code of `run_config`.

  Example:
    >>> if __name__ == "__main__":
    ...   run_main({"experiment": "projects.fedlearn.simulation:run"})
  """
  app.run(functools.partial(_main, runners))
