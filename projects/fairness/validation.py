"""Config checks that run before any work; every error names the field (libs.config.checks)."""

from __future__ import annotations

import ml_collections

from libs.config import checks

MODES = ("cohorts", "ewc", "arw")


def _train_section(config, name: str) -> None:
  for field in ("batch_size", "num_steps", "warmup_steps", "log_every", "checkpoint_every", "num_buckets"):
    checks.positive_int(config, f"{name}.{field}")
  checks.number(config, f"{name}.learning_rate", 0.0, 1.0, low_open=True)
  checks.number(config, f"{name}.final_lr_fraction", 0.0, 1.0)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field."""
  checks.one_of(config, "mode", MODES)
  checks.positive_int(config, "seed", 0)
  _train_section(config, "train")
  checks.positive_int(config, "eval.batch_size")
  for field in ("channels", "embed_dim", "speakers_per_batch", "crop_frames", "num_steps", "log_every",
                "checkpoint_every"):
    checks.positive_int(config, f"speaker.{field}")
  checks.positive_int(config, "speaker.utterances_per_speaker", 2)  # Same-speaker pairs need two.
  checks.number(config, "speaker.learning_rate", 0.0, 1.0, low_open=True)
  c = config.cohorts
  checks.positive_int(config, "cohorts.tree_min_speakers")
  checks.positive_int(config, "cohorts.tree_max_depth")
  checks.positive_int(config, "cohorts.demographic_min_speakers")
  checks.positive_int(config, "cohorts.min_cluster_speakers")
  checks.positive_int(config, "cohorts.bootstrap_resamples")
  checks.number(config, "cohorts.confidence", 0.0, 1.0, low_open=True, high_open=True)
  ks = tuple(c.k_values)
  checks.require(bool(ks) and all(isinstance(k, int) and k >= 2 for k in ks), "cohorts.k_values",
                 "must be a non-empty tuple of integers >= 2", c.k_values)
  if config.mode == "ewc":
    _train_section(config, "finetune")
    checks.positive_int(config, "ewc.num_worst")
    checks.positive_int(config, "ewc.fisher_examples")
    checks.positive_int(config, "ewc.oversample_factor")
    strengths = tuple(config.ewc.strengths)
    checks.require(bool(strengths) and all(isinstance(s, (int, float)) and s > 0 for s in strengths),
                   "ewc.strengths", "must be a non-empty tuple of positive numbers", config.ewc.strengths)
  if config.mode == "arw":
    checks.positive_int(config, "arw.num_clusters")
    checks.positive_int(config, "arw.cluster_every")
    checks.positive_int(config, "arw.cluster_utterances", 2)
    checks.positive_int(config, "arw.adversary_hidden")
    checks.number(config, "arw.adversary_learning_rate", 0.0, 1.0, low_open=True)
    checks.number(config, "verification.nontarget_per_target", 0.0, 1e6, low_open=True)
