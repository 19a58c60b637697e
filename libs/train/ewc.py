"""Elastic weight consolidation (EWC; Kirkpatrick et al. 2017).

Fine-tuning a model on new data (e.g. an ASR model on its worst cohorts, Trinh et al. 2022)
without forgetting what it knew: a quadratic penalty pulls each parameter back towards its
value before fine-tuning (the anchor), in proportion to how much the old data determined it,
measured by the diagonal of the Fisher information:

    penalty(params) = 0.5 * strength * sum_k F_k * (params_k - anchor_k)^2.

`fisher_diagonal` estimates F as the empirical Fisher: the mean over real examples of the
squared per-example gradient of the per-example loss (NLL), with per-example gradients from
`jax.vmap(jax.grad(...))` over examples given a leading batch axis of 1 (as
`libs.dp.clipping` does). `with_ewc` adds the penalty to any
`loss_fn(params, batch, key) -> (loss, aux)`, e.g. for `libs.train.steps.make_train_step`.

Example:
  >>> example_loss = lambda p, ex: jnp.sum(evaluate.per_example_nll(model, p, ex, None, train=False))
  >>> fisher = fisher_diagonal(example_loss, params, old_batches, max_examples=2000)
  >>> loss_fn = with_ewc(evaluate.make_loss_fn(model, None), params, fisher, strength=100.0)
  >>> step = steps.make_train_step(loss_fn, optimizer)   # aux reports "ewc_penalty"
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]


def _leaf_paths(tree: Any) -> list[str]:
  return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _check_like(tree: Any, params: Any, name: str) -> None:
  """Raises ValueError unless `tree` has the structure and leaf shapes of `params`."""
  if jax.tree.structure(tree) != jax.tree.structure(params):
    ours, theirs = set(_leaf_paths(tree)), set(_leaf_paths(params))
    detail = ""
    if ours != theirs:
      missing, extra = sorted(theirs - ours), sorted(ours - theirs)
      detail = f" (missing leaves: {missing[:5]}; unexpected leaves: {extra[:5]})"
    raise ValueError(f"{name} must be structured like params{detail}: got {jax.tree.structure(tree)}, "
                     f"expected {jax.tree.structure(params)}")
  for (path, x), p in zip(jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree.leaves(params)):
    if jnp.shape(x) != jnp.shape(p):
      raise ValueError(f"{name}{jax.tree_util.keystr(path)} has shape {jnp.shape(x)}, but the parameter has "
                       f"shape {jnp.shape(p)}")


def _check_fisher_values(fisher: Any) -> None:
  """Raises ValueError naming the first leaf of `fisher` that is negative or not finite."""
  for path, x in jax.tree_util.tree_flatten_with_path(fisher)[0]:
    x = np.asarray(x, np.float64)
    bad = ~np.isfinite(x) | (x < 0)
    if bad.any():
      where = np.unravel_index(int(np.flatnonzero(bad)[0]), x.shape) if x.ndim else ()
      raise ValueError(f"fisher{jax.tree_util.keystr(path)} must be finite and >= 0 everywhere: "
                       f"{int(bad.sum())} entries are not (first at index {tuple(int(k) for k in where)}: "
                       f"{x[where]})")


def _check_strength(strength: float) -> float:
  try:
    value = float(strength)
  except (TypeError, ValueError) as e:
    raise ValueError(f"EWC strength must be a finite number >= 0, got {strength!r}") from e
  if not (math.isfinite(value) and value >= 0):  # Also rejects NaN.
    raise ValueError(f"EWC strength must be a finite number >= 0, got {strength!r}")
  return value


def ewc_penalty(params: Any, anchor_params: Any, fisher: Any, strength: float | jax.Array) -> jax.Array:
  """`0.5 * strength * sum F * (params - anchor)^2` over all leaves, in float32 (or wider).

  Pure and differentiable in `params` (and in `strength`); zero at the anchor. Each leaf is
  computed in float32, or float64 for float64 params (with x64 enabled). The three pytrees
  must share one structure (ValueError otherwise).

  Args:
    params: current parameters.
    anchor_params: parameters to stay close to (before fine-tuning).
    fisher: per-parameter importances (`fisher_diagonal`), >= 0.
    strength: lambda >= 0.

  Returns:
    A float32 scalar (float64 if any parameter is float64).

  Example:
    >>> ewc_penalty(params, params, fisher, 10.0)
    Array(0., dtype=float32)
  """
  _check_like(anchor_params, params, "anchor_params")
  _check_like(fisher, params, "fisher")
  def term(p, a, f):
    dtype = jnp.promote_types(jnp.result_type(p), jnp.float32)  # bf16 -> f32; f64 stays f64.
    return jnp.sum(jnp.asarray(f, dtype) * jnp.square(jnp.asarray(p, dtype) - jnp.asarray(a, dtype)))

  terms = jax.tree.leaves(jax.tree.map(term, params, anchor_params, fisher))
  total = sum(terms[1:], terms[0]) if terms else jnp.zeros((), jnp.float32)
  return 0.5 * jnp.asarray(strength, total.dtype) * total


def with_ewc(loss_fn: LossFn, anchor_params: Any, fisher: Any, strength: float) -> LossFn:
  """Wraps `loss_fn(params, batch, key) -> (loss, aux)` into one that adds the EWC penalty.

  The returned function computes `loss + ewc_penalty(params, anchor_params, fisher, strength)`
  and reports the penalty in aux as "ewc_penalty". The anchor and the Fisher diagonal are
  closed over as constants (no gradient flows to them).

  Args:
    loss_fn: the task loss.
    anchor_params: parameters to stay close to; its structure defines the params' structure.
    fisher: Fisher diagonal structured like `anchor_params`, finite and >= 0.
    strength: lambda, a finite float >= 0 (0 leaves the loss unchanged).

  Returns:
    `loss_fn`'s counterpart with the penalty.

  Raises:
    ValueError: on a bad strength, or a Fisher leaf that is missing, misshapen, negative or
      not finite (the message names the leaf path).

  Example:
    >>> step = make_train_step(with_ewc(loss_fn, pretrained, fisher, 50.0), optimizer)
  """
  strength = _check_strength(strength)
  _check_like(fisher, anchor_params, "fisher")
  _check_fisher_values(fisher)
  anchor = jax.tree.map(jnp.asarray, anchor_params)
  fisher = jax.tree.map(lambda f: jnp.asarray(f, jnp.float32), fisher)

  def ewc_loss_fn(params, batch, key):
    loss, aux = loss_fn(params, batch, key)
    penalty = ewc_penalty(params, anchor, fisher, strength)
    return loss + penalty, {**aux, "ewc_penalty": penalty}

  return ewc_loss_fn


def _batch_size(batch: dict) -> int:
  sizes = {np.shape(x)[0] for x in jax.tree.leaves(batch) if np.ndim(x) > 0}
  if len(sizes) != 1:
    raise ValueError(f"fisher_diagonal: every batch entry needs the same leading batch axis, got sizes "
                     f"{sorted(sizes)}")
  return sizes.pop()


def fisher_diagonal(example_loss_fn: Callable[..., jax.Array], params: Any, batches: Iterable[dict], *,
                    key: jax.Array | None = None, max_examples: int | None = None,
                    microbatch_size: int | None = None) -> Any:
  """Empirical Fisher diagonal: mean over real examples of the squared per-example gradient.

      F = sum_b w_b * g_b^2 / sum_b w_b,    g_b = grad_params example_loss_fn(params, example_b),

  where each example is a batch of one (every entry with a leading axis of size 1) and
  `w_b = batch["weights"][b]` marks real (1) and padding (0) examples. Padding contributes
  nothing, even when its gradient is NaN or inf (`jnp.where`, not a product). Squares and sums
  are float32 whatever the params' dtype. One jitted program per batch shape.

  Args:
    example_loss_fn: `(params, example) -> scalar` loss of one example (e.g. its NLL); with a
      `key`, `(params, example, example_key) -> scalar`, where `example_key` is `key` folded
      with the batch number and then the example's row (e.g. to sample labels from the model
      for the true Fisher, or for dropout).
    params: the parameters at which to estimate F (the EWC anchor).
    batches: iterable of dicts of arrays with a leading batch axis, including "weights" [B].
    key: optional PRNG key, see `example_loss_fn`.
    max_examples: stop after this many real examples (later ones of a batch are masked out).
    microbatch_size: if set, per-example gradients are computed this many at a time (a
      `lax.scan`), bounding memory to `microbatch_size` gradients; a batch that it does not
      divide is padded with weight-0 examples.

  Returns:
    A float32 pytree structured like `params`.

  Raises:
    ValueError: no real example, a batch without "weights", bad `max_examples` or
      `microbatch_size`, or a non-finite Fisher entry (naming the leaf: a real example's
      gradient was not finite).

  Example:
    >>> loss = lambda p, ex: -jnp.sum(jax.nn.log_softmax(model.apply({"params": p}, ex["x"]))
    ...                              * jax.nn.one_hot(ex["y"], 10))
    >>> fisher = fisher_diagonal(loss, params, batches, max_examples=1000)
  """
  if max_examples is not None and max_examples < 1:
    raise ValueError(f"fisher_diagonal: max_examples must be >= 1, got {max_examples}")
  if microbatch_size is not None and microbatch_size < 1:
    raise ValueError(f"fisher_diagonal: microbatch_size must be >= 1, got {microbatch_size}")
  with_key = key is not None

  def one_example(p, example, example_key):
    example = jax.tree.map(lambda x: x[None], example)
    return example_loss_fn(p, example, example_key) if with_key else example_loss_fn(p, example)

  per_example_grad = jax.vmap(jax.grad(one_example), in_axes=(None, 0, 0))

  def weighted_square_sum(p, batch, weights, keys):
    grads = per_example_grad(p, batch, keys)
    keep = weights > 0

    def reduce(g):
      g = g.astype(jnp.float32)
      w = weights.reshape((-1,) + (1,) * (g.ndim - 1))
      return jnp.sum(jnp.where(keep.reshape(w.shape), w * jnp.square(g), 0.0), axis=0)

    return jax.tree.map(reduce, grads)

  @jax.jit
  def batch_sum(p, batch, weights, keys):
    size = weights.shape[0]
    if microbatch_size is None or microbatch_size >= size:
      return weighted_square_sum(p, batch, weights, keys)
    pad = -size % microbatch_size
    if pad:  # Copies of the first rows, with weight 0: finite inputs, and excluded anyway.
      batch, keys = jax.tree.map(lambda x: jnp.concatenate([x, x[:pad]]), (batch, keys))
      weights = jnp.concatenate([weights, jnp.zeros((pad,), weights.dtype)])
    chunks = (size + pad) // microbatch_size
    split = lambda x: x.reshape((chunks, microbatch_size) + x.shape[1:])

    def body(acc, chunk):
      return jax.tree.map(jnp.add, acc, weighted_square_sum(p, *chunk)), None

    zero = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.float32), p)
    total, _ = jax.lax.scan(body, zero, jax.tree.map(split, (batch, weights, keys)))
    return total

  total, count = None, 0.0
  seen = 0  # Real examples used so far.
  for batch_index, batch in enumerate(batches):
    if "weights" not in batch:
      raise ValueError(f"fisher_diagonal: batch {batch_index} has no 'weights' entry marking real (1) and "
                       f"padding (0) examples; keys: {sorted(batch)}")
    size = _batch_size(batch)
    weights = np.asarray(batch["weights"], np.float32).reshape(-1)
    if weights.shape != (size,):
      raise ValueError(f"fisher_diagonal: batch {batch_index} 'weights' must have shape ({size},), got "
                       f"{np.shape(batch['weights'])}")
    if not np.all((weights >= 0) & np.isfinite(weights)):
      raise ValueError(f"fisher_diagonal: batch {batch_index} 'weights' must be finite and >= 0")
    if max_examples is not None:
      real = np.cumsum(weights > 0)
      weights = np.where(seen + real <= max_examples, weights, 0.0).astype(np.float32)
    n_real = int(np.sum(weights > 0))
    if n_real == 0:
      if max_examples is not None and seen >= max_examples:
        break
      continue
    if with_key:
      batch_key = jax.random.fold_in(key, batch_index)
      keys = jax.vmap(lambda r, k=batch_key: jax.random.fold_in(k, r))(jnp.arange(size))
    else:
      keys = jnp.zeros((size,), jnp.uint32)  # Unused placeholder with a batch axis.
    sums = batch_sum(params, batch, jnp.asarray(weights), keys)
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    count += float(np.sum(weights))
    seen += n_real
    if max_examples is not None and seen >= max_examples:
      break
  if total is None or count <= 0:
    raise ValueError("fisher_diagonal: the batches held no real example (every 'weights' entry was 0, or "
                     "there was no batch)")
  fisher = jax.tree.map(lambda s: s / count, total)
  for path, x in jax.tree_util.tree_flatten_with_path(fisher)[0]:
    if not bool(jnp.all(jnp.isfinite(x))):
      raise ValueError(f"fisher_diagonal: fisher{jax.tree_util.keystr(path)} is not finite: the gradient of "
                       "some real (weight > 0) example is NaN or inf")
  return fisher
