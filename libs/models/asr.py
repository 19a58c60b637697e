"""End-to-end ASR models built from a config section: the transducer and CTC families.

Every project that trains ASR (PATE, DP-SGD, fairness) builds its model here, so that one
`config.model` section means the same network everywhere.

Example:
  >>> model = build_model(config.model, tokenizer.vocab_size)   # config.model.name: "transducer"
  >>> params = init_params(model, jax.random.key(0))
  >>> stacked = jax.jit(jax.vmap(init_fn(model)))(jax.random.split(key, 4))  # an ensemble of 4
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from libs.models import ctc as ctc_lib
from libs.models import encoders
from libs.models import transducer as transducer_lib

# The values `config.model.name` may take; `build_model` dispatches on them.
MODEL_NAMES = ("transducer", "ctc")


# Encoder fields that a `config.model` section may set (the dataclass defaults otherwise).
_OPTIONAL_ENCODER_FIELDS = ("ff_multiplier", "local_kernel", "global_kernel", "global_dilations", "chunk",
                            "compute_penalty", "arbitrator_dim", "amortized_kernel")


def encoder_config(model_cfg: ml_collections.ConfigDict) -> encoders.EncoderConfig:
  """The encoder part of a `config.model` section.

  Example:
    >>> encoder_config(config.model).kind
    'lstm'
  """
  return encoders.EncoderConfig(
      kind=model_cfg.encoder, subsampling_channels=model_cfg.subsampling_channels, dim=model_cfg.dim,
      num_layers=model_cfg.num_layers, bidirectional=model_cfg.bidirectional,
      num_heads=model_cfg.num_heads, conv_kernel=model_cfg.conv_kernel, dropout=model_cfg.dropout,
      **{field: tuple(v) if isinstance(v, list) else v for field in _OPTIONAL_ENCODER_FIELDS
         if (v := model_cfg.get(field)) is not None})


def build_model(model_cfg: ml_collections.ConfigDict, vocab_size: int):
  """The flax module named by `model_cfg.name` (dispatch by an explicit dict).

  Example:
    >>> build_model(config.model, 29)   # a `transducer.Transducer` or a `ctc.CTCModel`

  Raises:
    ValueError: naming `config.model.name` when it is not one of `MODEL_NAMES`.
  """
  builders = {
      "transducer": lambda: transducer_lib.Transducer(transducer_lib.TransducerConfig(
          vocab_size=vocab_size, encoder=encoder_config(model_cfg), embed_dim=model_cfg.embed_dim,
          predictor_dim=model_cfg.predictor_dim, joint_dim=model_cfg.joint_dim)),
      "ctc": lambda: ctc_lib.CTCModel(ctc_lib.CTCConfig(vocab_size=vocab_size,
                                                        encoder=encoder_config(model_cfg))),
  }
  if model_cfg.name not in builders:
    raise ValueError(f"config.model.name must be one of {sorted(builders)}, got {model_cfg.name!r}")
  return builders[model_cfg.name]()


def init_fn(model, num_mels: int = 80):
  """`key -> params` for `model`, pure, to be jitted (and vmapped for an ensemble).

  Calling `model.init` eagerly dispatches and compiles every primitive on its own (hundreds
  of compilations, ~14 s for a vmapped transducer on 2 CPU cores); under `jax.jit` it is one.

  Example:
    >>> params = jax.jit(jax.vmap(init_fn(model)))(jax.random.split(key, num_teachers))
  """
  feats = jnp.zeros((1, 64, num_mels))
  lens = jnp.array([64])
  labels = jnp.zeros((1, 4), jnp.int32)

  def init(key):
    if isinstance(model, transducer_lib.Transducer):
      return model.init({"params": key}, feats, lens, labels, jnp.array([4]))["params"]
    return model.init({"params": key}, feats, lens)["params"]

  return init


def init_params(model, key: jax.Array, num_mels: int = 80):
  """The parameters of `model` drawn with `key`, initialized in one compiled program.

  Example:
    >>> params = init_params(model, jax.random.key(0))
  """
  return jax.jit(init_fn(model, num_mels))(key)
