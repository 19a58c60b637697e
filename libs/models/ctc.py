"""CTC acoustic model: the same encoder with a per-frame softmax over the vocabulary.

Example:
  >>> model = CTCModel(CTCConfig(vocab_size=29))
  >>> logits, lengths = model.apply(params, feats, feat_lens)  # [B, T', V]
  >>> ids, lengths = greedy_decode(logits, lengths)
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from libs.models import encoders


@dataclasses.dataclass(frozen=True)
class CTCConfig:
  vocab_size: int = 29
  blank_id: int = 0
  encoder: encoders.EncoderConfig = encoders.EncoderConfig()


class CTCModel(nn.Module):
  config: CTCConfig

  @nn.compact
  def __call__(self, features, feature_lengths, *, train: bool = False):
    enc, lengths = encoders.Encoder(self.config.encoder)(features, feature_lengths, train=train)
    return nn.Dense(self.config.vocab_size)(enc), lengths


def greedy_decode(logits, lengths, blank_id: int = 0):
  """Best path: argmax per frame, merge repeats, drop blanks. Jit-able; returns
  (ids [B, T] left-aligned and padded with blank, counts [B])."""
  best = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  valid = jnp.arange(best.shape[1])[None] < lengths[:, None]
  prev = jnp.concatenate([jnp.full_like(best[:, :1], -1), best[:, :-1]], axis=1)
  keep = valid & (best != blank_id) & (best != prev)
  # Stable left-compaction: position of each kept id among the kept ones.
  slot = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, best.shape[1])
  out = jnp.full((best.shape[0], best.shape[1] + 1), blank_id, jnp.int32)
  out = out.at[jnp.arange(best.shape[0])[:, None], slot].set(best)
  return out[:, :-1], keep.sum(axis=1).astype(jnp.int32)
