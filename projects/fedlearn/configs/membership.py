"""Membership inference on the intent model, non-private and DP-SGD at epsilon 10 and 1
(`projects/fedlearn/membership.py`).

Variants (`get_config(arg)`, the text after the colon of `--config=`):

default: the experiment reported in the README.
  python -m projects.fedlearn.main --config=projects/fedlearn/configs/membership.py:default \
      --workdir=workdirs/fl_membership
  1,000 distinct generated utterances; 16 intent models (one vmapped ensemble per setting),
  each on a random half, 400 steps of Poisson-sampled batches (q = 0.128, ~64 examples);
  every model attacked with the other 15 as shadow models.

tiny: the same pipeline in seconds, for the smoke test.
  python -m projects.fedlearn.main --config=projects/fedlearn/configs/membership.py:tiny \
      --workdir=/tmp/fl_membership_tiny
"""

import ml_collections

VARIANTS = ("default", "tiny")  # The first is what `--config=.../membership.py` runs.


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {arg!r}")
  c = ml_collections.ConfigDict()
  c.mode = "membership"
  c.seed = 0  # Data, split and initialization; DP noise and DP sampling are secret.
  c.insecure_reproducible_noise = False
  m = c.membership = ml_collections.ConfigDict()
  m.num_examples = 1000  # Distinct utterances; each model trains on half.
  m.num_models = 16
  m.attack_targets = 16  # Models attacked (each with all the others as shadow models).
  m.steps = 400
  m.sampling_probability = 0.128  # Poisson rate over a model's 500 examples: ~64 per batch.
  m.physical_batch_size = 128
  m.learning_rate = 3e-3
  m.l2_clip_norm = 1.0
  m.hidden_dim = 128
  m.target_epsilons = (10.0, 1.0)
  m.delta = 1e-5
  if arg == "tiny":
    m.num_examples, m.num_models, m.attack_targets, m.steps = 64, 4, 2, 5
    m.sampling_probability, m.physical_batch_size, m.hidden_dim = 0.25, 32, 16
  return c
