"""Entrypoint of the fairness project (flags, multi-host and exit codes: libs/train/app.py).

  python -m projects.fairness.main --config=projects/fairness/configs/cohorts.py --workdir=workdirs/cohorts
  python -m projects.fairness.main --config=projects/fairness/configs/ewc.py --workdir=workdirs/ewc
  python -m projects.fairness.main --config=projects/fairness/configs/arw.py --workdir=workdirs/arw
  python -m projects.fairness.main --config=projects/fairness/configs/text_metrics.py --workdir=workdirs/text_metrics
  python -m projects.fairness.main --config=projects/fairness/configs/distill.py --workdir=workdirs/distill

Every stage (base recognizer, speaker model, fine-tunes) checkpoints into its own directory of
the workdir; rerunning the same command resumes where it stopped and skips finished stages.
"""

from libs.train import app

# config.mode -> run(config, workdir), imported once JAX (and jax.distributed) is set up.
RUNNERS = {
    "cohorts": "projects.fairness.cohorts:run",
    "ewc": "projects.fairness.mitigation:run",
    "arw": "projects.fairness.verification:run",
    "text_metrics": "projects.fairness.text_metrics:run",
    "distill": "projects.fairness.distill:run",
}

if __name__ == "__main__":
  app.run_main(RUNNERS)
