"""Cohort discovery: which speakers does the recognizer fail? Three ways, held-out evaluation.

Variants (`get_config(arg)`, the text after the colon of `--config=`):

quick: the study on `digits_fairness`.
  python -m projects.fairness.main --config=projects/fairness/configs/cohorts.py:quick \
      --workdir=workdirs/fairness_cohorts
  Generates the corpus on first use (about a minute on 2 CPU cores), trains the transducer
  (600 steps x 32) and the speaker-embedding model (500 steps), decodes the dev and test
  speakers, discovers cohorts on dev (geographic tree, geo-demographic partition, k-means
  over speaker embeddings) and prints, for each method, the test WER gap of the bottom cohort
  against the rest with a speaker-bootstrap 95% interval and the bottom cohort's share of
  test speakers. Writes results.json (`cohorts`), figures/cohort_map.png,
  figures/cohort_gaps.png and figures/kmeans_k.png. About 8 minutes on a 2-core CPU machine.

tiny: the same pipeline on the `tiny` corpus in seconds (numbers meaningless).
  python -m projects.fairness.main --config=projects/fairness/configs/cohorts.py:tiny --workdir=/tmp/cohorts_tiny
"""

import ml_collections

from projects.fairness.configs import common

VARIANTS = ("quick", "tiny")


def get_config(arg: str = "quick") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"projects/fairness/configs/cohorts.py:{arg}: the variant must be one of {VARIANTS}")
  c = common.defaults()
  c.mode = "cohorts"
  return common.tiny(c) if arg == "tiny" else c
