"""Speaker verification fairness: adversarial reweighting (ARW) against the unweighted baseline.

Variants (`get_config(arg)`, the text after the colon of `--config=`):

quick: the study on `digits_fairness`.
  python -m projects.fairness.main --config=projects/fairness/configs/arw.py:quick \
      --workdir=workdirs/fairness_arw
  Generates the corpus on first use, trains the speaker-embedding model twice from the same
  initialization and batches, without and with adversarial reweighting (an adversary maps
  each utterance's embedding and its k-means cluster to a weight; a pair's weight is the sum
  of its two utterances' weights; the adversary maximizes the weighted pairwise loss, the
  extractor minimizes it), and scores verification trials among the test speakers. Prints
  EER overall, the gender EER gap and the standard deviation of EER across accents for
  `baseline` and `arw`. Writes results.json (`runs`) and figures/det_by_gender.png. About 6
  minutes on a 2-core CPU machine.

tiny: the same pipeline on the `tiny` corpus in seconds (numbers meaningless).
  python -m projects.fairness.main --config=projects/fairness/configs/arw.py:tiny --workdir=/tmp/arw_tiny
"""

import ml_collections

from projects.fairness.configs import common

VARIANTS = ("quick", "tiny")


def get_config(arg: str = "quick") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"projects/fairness/configs/arw.py:{arg}: the variant must be one of {VARIANTS}")
  c = common.defaults()
  c.mode = "arw"
  c.arw = ml_collections.ConfigDict()
  c.arw.num_clusters = 8  # k-means clusters of the training embeddings the adversary sees.
  c.arw.cluster_every = 100  # Steps between refits of the clusters on the current embeddings.
  c.arw.cluster_utterances = 1024  # Training utterances the clusters are fitted on.
  c.arw.adversary_hidden = 32
  c.arw.adversary_learning_rate = 1e-2  # At 1e-3 every metric stayed within 2.5% of the baseline.
  c.verification = ml_collections.ConfigDict()
  c.verification.nontarget_per_target = 4  # Different-speaker trials per same-speaker trial.
  if arg == "tiny":
    c = common.tiny(c)
    c.arw.num_clusters = 2
    c.arw.cluster_every = 3
    c.arw.cluster_utterances = 16
    c.arw.adversary_hidden = 4
  return c
