"""Entrypoint of the federated learning project.

  python -m projects.fedlearn.main --config=projects/fedlearn/configs/selection.py \
      --workdir=workdirs/fl_selection [--config.fl.rounds=100 ...]

Runs every sub-run of the config (`config.runs`), each resumable from its checkpoint;
finished sub-runs are skipped on a rerun. Writes results.json, metrics.jsonl + TensorBoard
events, figures/*.png and prints the table.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results and figures.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (multi-host runs).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Keep the terminal for the progress bar and results.
  import jax  # pylint: disable=import-outside-toplevel
  if _MULTIHOST.value:
    jax.distributed.initialize()
  from libs.accounting import PrivacyBudgetExceeded  # pylint: disable=import-outside-toplevel
  from libs.train import compilation_cache  # pylint: disable=import-outside-toplevel
  compilation_cache.enable()
  from projects.fedlearn import simulation  # pylint: disable=import-outside-toplevel
  runners = {"experiment": simulation.run}
  config = _CONFIG.value
  if config.mode not in runners:
    raise app.UsageError(f"config.mode must be one of {sorted(runners)}, got {config.mode!r}")
  try:
    results = runners[config.mode](config, os.path.abspath(_WORKDIR.value))
  except ValueError as e:  # Bad configuration or data: a clear message, no traceback.
    print(f"error: {e}", file=sys.stderr)
    return 2
  except PrivacyBudgetExceeded as e:  # Nothing is lost: the last round's checkpoint is on disk.
    print(f"error: privacy budget: {e}", file=sys.stderr)
    return 4
  if results is None:
    print("stopped early by a signal; rerun the same command to resume from the checkpoint", file=sys.stderr)
    return 3
  return 0


if __name__ == "__main__":
  app.run(main)
