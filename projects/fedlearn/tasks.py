"""Learning tasks on device requests: intent classification and next-word prediction.

A Task bundles a flax.linen model with pure per-example losses and metrics of
(params, tokens [N, L], intents [N]). Padding (token 0) is ignored inside an example, and an
all-padding example gets a finite loss (0 for next_word), so callers can weight padded
examples by a mask without NaNs leaking into gradients. Everything works under jax.vmap over a
leading client axis of params and data.

Example:
  >>> task = make_task("intent", vocab_size=len(data.vocab), num_intents=14, max_len=16)
  >>> params = task.init(jax.random.key(0))
  >>> losses = task.example_losses(params, tokens, intents)           # [N]
  >>> acc = task.example_metrics(params, tokens, intents)["correct"]  # [N]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from libs.models.lm import LMConfig, TransformerLM, next_token_nll
from libs.models.pooling import max_pool

Params = Any


class IntentClassifier(nn.Module):
  """Token embeddings -> width-3 convolution (as Dense on word windows) -> masked mean and
  max pooling -> MLP."""
  vocab_size: int
  num_intents: int
  embed_dim: int = 64
  hidden_dim: int = 128

  @nn.compact
  def __call__(self, tokens):
    """Logits [..., num_intents] of int tokens [..., L], or of token distributions [..., L, vocab]
    (float: a relaxed input, as canary extraction optimises; one-hot rows give the same logits)."""
    embed = nn.Embed(self.vocab_size, self.embed_dim)
    if jnp.issubdtype(tokens.dtype, jnp.floating):
      mask = 1.0 - tokens[..., :1]  # 1 - P(padding), token 0
      x = (tokens @ embed.embedding) * mask
    else:
      mask = (tokens > 0)[..., None].astype(jnp.float32)
      # Zeroed padding embeddings make the convolution at the last word independent of how
      # much padding follows.
      x = embed(tokens) * mask
    # A width-3 convolution written as a Dense layer on [previous, current, next] word
    # windows: under vmap over clients (each with its own weights) a Conv becomes a grouped
    # convolution, which XLA:CPU runs several times slower than the batched matmul this is.
    zero = jnp.zeros_like(x[..., :1, :])
    windows = jnp.concatenate([jnp.concatenate([zero, x[..., :-1, :]], axis=-2), x,
                               jnp.concatenate([x[..., 1:, :], zero], axis=-2)], axis=-1)
    h = nn.relu(nn.Dense(self.hidden_dim, name="conv")(windows)) * mask
    count = jnp.maximum(mask.sum(-2), 1.0)
    # h >= 0: pads add 0 to the max. Not jnp.max: its gradient divides by a count of positions
    # equal to the max, which is 0 on some CPUs (see libs/models/pooling.py).
    pooled = jnp.concatenate([h.sum(-2) / count, max_pool(h, axis=-2)], axis=-1)
    return nn.Dense(self.num_intents)(nn.relu(nn.Dense(self.hidden_dim)(pooled)))


@dataclasses.dataclass(frozen=True)
class Task:
  """A model with pure per-example losses and metrics.

  Example:
    >>> task = make_task("next_word", vocab_size=500, num_intents=14, max_len=16)
    >>> jax.vmap(task.example_losses)(stacked_params, tokens_cnl, intents_cn)   # [C, N]
  """
  name: str  # "intent" or "next_word"
  model: nn.Module
  max_len: int

  @functools.cached_property
  def _jit_init(self):
    # One compiled program, compiled once per Task: op-by-op eager initialization costs
    # seconds of dispatch on CPU.
    return jax.jit(lambda key: self.model.init(key, jnp.zeros((1, self.max_len), jnp.int32))["params"])

  def init(self, key: jax.Array) -> Params:
    return self._jit_init(key)

  def apply(self, params: Params, tokens: jax.Array) -> jax.Array:
    """Logits: [N, num_intents] (intent) or [N, L, vocab] (next_word)."""
    return self.model.apply({"params": params}, tokens)

  def example_losses(self, params: Params, tokens: jax.Array, intents: jax.Array) -> jax.Array:
    """Per-example loss [N]: cross-entropy of the intent, or mean next-token NLL over real targets."""
    logits = self.apply(params, tokens)
    if self.name == "intent":
      return optax.softmax_cross_entropy_with_integer_labels(logits, intents)
    return next_token_nll(logits, tokens, tokens > 0)

  def example_metrics(self, params: Params, tokens: jax.Array, intents: jax.Array) -> dict[str, jax.Array]:
    """Per-example metrics [N]: "loss", "correct" (intent: 0/1; next_word: token accuracy) and,
    for next_word, "num_tokens" (real targets) for token-weighted averages."""
    logits = self.apply(params, tokens)
    if self.name == "intent":
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, intents)
      return {"loss": loss, "correct": (jnp.argmax(logits, -1) == intents).astype(jnp.float32)}
    targets = tokens[:, 1:]
    real = (targets > 0).astype(jnp.float32)
    num = real.sum(1)
    hits = (jnp.argmax(logits[:, :-1], -1) == targets).astype(jnp.float32)
    return {"loss": next_token_nll(logits, tokens, tokens > 0),
            "correct": (hits * real).sum(1) / jnp.maximum(num, 1.0), "num_tokens": num}


def _intent(vocab_size, num_intents, max_len, **kwargs):
  return IntentClassifier(vocab_size, num_intents, **kwargs)


def _next_word(vocab_size, num_intents, max_len, **kwargs):
  del num_intents
  kwargs = {"dim": 64, "num_heads": 4, "num_layers": 2, "mlp_multiplier": 2, **kwargs}
  return TransformerLM(LMConfig(vocab_size=vocab_size, max_len=max_len, **kwargs))


_BUILDERS = {"intent": _intent, "next_word": _next_word}


def make_task(name: str, *, vocab_size: int, num_intents: int, max_len: int, **model_kwargs) -> Task:
  """A Task by name: "intent" (IntentClassifier) or "next_word" (small TransformerLM).

  Args:
    name: "intent" or "next_word".
    vocab_size: number of token ids (len(data.vocab)).
    num_intents: number of intent classes (len(data.intent_names)).
    max_len: token length of an example.
    **model_kwargs: model sizes: embed_dim, hidden_dim (intent); dim, num_heads, num_layers,
      mlp_multiplier (next_word).

  Example:
    >>> task = make_task("intent", vocab_size=488, num_intents=14, max_len=16, hidden_dim=64)
  """
  if name not in _BUILDERS:
    raise ValueError(f"task must be one of {tuple(_BUILDERS)}, got {name!r}")
  if vocab_size < 5 or num_intents < 1 or max_len < 2:
    raise ValueError(f"need vocab_size >= 5, num_intents >= 1 and max_len >= 2; got {vocab_size}, "
                     f"{num_intents}, {max_len}")
  return Task(name, _BUILDERS[name](vocab_size, num_intents, max_len, **model_kwargs), max_len)
