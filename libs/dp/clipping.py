"""Per-example gradient clipping as a function transform, like `jax.grad`.

`clipped_grad(loss_fn, l2_clip_norm=C)(params, *batch)` returns the SUM over the
batch of per-example gradients, each rescaled to L2 norm at most C:

    sum_i  w_i * min(1, C / ||g_i||) * g_i,      g_i = grad of loss_fn(params, *example_i)

where `loss_fn(params, *batch)` computes the loss of a batch and is called on each
example separately with a leading batch axis of size 1 (under `jax.vmap`), so any flax
model that takes batches works unchanged. Per-example weights `w_i` in [0, 1] mark
padding: examples with weight 0 contribute exactly nothing (even if their gradient is
not finite), which lets Poisson-sampled batches be padded to a fixed shape. Weights
outside [0, 1] (or NaN) are an error: a weight of 2 would double the sensitivity of the
sum, voiding the DP guarantee. Concrete weights raise a ValueError at the call; traced
ones (under `jax.jit`) make the compiled call fail when it runs (`_check_example_weights`).
`microbatch_size` processes the batch in chunks (a `lax.scan`), trading speed for memory.

See `libs.dp.ghost` for clipping without materializing per-example gradients.

Example:
  >>> grad_fn = clipped_grad(loss_fn, l2_clip_norm=1.0, return_norms=True)
  >>> summed, norms = grad_fn(params, features, labels, example_weights=mask)
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def tree_l2_norm(tree: Any) -> jax.Array:
  """Global L2 norm of a pytree, accumulated in float32."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def clip_factor(norms: jax.Array, l2_clip_norm: float) -> jax.Array:
  """min(1, C / norm), with C = inf -> 1 and C = 0 (or norm = 0 with C = 0) -> 0."""
  if math.isinf(l2_clip_norm):
    return jnp.ones_like(norms)
  safe = jnp.where(norms > 0, norms, 1.0)
  return jnp.where(norms > l2_clip_norm, l2_clip_norm / safe, 1.0 if l2_clip_norm > 0 else 0.0)


def _check_clip_norm(l2_clip_norm: float) -> None:
  if not (l2_clip_norm >= 0):  # Also rejects NaN.
    raise ValueError(f"l2_clip_norm must be >= 0 (inf for no clipping), got {l2_clip_norm}")


_SHOWN_BAD_WEIGHTS = 5  # Offending weights quoted in the error message.


def _raise_on_bad_weights(weights) -> None:
  """Raises ValueError naming the weights outside [0, 1] (NaN included), if any."""
  w = np.asarray(weights, np.float32).reshape(-1)
  bad = np.flatnonzero(~((w >= 0) & (w <= 1)))  # NaN fails both comparisons.
  if bad.size:
    shown = ", ".join(f"example_weights[{i}]={w[i]}" for i in bad[:_SHOWN_BAD_WEIGHTS])
    more = f" and {bad.size - _SHOWN_BAD_WEIGHTS} more" if bad.size > _SHOWN_BAD_WEIGHTS else ""
    raise ValueError(f"example_weights must lie in [0, 1] (NaN is not allowed): a weight above 1 multiplies "
                     f"the sensitivity of the clipped sum, voiding the DP guarantee; got {shown}{more}")


def _weights_check_on_host(weights) -> np.ndarray:
  """`_raise_on_bad_weights` as a pure callback: returns a float32 zero if `weights` are valid."""
  _raise_on_bad_weights(weights)
  return np.zeros((), np.float32)


def example_weight_array(example_weights, size: int) -> jax.Array:
  """Per-example weights as a float32 [size] array (ones when None), checked to lie in [0, 1].

  The shape must be exactly [size]: a [B, 1] mask would broadcast against [B] losses.
  """
  weights = (jnp.ones((size,), jnp.float32) if example_weights is None
             else jnp.asarray(example_weights, jnp.float32))
  if weights.shape != (size,):
    raise ValueError(f"example_weights must have shape ({size},), got {weights.shape}")
  if example_weights is not None:
    weights = _check_example_weights(example_weights, weights)
  return weights


