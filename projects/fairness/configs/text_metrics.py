"""Intrinsic vs extrinsic bias metrics, and accumulated prediction sensitivity, on generated text.

Variants (`get_config(arg)`, the text after the colon of `--config=`):

quick: the study (issue 17, parts 1 and 2).
  python -m projects.fairness.main --config=projects/fairness/configs/text_metrics.py:quick \
      --workdir=workdirs/fairness_text_metrics
  A population of 24 models: causal Transformer LMs in two sizes pretrained on generated text with
  gender bias 0, 1/3, 2/3 or 1 (professions and the gender they co-occur with), each fine-tuned
  as a profession classifier on task data with bias 0, 0.5 or 1. Prints the Spearman correlation
  (bootstrap 95% CI over models) between CEAT and the extrinsic metrics, on generic and on aligned
  evaluation data, and each metric's correlation with the controlled task bias. Writes
  results.json (`correlation`, `sensitivity`, `models`), figures/intrinsic_vs_extrinsic.png and
  figures/sensitivity_vs_bias.png.

tiny: the same pipeline in seconds (numbers meaningless).
  python -m projects.fairness.main --config=projects/fairness/configs/text_metrics.py:tiny --workdir=/tmp/tm_tiny
"""

import ml_collections

VARIANTS = ("quick", "tiny")


def _train(steps: int, batch_size: int, learning_rate: float) -> ml_collections.ConfigDict:
  t = ml_collections.ConfigDict()
  t.steps = steps
  t.batch_size = batch_size
  t.learning_rate = learning_rate
  return t


def get_config(arg: str = "quick") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"projects/fairness/configs/text_metrics.py:{arg}: the variant must be one of {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.mode = "text_metrics"
  c.seed = 0
  c.progress = True
  c.eval_batch_size = 256

  c.data = ml_collections.ConfigDict()
  c.data.lm_examples = 8000        # pretraining sentences per LM
  c.data.task_train_examples = 600  # fine-tuning examples per classifier (small: the LM's prior matters)
  c.data.task_test_examples = 2000  # gender-balanced
  c.data.generic_contexts = 3000    # CEAT contexts of the unaligned test (gender-balanced)
  c.data.ambiguity = 0.5            # share of task examples whose duty fits both professions of a pair

  c.population = ml_collections.ConfigDict()
  c.population.lm_biases = (0.0, 1 / 3, 2 / 3, 1.0)
  c.population.task_biases = (0.0, 0.5, 1.0)
  c.population.sizes = {"small": (32, 1, 2), "large": (64, 2, 4)}  # (dim, num_layers, num_heads)

  c.lm_train = _train(600, 64, 3e-3)
  c.classifier_train = _train(250, 32, 1e-3)
  c.protected_train = _train(300, 64, 2e-3)

  c.ceat = ml_collections.ConfigDict()
  c.ceat.num_samples = 1000
  c.ceat.max_occurrences = 200  # per word, drawn at random from the contexts

  c.sensitivity = ml_collections.ConfigDict()
  c.sensitivity.examples = 1000

  c.stats = ml_collections.ConfigDict()
  c.stats.bootstrap_resamples = 2000
  c.stats.confidence = 0.95

  if arg == "tiny":
    c.data.lm_examples = 200
    c.data.task_train_examples = 100
    c.data.task_test_examples = 300
    c.data.generic_contexts = 300
    c.population.lm_biases = (0.0, 1.0)
    c.population.task_biases = (0.0, 1.0)
    c.population.sizes = {"small": (8, 1, 2)}
    c.lm_train = _train(4, 8, 3e-3)
    c.classifier_train = _train(4, 8, 1e-3)
    c.protected_train = _train(4, 8, 2e-3)
    c.ceat.num_samples = 20
    c.ceat.max_occurrences = 20
    c.sensitivity.examples = 40
    c.stats.bootstrap_resamples = 50
    c.eval_batch_size = 64
  return c
