"""A small causal Transformer language model (pre-LayerNorm), built only from Dense,
DenseGeneral (attention), Embed and LayerNorm, so that ghost clipping covers it.

Example:
  >>> lm = TransformerLM(LMConfig(vocab_size=512))
  >>> params = lm.init(key, tokens)["params"]          # tokens: [B, T] int
  >>> logits = lm.apply({"params": params}, tokens)    # [B, T, vocab]
  >>> nll = next_token_nll(logits, tokens, mask)        # [B] mean per-token NLL
  >>> hidden = lm.apply({"params": params}, tokens, return_hidden=True)   # [B, T, dim]
  >>> clf = LMClassifier(LMConfig(vocab_size=512), num_classes=12)     # params["lm"]: an LM's
  >>> class_logits = clf.apply({"params": clf_params}, tokens)        # [B, 12]
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
  def __call__(self, tokens, *, train: bool = False, return_hidden: bool = False, token_embeddings=None):
    """Next-token logits [B, T, vocab] of int `tokens` [B, T].

    Args:
      return_hidden: return the final (layer-normalized) hidden states [B, T, dim] instead: the
        contextual embeddings of the tokens.
      token_embeddings: [B, T, dim] used instead of the embedding lookup of `tokens` (for
        gradients with respect to the input embeddings); `tokens` still gives the shape.
    """
    cfg = self.config
    if tokens.shape[1] > cfg.max_len:
      raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_len={cfg.max_len}")
    positions = jnp.arange(tokens.shape[1])[None]
    embed = nn.Embed(cfg.vocab_size, cfg.dim, name="tokens")
    x = embed(tokens) if token_embeddings is None else token_embeddings
    x = x + nn.Embed(cfg.max_len, cfg.dim, name="positions")(jnp.broadcast_to(positions, tokens.shape))
    mask = nn.make_causal_mask(tokens)
    for i in range(cfg.num_layers):
      x = Block(cfg, name=f"block_{i}")(x, mask, train=train)
    hidden = nn.LayerNorm()(x)
    if return_hidden:
      return hidden
    return nn.Dense(cfg.vocab_size, name="head")(hidden)


class LMClassifier(nn.Module):
  """A sequence classifier on a causal LM: the LM's hidden states (submodule "lm", so a
  pretrained LM's parameters drop in as `params["lm"]`), mean-pooled over the non-padding
  tokens (id 0 is padding), then a Dense layer ("classifier")."""
  config: LMConfig
  num_classes: int

  @nn.compact
  def __call__(self, tokens, *, train: bool = False, token_embeddings=None):
    hidden = TransformerLM(self.config, name="lm")(tokens, train=train, return_hidden=True,
                                                   token_embeddings=token_embeddings)
    mask = (tokens > 0).astype(hidden.dtype)[..., None]
    pooled = jnp.sum(hidden * mask, axis=-2) / jnp.maximum(jnp.sum(mask, axis=-2), 1.0)
    return nn.Dense(self.num_classes, name="classifier")(pooled)

  def embed(self, params, tokens):
    """The token embeddings [B, T, dim] this classifier's LM looks up for `tokens` (a plain
    function of explicit params: `clf.embed(params, tokens)`)."""
    return jnp.take(params["lm"]["tokens"]["embedding"], tokens, axis=0)


def next_token_nll(logits, tokens, mask=None):
  """Mean next-token negative log-likelihood of each sequence, [B]; `mask` [B, T] marks
  real tokens (position t predicts token t+1)."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
  m = jnp.ones_like(losses) if mask is None else mask[:, 1:].astype(losses.dtype)
  return jnp.sum(losses * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