def _check_example_weights(example_weights, weights: jax.Array) -> jax.Array:
  """Rejects per-example weights outside [0, 1] (or NaN).

  Args:
    example_weights: the weights as the caller passed them.
    weights: the same as a float32 [B] array, as used by the transform.

  Returns:
    `weights`, to be used instead of the argument: when traced, it carries the check.

  Raises:
    ValueError: now, if `example_weights` is concrete (NumPy, list, non-traced jax array)
      and invalid. Invalid traced weights make the compiled call fail when it runs, with
      this message (JAX raises it as a `jax.errors.JaxRuntimeError` or, from its C++
      dispatch path, as a ValueError).
  """
  if not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(example_weights)):
    _raise_on_bad_weights(example_weights)  # On the host: no device round trip for NumPy.
    return weights
  # Traced (every trainer jits): a host callback that raises, so that the step itself fails
  # whatever the caller does with the result. Poisoning the sum with NaN would stop a run
  # only where a metric computed from it is checked, and the DP-SGD trainer of
  # projects/pate_asr checks none per step: NaN parameters would just decode into a
  # garbage WER. The callback sits in the branch of a cond taken for invalid weights only,
  # so valid ones cost a reduction and the cond (on GPU, a read-back of its predicate),
  # never a call into Python. It is a `pure_callback` whose zero is added to the weights,
  # so it cannot be pruned while any gradient is used; a `debug.callback` (a side effect)
  # would also send every call through JAX's slower Python dispatch. Under a vmap that
  # batches the weights the cond becomes a select and the callback runs on every call,
  # re-checking on the host. Costs: XLA's persistent compilation cache does not store
  # programs with host callbacks, and on CPU they run synchronously (+0.3 ms a call for
  # the tiny transducer's ghost step).
  valid = jnp.all((weights >= 0) & (weights <= 1))
  check = lambda w: jax.pure_callback(_weights_check_on_host, jax.ShapeDtypeStruct((), jnp.float32), w,
                                      vmap_method="sequential")
  # stop_gradient: the check has no derivative, and needs none; the weights keep theirs.
  zero = jax.lax.cond(valid, lambda w: jnp.zeros((), jnp.float32), check, jax.lax.stop_gradient(weights))
  return weights + zero


def _batch_size(batch) -> int:
  sizes = {x.shape[0] for x in jax.tree.leaves(batch) if hasattr(x, "shape") and x.ndim > 0}
  if len(sizes) != 1:
    raise ValueError(f"every batch argument needs the same leading batch axis, got sizes {sorted(sizes)}")
  return sizes.pop()


def clipped_grad(
    loss_fn: Callable[..., Any],
    *,
    l2_clip_norm: float,
    has_aux: bool = False,
    microbatch_size: int | None = None,
    return_norms: bool = False,
) -> Callable[..., Any]:
  """Transforms `loss_fn(params, *batch)` into the sum of clipped per-example gradients.

  Args:
    loss_fn: loss of a batch; returns a scalar (or `(scalar, aux)` with `has_aux`).
    l2_clip_norm: per-example L2 bound C >= 0; `float("inf")` disables clipping.
    has_aux: whether `loss_fn` returns auxiliary outputs (returned per example).
    microbatch_size: if set, the batch is processed in chunks of this many examples
      (must divide the batch size).
    return_norms: also return each example's unclipped gradient norm, [B].

  Returns:
    `grad_fn(params, *batch, example_weights=None)` returning `grads`, or a tuple
    `(grads, aux)` / `(grads, norms)` / `(grads, aux, norms)`. `example_weights` [B] must
    lie in [0, 1]: invalid concrete weights raise ValueError, invalid traced ones make the
    compiled call fail when it runs (see `_check_example_weights`).
  """
  _check_clip_norm(l2_clip_norm)
  if microbatch_size is not None and microbatch_size < 1:
    raise ValueError(f"microbatch_size must be >= 1, got {microbatch_size}")

  def example_loss(params, example):
    return loss_fn(params, *jax.tree.map(lambda x: x[None], example))

  per_example_grad = jax.vmap(jax.grad(example_loss, has_aux=has_aux), in_axes=(None, 0))

  def clipped_sum(params, batch, weights):
    out = per_example_grad(params, batch)
    grads, aux = out if has_aux else (out, None)
    norms = jax.vmap(tree_l2_norm)(grads)
    scale = clip_factor(norms, l2_clip_norm) * weights
    keep = weights > 0

    def weighted_sum(g):
      s = scale.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype)
      # `where`, not only a product: 0 * inf would be NaN for a padded example.
      return jnp.sum(jnp.where(keep.reshape(s.shape), g * s, 0), axis=0)

    return jax.tree.map(weighted_sum, grads), aux, norms

  def grad_fn(params, *batch, example_weights=None):
    size = _batch_size(batch)
    weights = example_weight_array(example_weights, size)
    if microbatch_size is None or microbatch_size >= size:
      grads, aux, norms = clipped_sum(params, batch, weights)
    else:
      if size % microbatch_size:
        raise ValueError(f"microbatch_size={microbatch_size} must divide the batch size {size}")
      chunks = size // microbatch_size
      split = lambda x: x.reshape((chunks, microbatch_size) + x.shape[1:])
      zero = jax.tree.map(jnp.zeros_like, params)

      def body(acc, chunk):
        b, w = chunk
        g, a, n = clipped_sum(params, b, w)
        return jax.tree.map(jnp.add, acc, g), (a, n)

      grads, (aux, norms) = jax.lax.scan(body, zero, (jax.tree.map(split, batch), split(weights)))
      merge = lambda x: x.reshape((size,) + x.shape[2:])
      norms = merge(norms)
      aux = jax.tree.map(merge, aux) if has_aux else None
    result = (grads,) + ((aux,) if has_aux else ()) + ((norms,) if return_norms else ())
    return result[0] if len(result) == 1 else result

  return grad_fn
