"""Entrypoint of the PATE-ASR project (flags, multi-host and exit codes: libs/train/app.py).

  python -m projects.pate_asr.main --config=projects/pate_asr/configs/nonprivate.py \
      --workdir=workdirs/nonprivate [--config.train.num_steps=2000 ...]

Rerunning with the same workdir resumes from its last checkpoint.
"""

from libs.train import app

# config.mode -> run(config, workdir), imported once JAX (and jax.distributed) is set up.
RUNNERS = {"nonprivate": "projects.pate_asr.nonprivate:run", "sweep": "projects.pate_asr.sweep:run",
           "inversion": "projects.pate_asr.inversion:run", "membership": "projects.pate_asr.membership:run"}

if __name__ == "__main__":
  app.run_main(RUNNERS)
