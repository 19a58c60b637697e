"""Prediction sensitivity and accumulated prediction sensitivity (Krishna et al. 2022).

How much does one prediction depend on a protected attribute? The accumulated prediction
sensitivity of a classifier f at an input x is

  APS(x) = sum_c v_c sum_i |df_c / dx_i| w_i(x),

the sensitivity of each output probability f_c to each input feature x_i, weighted by w_i, how
much feature i encodes the protected attribute, and by v_c over the outputs. The weights w come
from a protected-status model g (a classifier of the protected attribute): w_i = |dg/dx_i|,
normalized to sum to 1 over the input. For text the features are the input positions: the
sensitivity to position t is the L1 norm, over the embedding dimensions, of the gradient with
respect to the token embedding at t (each model differentiates through its own embedding of the
same tokens, so positions are the feature space the two models share). Padding positions get
weight 0.

`position_sensitivity` computes |df_c / de_t|_1 for a batch with `jax.jacrev` (a full Jacobian
per example, cheap for a handful of classes); `accumulated_prediction_sensitivity` combines it
with the weights. Tests compare the Jacobian with finite differences.

Example:
  >>> s_f = position_sensitivity(lambda e, t: jax.nn.softmax(f(e, t)), embeddings_f, tokens)  # [B, C, T]
  >>> s_g = position_sensitivity(lambda e, t: jax.nn.softmax(g(e, t))[..., 1:], embeddings_g, tokens)
  >>> aps = accumulated_prediction_sensitivity(s_f, feature_weights(s_g[:, 0], mask))  # [B]
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def position_sensitivity(fn: Callable[..., jax.Array], embeddings: jax.Array, *args: jax.Array) -> jax.Array:
  """|d fn(e)_c / d e_t|_1 for each example, output c and position t.

  Args:
    fn: `fn(embeddings [B, T, D], *args) -> outputs [B, C]`, each example's outputs depending on
      its own inputs only (no batch statistics).
    embeddings: [B, T, D].
    *args: per-example inputs that are not differentiated (e.g. the token ids [B, T] that give
      the padding mask); fn sees one example at a time, with a batch axis of 1.

  Returns:
    [B, C, T]: the L1 norm over D of the Jacobian of output c with respect to position t.
  """
  def one(e, *a):  # [T, D] -> [C, T, D]
    return jax.jacrev(lambda e1: fn(e1[None], *(x[None] for x in a))[0])(e)
  jac = jax.vmap(one)(embeddings, *args)
  return jnp.sum(jnp.abs(jac), axis=-1)


def feature_weights(sensitivity: jax.Array, mask: jax.Array) -> jax.Array:
  """w_t = s_t / sum_t s_t over the unmasked positions ([B, T] -> [B, T]); padding gets 0, and an
  example with no sensitivity at all gets uniform weights over its positions (not 0/0)."""
  s = jnp.abs(sensitivity) * mask
  total = jnp.sum(s, axis=-1, keepdims=True)
  uniform = mask / jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1.0)
  return jnp.where(total > 0, s / jnp.where(total > 0, total, 1.0), uniform)


def accumulated_prediction_sensitivity(sensitivity: jax.Array, weights: jax.Array,
                                       output_weights: jax.Array | None = None) -> jax.Array:
  """APS per example: sum_c v_c sum_t sensitivity[c, t] w_t.

  Args:
    sensitivity: [B, C, T], from `position_sensitivity` of the task model's probabilities.
    weights: [B, T], the protected-attribute weights (`feature_weights`).
    output_weights: [C] or [B, C]; None: uniform 1/C.

  Returns:
    [B].
  """
  c = sensitivity.shape[-2]
  v = jnp.full((c,), 1.0 / c) if output_weights is None else jnp.asarray(output_weights)
  per_output = jnp.einsum("bct,bt->bc", sensitivity, weights)
  return jnp.sum(per_output * v, axis=-1)


def relative_prediction_sensitivity(sensitivity: jax.Array, weights: jax.Array, mask: jax.Array,
                                    output_weights: jax.Array | None = None) -> jax.Array:
  """APS divided by the same sum with uniform weights over the unmasked positions, per example.

  Not in Krishna et al.: their APS scales with the size of the gradients, so a confident model
  (saturated softmax: small gradients everywhere) scores low however much of its sensitivity
  sits on the protected positions. This ratio is scale-free: 1 when the protected-attribute
  weights pick positions of average sensitivity, > 1 when the prediction depends more on the
  positions that encode the attribute. An example with no sensitivity at all gets 1.
  """
  aps = accumulated_prediction_sensitivity(sensitivity, weights, output_weights)
  uniform = mask / jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1.0)
  base = accumulated_prediction_sensitivity(sensitivity, uniform, output_weights)
  return jnp.where(base > 0, aps / jnp.where(base > 0, base, 1.0), 1.0)
