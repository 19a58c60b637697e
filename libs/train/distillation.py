"""Knowledge distillation of language models, and counterfactual (role-reversed) teacher targets.

Pure JAX functions for a causal LM student trained on a teacher's next-token distributions
(Hinton et al. 2015), with the teacher-side modification of Gupta et al. (Findings of ACL
2022): the teacher's distribution on a text is mixed with its distribution on the text's role
reversal (every gendered word swapped for its counterpart).

Shapes: B sequences, T positions, V words. Everything is aligned per position: position t's
logits and teacher distribution predict `targets[:, t]`; for a causal LM over `tokens` pass
`logits[:, :-1]`, `teacher_probs[:, :-1]`, `tokens[:, 1:]` and `mask = tokens[:, 1:] > 0`.

Example:
  >>> probs, probs_rev = jax.nn.softmax(teacher(x)), jax.nn.softmax(teacher(swap_ids[x]))
  >>> gendered = gendered_prefix(x, swap_ids)                        # [B, T] bool
  >>> target = counterfactual_teacher_probs(probs, probs_rev, gendered, mix=0.5)
  >>> loss = distillation_loss(student(x)[:, :-1], target[:, :-1], x[:, 1:], x[:, 1:] > 0,
  ...                          alpha=0.3, temperature=2.0)        # [B]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_TINY = 1e-30  # Below any probability a float32 softmax returns but a normal float32 (log stays finite).


def tempered(probs: jax.Array, temperature: float) -> jax.Array:
  """The distribution `probs` at temperature T: softmax(log(probs) / T), i.e. probs^(1/T), renormalized.

  Zero probabilities stay zero. At T = 1 this is `probs` (up to rounding).

  Example:
    >>> tempered(jnp.array([0.8, 0.2]), 2.0)        # sqrt, renormalized: [0.667, 0.333]
  """
  if temperature == 1.0:
    return probs
  p = jnp.power(jnp.maximum(probs, 0.0), 1.0 / temperature)
  return p / jnp.maximum(jnp.sum(p, axis=-1, keepdims=True), _TINY)


def distillation_loss(student_logits: jax.Array, teacher_probs: jax.Array, targets: jax.Array, mask: jax.Array, *,
                      alpha: float, temperature: float) -> jax.Array:
  """Per-sequence distillation loss [B]: the mean over the masked positions of

    alpha * CE(targets, student) + (1 - alpha) * T^2 * KL(teacher_T || student_T)

  where `teacher_T` is the teacher's distribution at temperature T (`tempered`) and `student_T`
  is softmax(student_logits / T). The soft term is the KL divergence, not the cross-entropy to
  the soft targets: the two differ by the teacher's entropy, a constant for the student (same
  gradients), and the KL is 0 when the student matches the teacher. The T^2 factor keeps the
  soft term's gradients on the hard term's scale as T changes (Hinton et al. 2015).

  Args:
    student_logits: [B, T, V] the student's logits.
    teacher_probs: [B, T, V] the teacher's (possibly modified) distribution at temperature 1;
      treated as a constant (no gradient flows into it).
    targets: [B, T] int, the observed next tokens.
    mask: [B, T] which positions count (bool or 0/1). A row without any gives loss 0.
    alpha: weight of the hard-label cross-entropy, in [0, 1]; 1 is plain next-token CE.
    temperature: the softening temperature T > 0.

  Returns:
    [B] float32 losses.

  Example:
    >>> distillation_loss(logits[:, :-1], probs[:, :-1], x[:, 1:], x[:, 1:] > 0, alpha=0.3, temperature=2.0)
  """
  logits = student_logits.astype(jnp.float32)
  log_s = jax.nn.log_softmax(logits, axis=-1)
  ce = -jnp.take_along_axis(log_s, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  q = jax.lax.stop_gradient(tempered(teacher_probs.astype(jnp.float32), temperature))
  log_s_t = jax.nn.log_softmax(logits / temperature, axis=-1)
  q_log_q = jnp.where(q > 0, q * jnp.log(jnp.maximum(q, _TINY)), 0.0)
  kl = jnp.sum(q_log_q - q * log_s_t, axis=-1)
  per_position = alpha * ce + (1.0 - alpha) * temperature ** 2 * kl
  m = mask.astype(jnp.float32)
  return jnp.sum(per_position * m, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)


def gendered_prefix(tokens: jax.Array, swap_ids: jax.Array) -> jax.Array:
  """[..., T] bool: whether the prefix tokens[..., :t + 1] holds a word that role reversal changes.

  For a causal LM, position t predicts token t + 1 from tokens <= t, so this marks the positions
  whose context (not their target) is gendered: a cumulative OR over the sequence.

  Args:
    tokens: [..., T] int ids.
    swap_ids: [V] int, the role-reversal permutation (`Vocabulary.swap_ids`).

  Example:
    >>> gendered_prefix(vocab_ids("<bos> the nurse said that she"), vocab.swap_ids)
    [False, False, False, False, False, True]
  """
  changed = jnp.asarray(swap_ids)[tokens] != tokens
  return jnp.cumsum(changed.astype(jnp.int32), axis=-1) > 0


def counterfactual_teacher_probs(probs: jax.Array, probs_reversed: jax.Array, gendered: jax.Array, *, mix: float,
                                 swap_ids: jax.Array | None = None) -> jax.Array:
  """The teacher's distribution perturbed towards its role-reversed prediction.

    p'(. | x) = (1 - mix) * p(. | x) + mix * r(. | x)   where `gendered` is True,
    p'(. | x) = p(. | x)                                 elsewhere (exactly),

  with r = p(. | x_reversed), the teacher's distribution on the role-reversed context, or, when
  `swap_ids` is given, that distribution mapped back to the original's words:
  r(w | x) = p(swap(w) | x_reversed). The reversed context predicts the reversed continuation
  ("my sister ... and" -> "she" becomes "my brother ... and" -> "he"); mapped back, the mixture
  keeps the context's own gender agreement and averages only the association between the rest of
  the context and the gender (Gupta et al. 2022 map counterfactual tokens back the same way).
  Unmapped, it mixes the two worlds' words. With the mapping, a role-neutral context
  (x_reversed = x) still changes: p'(he) and p'(she) both move towards their average, so pass
  `gendered` all True to apply it there too; every non-gendered word keeps the teacher's
  probability on such a context. Both forms sum to 1 (swap is a permutation).

  Args:
    probs: [..., T, V] the teacher's next-token distribution on x.
    probs_reversed: [..., T, V] its distribution on the role reversal of x.
    gendered: [..., T] bool, where to mix; usually `gendered_prefix(x, swap_ids)`: the positions
      whose prefix x[:t + 1] holds a gendered word (elsewhere the reversal is x itself).
    mix: the counterfactual's weight, in [0, 1].
    swap_ids: optional [V] role-reversal permutation mapping `probs_reversed` back.

  Returns:
    [..., T, V] distributions.

  Example:
    >>> p = counterfactual_teacher_probs(probs, probs_rev, gendered_prefix(x, swap), mix=0.5)
    >>> p_mapped = counterfactual_teacher_probs(probs, probs_rev, jnp.ones(x.shape, bool), mix=0.5,
    ...                                         swap_ids=swap)
  """
  reversed_ = probs_reversed if swap_ids is None else jnp.take(probs_reversed, jnp.asarray(swap_ids), axis=-1)
  mixed = (1.0 - mix) * probs + mix * reversed_
  return jnp.where(gendered[..., None], mixed, probs)
