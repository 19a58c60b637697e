"""Checks a pate_asr config before any work starts; errors name the offending field.

Example:
  >>> validate(config)   # ValueError: config.train.learning_rate must be > 0, got -0.1
"""

from __future__ import annotations

import ml_collections

from libs.config.checks import positive_int, require
from libs.data import synthetic_speech
from libs.models import asr as asr_lib
from libs.models import encoders
from projects.pate_asr import aggregation

CORPORA = ("synthetic", "librispeech")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid field of `config`."""
  d, m, t = config.data, config.model, config.train
  require(d.corpus in CORPORA, "data.corpus", f"must be one of {CORPORA}", d.corpus)
  if d.corpus == "synthetic":
    names = tuple(c.name for c in synthetic_speech.BUILDER_CONFIGS)
    require(d.synthetic_config in names, "data.synthetic_config", f"must be one of {names}",
             d.synthetic_config)
  else:
    require(bool(d.librispeech_dir), "data.librispeech_dir",
             "must name a local LibriSpeech directory when data.corpus='librispeech'", d.librispeech_dir)
  for field in ("max_train_examples", "max_eval_examples"):
    require(d[field] >= 0, f"data.{field}", "must be >= 0 (0 means all)", d[field])
  require(m.name in asr_lib.MODEL_NAMES, "model.name", f"must be one of {asr_lib.MODEL_NAMES}", m.name)
  require(m.encoder in encoders.ENCODER_KINDS, "model.encoder",
           f"must be one of {encoders.ENCODER_KINDS}", m.encoder)
  for field in ("subsampling_channels", "dim", "num_layers", "num_heads", "conv_kernel",
                "embed_dim", "predictor_dim", "joint_dim"):
    positive_int(config, f"model.{field}")
  if m.encoder == "lstm" and m.bidirectional:
    require(m.dim % 2 == 0, "model.dim", "must be even for a bidirectional LSTM", m.dim)
  if m.encoder in ("conformer", "amortized"):
    require(m.dim % m.num_heads == 0, "model.dim", f"must be divisible by model.num_heads={m.num_heads}", m.dim)
  if m.encoder == "amortized":
    require(isinstance(m.get("chunk", 4), int) and m.get("chunk", 4) >= 1, "model.chunk", "must be an integer >= 1",
            m.get("chunk"))
    require(m.get("compute_penalty", 0.0) >= 0, "model.compute_penalty", "must be >= 0 (nats per frame)",
            m.get("compute_penalty"))
  require(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)", m.dropout)
  units = m.get("units", "chars")
  require(units in ("chars", "words"), "model.units", "must be 'chars' or 'words'", units)
  if units == "words":
    require(len(m.get("vocabulary", ())) > 0, "model.vocabulary",
             "must list the public word vocabulary when model.units='words'", m.get("vocabulary", ()))
  for field in ("batch_size", "num_steps", "log_every", "eval_every", "checkpoint_every", "num_buckets"):
    positive_int(config, f"train.{field}")
  require(t.learning_rate > 0, "train.learning_rate", "must be > 0", t.learning_rate)
  require(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0", t.warmup_steps)
  require(0.0 <= t.final_lr_fraction <= 1.0, "train.final_lr_fraction", "must be in [0, 1]",
           t.final_lr_fraction)
  require(t.weight_decay >= 0, "train.weight_decay", "must be >= 0", t.weight_decay)
  require(t.grad_clip_norm > 0, "train.grad_clip_norm", "must be > 0", t.grad_clip_norm)
  for field in ("freq_masks", "freq_mask_width", "time_masks", "time_mask_width"):
    require(t[field] >= 0, f"train.{field}", "must be >= 0", t[field])
  positive_int(config, "eval.batch_size")
  require(config.num_devices >= 0, "num_devices", "must be >= 0 (0 means all devices)", config.num_devices)


PATE_METHODS = ("lnmax", "gnmax", "confident_gnmax", "noisy_average")
TRAIN_FIELDS = ("batch_size", "num_steps", "log_every", "checkpoint_every", "num_buckets")
DPSGD_UNITS = ("speaker", "utterance")


def _check_train_section(config, section: str) -> None:
  for field in TRAIN_FIELDS:
    positive_int(config, f"{section}.{field}")
  require(config[section].learning_rate > 0, f"{section}.learning_rate", "must be > 0",
           config[section].learning_rate)


def validate_pate(config: ml_collections.ConfigDict) -> None:
  """Checks the sections of a PATE sweep config (`validate` covers the shared ones)."""
  noise = config.get("insecure_reproducible_noise")
  require(isinstance(noise, bool), "insecure_reproducible_noise", "must be a bool (False: secret DP noise; "
           "True only for tests/debugging)", noise)
  names = tuple(c.name for c in synthetic_speech.BUILDER_CONFIGS)
  require(config.data.public_config in names, "data.public_config",
           f"must name the public labeled corpus, one of {names}", config.data.public_config)
  p = config.pate
  for scenario in p.scenarios:
    require(scenario in ("matched", "mismatched"), "pate.scenarios", "must hold 'matched'/'mismatched'", scenario)
  for method in p.methods:
    require(method in PATE_METHODS, "pate.methods", f"must hold methods of {PATE_METHODS}", method)
  positive_int(config, "pate.num_teachers")
  positive_int(config, "pate.label_batch_size")
  positive_int(config, "pate.max_symbols_per_frame")
  positive_int(config, "pate.max_queries_per_utterance")
  require(p.decode in aggregation.DECODES, "pate.decode",
           "must be " + " or ".join(repr(d) for d in aggregation.DECODES), p.decode)
  require(0.0 < p.delta < 1.0, "pate.delta", "must be in (0, 1)", p.delta)
  require(len(p.target_epsilons) > 0 and all(e > 0 for e in p.target_epsilons), "pate.target_epsilons",
           "must be positive numbers", tuple(p.target_epsilons))
  require(len(p.query_utterances) == len(p.target_epsilons) and all(
      isinstance(n, int) and n >= 1 for n in p.query_utterances), "pate.query_utterances",
           "must give one positive number of public utterances per target epsilon", tuple(p.query_utterances))
  for field in ("lnmax_scale", "gnmax_sigma", "confident_sigma", "confident_sigma_threshold",
                "noisy_average_sigma", "ss_beta", "ss_sigma"):
    require(p[field] > 0, f"pate.{field}", "must be > 0", p[field])
  require(1 < p.ss_order < 1 / (2 * p.ss_beta), "pate.ss_order", "must be in (1, 1 / (2 * pate.ss_beta))",
           p.ss_order)
  for section in ("public_train", "teachers", "students"):
    _check_train_section(config, section)
  positive_int(config, "students.self_training_steps")
  mix = config.students.get("mix_public_labeled", False)
  require(isinstance(mix, bool), "students.mix_public_labeled", "must be a bool", mix)
  d = config.dpsgd
  for unit in d.units:
    require(unit in DPSGD_UNITS, "dpsgd.units", f"must hold units of {DPSGD_UNITS}", unit)
  for field in ("num_steps", "physical_batch_size", "checkpoint_every", "max_utterances_per_speaker"):
    positive_int(config, f"dpsgd.{field}")
  for field in ("expected_batch_size", "expected_speakers", "l2_clip_norm", "learning_rate"):
    require(d[field] > 0, f"dpsgd.{field}", "must be > 0", d[field])
  require(config.model.name == "transducer", "model.name", "must be 'transducer' for PATE (sequence "
           "queries are transducer decoding steps)", config.model.name)
