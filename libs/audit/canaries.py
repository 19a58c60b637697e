"""Canary attacks on models with discrete inputs: exposure and white-box extraction.

A canary is a secret-bearing sequence ("my pin code is 4 7 1 9") inserted into the training
data; the secret fills known slots of a template from a known alphabet. Two measurements:

* `exposure` (Carlini et al. 2019, "The Secret Sharer"): for a generative model, rank the
  inserted canary among every candidate filling of the template by the model's log-perplexity;
  exposure = log2(#candidates) - log2(rank). A model that never saw the canary gives it an
  exposure of about 1 bit on average; one that memorised it gives log2(#candidates).
* `make_relaxed_extractor` (Parikh et al. 2022, "Canary extraction in natural language
  understanding models"): for a classifier, the attacker knows the template and the canary's
  label and optimises a relaxed input for the unknown slots, a softmax over the alphabet's
  tokens per slot, to maximise the label's log-probability; the decoded secret is the argmax
  of each slot. `enumeration_extraction` is the exact discrete attack for small alphabets:
  score every filling and take the best (what the relaxation approximates).

Everything takes the model as a function, so it works for any flax model:
  `label_log_prob(soft_tokens [L, V]) -> scalar` for extraction (the model must accept token
  distributions as input, e.g. `soft @ embedding_table`), `sequence_scores` for exposure.

Example:
  >>> fill = all_fillings(num_slots=4, alphabet_size=10)                 # [10_000, 4]
  >>> scores = log_perplexities(candidates)                              # lower = more likely
  >>> exposure(scores, canary_index)
  >>> attack = make_relaxed_extractor(label_log_prob, template, slots, alphabet, vocab_size=V)
  >>> decoded, score = jax.vmap(attack)(stacked_params, keys)            # one secret per model
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


def all_fillings(num_slots: int, alphabet_size: int) -> np.ndarray:
  """int32 [alphabet_size ** num_slots, num_slots]: every filling, in lexicographic order."""
  if num_slots < 1 or alphabet_size < 1:
    raise ValueError(f"need num_slots >= 1 and alphabet_size >= 1, got {num_slots}, {alphabet_size}")
  if alphabet_size ** num_slots > 10_000_000:
    raise ValueError(f"{alphabet_size}^{num_slots} candidates is too many to enumerate")
  return np.array(list(itertools.product(range(alphabet_size), repeat=num_slots)), np.int32).reshape(-1, num_slots)


def fill_template(template, slots, alphabet, fillings) -> np.ndarray:
  """Token rows [N, L]: the template with its slot positions set to alphabet[fillings] [N, S]."""
  template = np.asarray(template)
  fillings = np.atleast_2d(np.asarray(fillings))
  out = np.repeat(template[None], len(fillings), axis=0)
  out[:, np.asarray(slots)] = np.asarray(alphabet)[fillings]
  return out


def rank(scores, index: int) -> int:
  """1 + the number of candidates strictly more likely (lower score) than candidate `index`.

  Ties count in the canary's favour (a rank no worse than any ordering of the ties), so the
  exposure derived from it is the attacker's best case.
  """
  scores = np.asarray(scores, np.float64)
  if scores.ndim != 1 or not 0 <= index < scores.size:
    raise ValueError(f"need a 1-D score vector and an index in [0, {scores.size}), got {scores.shape}, {index}")
  return int(1 + np.sum(scores < scores[index]))


def exposure(scores, index: int) -> float:
  """log2(#candidates) - log2(rank of candidate `index`): 0 for the least likely candidate,
  log2(#candidates) for the most likely. `scores` are log-perplexities over the whole
  candidate space, the inserted canary among them."""
  scores = np.asarray(scores)
  return math.log2(scores.size) - math.log2(rank(scores, index))


def slot_accuracy(decoded, secret) -> float:
  """Fraction of slots decoded correctly (per-digit accuracy of a pin code)."""
  decoded, secret = np.asarray(decoded), np.asarray(secret)
  if decoded.shape != secret.shape:
    raise ValueError(f"decoded {decoded.shape} and secret {secret.shape} differ in shape")
  return float(np.mean(decoded == secret))


def make_relaxed_extractor(label_log_prob: Callable[[object, jax.Array], jax.Array], template, slots, alphabet, *,
                           vocab_size: int, steps: int = 200, learning_rate: float = 0.1,
                           restarts: int = 8) -> Callable[[object, jax.Array], tuple[jax.Array, jax.Array]]:
  """A jitted attack (params, key) -> (decoded filling int [S] (indices into `alphabet`), its score).

  Per slot, logits z [S, A] over the alphabet; the input is the template's one-hot rows with
  each slot row replaced by softmax(z) placed on the alphabet's token ids. Adam maximises
  `label_log_prob(params, input)` from `restarts` random starts (vmapped); each start is decoded
  by the argmax of its slots, and the decoding whose discrete input scores highest is returned
  with that score (the label's log-probability). vmap the result over stacked params and keys to
  attack an ensemble at once.

  Args:
    label_log_prob: (params, soft tokens [L, vocab_size]) -> the target label's log-probability.
    template: int [L] token ids (the slot positions' ids are ignored).
    slots: int [S] positions of the unknown tokens.
    alphabet: int [A] token ids a slot may take.
    vocab_size: width of the one-hot rows.
    steps, learning_rate, restarts: the optimisation; the key seeds the starts (the attacker's
      randomness: nothing private).
  """
  template = jnp.asarray(template, jnp.int32)
  slots = jnp.asarray(slots, jnp.int32)
  alphabet = jnp.asarray(alphabet, jnp.int32)
  if slots.ndim != 1 or alphabet.ndim != 1 or template.ndim != 1:
    raise ValueError("template, slots and alphabet must be 1-D")
  base = jax.nn.one_hot(template, vocab_size)
  scatter = jax.nn.one_hot(alphabet, vocab_size)  # [A, V]: alphabet weights -> vocabulary rows
  opt = optax.adam(learning_rate)

  def attack(params, key):
    def objective(z):
      return -label_log_prob(params, base.at[slots].set(jax.nn.softmax(z, -1) @ scatter))

    def optimise(z0):
      def step(carry, _):
        z, state = carry
        updates, state = opt.update(jax.grad(objective)(z), state, z)
        return (optax.apply_updates(z, updates), state), None
      (z, _), _ = jax.lax.scan(step, (z0, opt.init(z0)), None, length=steps)
      return z

    z0 = 0.1 * jax.random.normal(key, (restarts, slots.shape[0], alphabet.shape[0]))
    decoded = jnp.argmax(jax.vmap(optimise)(z0), -1)  # [R, S]
    scores = jax.vmap(lambda d: label_log_prob(params, base.at[slots].set(scatter[d])))(decoded)
    best = jnp.argmax(scores)
    return decoded[best], scores[best]

  return jax.jit(attack)


def enumeration_extraction(label_log_probs: Callable[[np.ndarray], np.ndarray], template, slots, alphabet, *,
                           batch_size: int = 2048) -> np.ndarray:
  """The filling (indices into `alphabet`) whose discrete input has the highest label
  log-probability, found by scoring every filling: the exact attack the relaxation approximates.

  Args:
    label_log_probs: token rows [N, L] -> label log-probabilities [..., N] (a leading axis of
      models is fine: the best filling of each is returned, [..., S]).
  """
  fillings = all_fillings(len(np.asarray(slots)), len(np.asarray(alphabet)))
  scores = np.concatenate([np.asarray(label_log_probs(fill_template(template, slots, alphabet,
                                                                     fillings[i:i + batch_size])))
                           for i in range(0, len(fillings), batch_size)], axis=-1)
  return fillings[np.argmax(scores, axis=-1)]
