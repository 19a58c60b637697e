"""A small causal Transformer language model (pre-LayerNorm), built only from Dense,
DenseGeneral (attention), Embed and LayerNorm, so that ghost clipping covers it.

Example:
  >>> lm = TransformerLM(LMConfig(vocab_size=512))
  >>> params = lm.init(key, tokens)["params"]          # tokens: [B, T] int
  >>> logits = lm.apply({"params": params}, tokens)    # [B, T, vocab]
  >>> nll = next_token_nll(logits, tokens, mask)        # [B] mean per-token NLL
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class LMConfig:
  vocab_size: int = 512
  max_len: int = 64
  dim: int = 128
  num_heads: int = 4
  num_layers: int = 2
  mlp_multiplier: int = 4
  dropout: float = 0.0


class Block(nn.Module):
  config: LMConfig

  @nn.compact
  def __call__(self, x, mask, *, train: bool):
    cfg = self.config
    h = nn.MultiHeadDotProductAttention(cfg.num_heads, dropout_rate=cfg.dropout, deterministic=not train)(
        nn.LayerNorm()(x), mask=mask)
    x = x + nn.Dropout(cfg.dropout, deterministic=not train)(h)
    h = nn.Dense(cfg.mlp_multiplier * cfg.dim)(nn.LayerNorm()(x))
    h = nn.Dense(cfg.dim)(nn.gelu(h))
    return x + nn.Dropout(cfg.dropout, deterministic=not train)(h)


class TransformerLM(nn.Module):
  config: LMConfig

  @nn.compact
  def __call__(self, tokens, *, train: bool = False):
    cfg = self.config
    if tokens.shape[1] > cfg.max_len:
      raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_len={cfg.max_len}")
    positions = jnp.arange(tokens.shape[1])[None]
    x = nn.Embed(cfg.vocab_size, cfg.dim, name="tokens")(tokens)
    x = x + nn.Embed(cfg.max_len, cfg.dim, name="positions")(jnp.broadcast_to(positions, tokens.shape))
    mask = nn.make_causal_mask(tokens)
    for i in range(cfg.num_layers):
      x = Block(cfg, name=f"block_{i}")(x, mask, train=train)
    return nn.Dense(cfg.vocab_size, name="head")(nn.LayerNorm()(x))


def next_token_nll(logits, tokens, mask=None):
  """Mean next-token negative log-likelihood of each sequence, [B]; `mask` [B, T] marks
  real tokens (position t predicts token t+1)."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
  m = jnp.ones_like(losses) if mask is None else mask[:, 1:].astype(losses.dtype)
  return jnp.sum(losses * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
