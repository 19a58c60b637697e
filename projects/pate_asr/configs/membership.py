"""Membership inference on the ASR transducer, non-private and DP-SGD at epsilon 10 and 1
(`projects/pate_asr/membership.py`).

Variants (`get_config(arg)`, the text after the colon of `--config=`):

default: the experiment reported in the README.
  python -m projects.pate_asr.main --config=projects/pate_asr/configs/membership.py \
      --workdir=workdirs/asr_membership
  (the same as python -m projects.pate_asr.main --config=projects/pate_asr/configs/membership.py:default).
  The sweep's public model (`sweep.py:quick`: the same data, model and `public_train`
  section; pretrained in `<workdir>/public/` unless `--config.membership.public_workdir` names
  a sweep workdir that has it), then a universe of 128 in-domain training utterances, one per
  speaker; 16 transducers fine-tuned from the public model per setting (one vmapped ensemble),
  each on a random half of the universe (~64 utterances), 150 steps of Poisson-sampled batches
  (q = 0.125: ~8 utterances, ~19 epochs); every model attacked with the other 15 as shadow
  models. Prints the table (AUC, TPR at 0.1% and 1% FPR, the largest TPR at 1% FPR that the
  run's DP guarantee allows, test WER). About 12 minutes on a 2-core CPU, pretraining included.

tiny: the same pipeline in seconds, for the smoke test (the `tiny` corpus and model).
  python -m projects.pate_asr.main --config=projects/pate_asr/configs/membership.py:tiny \
      --workdir=/tmp/asr_membership_tiny
"""

import ml_collections

from projects.pate_asr.configs import sweep

VARIANTS = ("default", "tiny")  # The first is what `--config=.../membership.py` runs.


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"projects/pate_asr/configs/membership.py:{arg}: the variant must be one of {VARIANTS}")
  base = sweep.get_config("quick" if arg == "default" else "tiny")
  c = ml_collections.ConfigDict()
  c.mode = "membership"
  c.seed = 0  # Data, universe, split and public model; DP noise and DP sampling are secret.
  c.num_devices = 0
  c.progress = True
  # True only for tests/debugging: DP noise and samples from config.seed (no guarantee then).
  c.insecure_reproducible_noise = False
  # The sweep's data, model and public pretraining, so that its public model can be reused.
  for section in ("data", "model", "train", "public_train", "eval"):
    c[section] = ml_collections.ConfigDict(base[section].to_dict())
  m = c.membership = ml_collections.ConfigDict()
  m.public_workdir = ""  # "": pretrain in <workdir>/public; else a sweep workdir holding public/.
  m.universe_utterances = 128  # One per in-domain training speaker; each model trains on half.
  m.num_models = 16
  m.attack_targets = 16  # Models attacked (each with all the others as shadow models).
  m.steps = 150
  m.sampling_probability = 0.125  # Poisson rate over a model's ~64 utterances: ~8 per batch (19 epochs).
  m.physical_batch_size = 16  # A larger Poisson sample (rare) runs as several physical batches.
  m.learning_rate = 1e-3
  m.warmup_steps = 10
  m.l2_clip_norm = 5.0
  m.target_epsilons = (10.0, 1.0)
  m.delta = 1e-5
  m.checkpoint_every = 50
  m.eval_batch_size = 64
  m.test_utterances = 0  # 0: the whole test split; else a seeded subset of this many.
  if arg == "tiny":
    m.universe_utterances, m.num_models, m.attack_targets, m.steps = 12, 4, 2, 3
    m.sampling_probability, m.physical_batch_size, m.warmup_steps = 0.5, 4, 1
    m.checkpoint_every, m.eval_batch_size, m.test_utterances = 2, 8, 8
  return c
