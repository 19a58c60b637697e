"""Entrypoint of the federated learning project (flags, multi-host, exit codes: libs/train/app.py).

  python -m projects.fedlearn.main --config=projects/fedlearn/configs/selection.py \
      --workdir=workdirs/fl_selection [--config.fl.rounds=100 ...]

`configs/audit.py` (mode "audit") runs the privacy audit of DP-SGD and DP-FedAvg instead
(`projects/fedlearn/audit.py`).

Runs every sub-run of the config (`config.runs`), each resumable from its checkpoint; finished
sub-runs are skipped on a rerun. Writes results.json, metrics, figures/*.png and the table.
"""

from libs.train import app

# config.mode -> run(config, workdir)
RUNNERS = {"experiment": "projects.fedlearn.simulation:run", "audit": "projects.fedlearn.audit:run",
           "membership": "projects.fedlearn.membership:run", "canaries": "projects.fedlearn.canaries:run"}

if __name__ == "__main__":
  app.run_main(RUNNERS)
