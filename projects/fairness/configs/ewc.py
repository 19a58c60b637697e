"""Mitigation: fine-tune on the worst cohorts' training data, with elastic weight consolidation.

Variants (`get_config(arg)`, the text after the colon of `--config=`):

quick: the study on `digits_fairness`.
  python -m projects.fairness.main --config=projects/fairness/configs/ewc.py:quick \
      --workdir=workdirs/fairness_ewc
  Trains the base transducer (as cohorts.py), fits the geographic clustering tree on the dev
  speakers' errors, takes the `ewc.num_worst` worst leaves as the worst cohorts and fine-tunes
  the base model: plainly on those cohorts' training speakers (`finetune`), on all training
  data with those speakers oversampled (`oversample`), on all training data uniformly (the
  `continue` control: what the extra steps alone do), and on those speakers with an EWC
  penalty (diagonal empirical Fisher of the base model on the original training data) at
  each strength of `ewc.strengths`; the strength with the lowest worst-cohort dev WER that
  does not raise the overall dev WER is reported as `ewc` (the whole sweep is in
  `ewc_sweep`). Prints, on test speakers assigned to the same cohorts, the overall WER and the
  mean, maximum and variance of cohort WER for `baseline`, `finetune`, `oversample` and `ewc`.
  Writes results.json (`runs`) and figures/ewc_cohorts.png. About 12 minutes on 2 CPU cores.

tiny: the same pipeline on the `tiny` corpus in seconds (numbers meaningless).
  python -m projects.fairness.main --config=projects/fairness/configs/ewc.py:tiny --workdir=/tmp/ewc_tiny
"""

import ml_collections

from projects.fairness.configs import common

VARIANTS = ("quick", "tiny")


def get_config(arg: str = "quick") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"projects/fairness/configs/ewc.py:{arg}: the variant must be one of {VARIANTS}")
  c = common.defaults()
  c.mode = "ewc"
  c.ewc = ml_collections.ConfigDict()
  c.ewc.num_worst = 2  # Worst leaves of the geographic tree (by dev WER) to fine-tune on.
  c.ewc.strengths = (10.0, 100.0, 1000.0)  # EWC lambda, swept; chosen on dev.
  c.ewc.fisher_examples = 512  # Original training utterances the Fisher diagonal averages over.
  c.ewc.oversample_factor = 4  # Worst cohorts' utterances repeated this many times.
  c.finetune = common._train(150, 32, 5e-4, 10)  # pylint: disable=protected-access
  if arg == "tiny":
    c = common.tiny(c)
    c.ewc.num_worst = 1
    c.ewc.strengths = (10.0,)
    c.ewc.fisher_examples = 8
    c.finetune = common._train(4, 8, 5e-4, 1)  # pylint: disable=protected-access
    c.finetune.num_buckets = 1
    c.finetune.checkpoint_every = 2
    c.finetune.log_every = 2
  return c
