"""Privacy audit: libs.dp DP-SGD, two deliberately broken variants, and DP-FedAvg, each
against the epsilon its accountant claims (`projects/fedlearn/audit.py`).

Variants (`get_config(arg)`, the text after the colon of `--config=`):

default: the audit reported in the README.
  python -m projects.fedlearn.main --config=projects/fedlearn/configs/audit.py:default \
      --workdir=workdirs/fl_audit
  Every row: 2,000 vmapped runs with the canary and 2,000 without, 20 steps (rounds) with
  Poisson sampling at q = 0.1 of 64 examples (devices), the noise multiplier calibrated to
  epsilon 2 at delta 1e-5 (RDP); membership is tested from every step's model (the
  adversary DP-SGD's analysis assumes), with 95% Clopper-Pearson confidence. About a minute.

tiny: the same with 200 runs per side, for the smoke test.
  python -m projects.fedlearn.main --config=projects/fedlearn/configs/audit.py:tiny \
      --workdir=/tmp/fl_audit_tiny
"""

import ml_collections

VARIANTS = ("default", "tiny")  # The first is what `--config=.../audit.py` runs.


def _mechanism() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.num_examples = 64  # Examples (DP-SGD) or registered devices (DP-FedAvg), the canary included.
  m.dim = 4
  m.sampling_probability = 0.1
  m.steps = 20  # Steps or rounds.
  m.canary_norm = 10.0  # The canary's raw gradient (update) norm in units of the clip norm.
  m.delta = 1e-5
  return m


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {arg!r}")
  c = ml_collections.ConfigDict()
  c.mode = "audit"
  c.seed = 0  # Splits the runs for threshold selection; DP noise and samples are secret.
  c.insecure_reproducible_noise = False
  c.audit = ml_collections.ConfigDict()
  c.audit.target_epsilon = 2.0  # The claimed epsilon every audited mechanism is calibrated to.
  c.audit.runs = 2000 if arg == "default" else 200  # Runs with the canary, and as many without.
  c.audit.alpha = 0.05  # Bounds hold with probability >= 1 - alpha.
  c.audit.observation = "intermediate"  # or "final": only the last model is released.
  c.audit.breakages = ("broken_noise", "broken_clip")
  c.audit.dpsgd = _mechanism()
  c.audit.fedavg = _mechanism()
  return c
