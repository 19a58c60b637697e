"""Entrypoint of the PATE-ASR project.

  python -m projects.pate_asr.main --config=projects/pate_asr/configs/nonprivate.py \
      --workdir=workdirs/nonprivate [--config.train.num_steps=2000 ...]

Rerunning with the same workdir resumes from its last checkpoint.
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
  from libs.train import compilation_cache  # pylint: disable=import-outside-toplevel
  compilation_cache.enable()
  from projects.pate_asr import nonprivate  # pylint: disable=import-outside-toplevel
  from projects.pate_asr import sweep  # pylint: disable=import-outside-toplevel
  runners = {"nonprivate": nonprivate.run, "sweep": sweep.run}
  config = _CONFIG.value
  if config.mode not in runners:
    raise app.UsageError(f"config.mode must be one of {sorted(runners)}, got {config.mode!r}")
  try:
    results = runners[config.mode](config, os.path.abspath(_WORKDIR.value))
  except ValueError as e:  # Bad configuration or data: a clear message, no traceback.
    print(f"error: {e}", file=sys.stderr)
    return 2
  if results is None:
    print("stopped early by a signal; rerun the same command to resume from the checkpoint",
          file=sys.stderr)
    return 3
  return 0


if __name__ == "__main__":
  app.run(main)
