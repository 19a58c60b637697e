"""Group-level clipping: clip the SUM of each group's per-example gradients as one unit.

For user- or speaker-level DP-SGD a neighbouring dataset differs in all the examples of
one group (add/remove one speaker), so the unit whose contribution must be bounded is the
group's summed gradient, not each example's:

    sum_g  min(1, C / ||S_g||) * S_g,      S_g = sum_{i: group_i = g}  w_i * g_i

with g_i the gradient of example i's loss and w_i in [0, 1] its weight (0 marks padding).
Adding or removing one group moves this sum by at most C in L2, whatever the group's size,
so the Gaussian mechanism on it with std sigma * C is add/remove-one-group DP at the usual
Poisson-subsampled accounting, with q the probability of sampling a GROUP.

Per-example gradients are formed with `jax.vmap(jax.grad(...))` and summed by group with
`jax.ops.segment_sum`; ghost clipping (`libs.dp.ghost`) does not apply here: it computes the
norm of each batch row's gradient from that row's activations, while a group's norm needs the
cross terms between the different examples of the group, which it does not form.

The group sums must be complete before clipping. A caller that splits a logical batch into
physical batches either keeps each group inside one physical batch (then the clipped sums of
the physical batches add up exactly) or accumulates the UNCLIPPED `group_grad_sums` over the
physical batches with fixed group ids and calls `clip_group_sums` once.

Example:
  >>> grads, norms = clipped_group_sum(per_example_loss, params, batch, group_ids, 8,
  ...                                  l2_clip_norm=1.0, example_weights=mask, return_norms=True)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from libs.dp.clipping import _batch_size, _check_clip_norm, clip_factor, example_weight_array, tree_l2_norm


def _check_num_groups(num_groups: int) -> int:
  if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups < 1:
    raise ValueError(f"num_groups must be a positive int (static: it fixes the shape), got {num_groups!r}")
  return int(num_groups)


def _check_group_ids(group_ids, size: int) -> jax.Array:
  ids = jnp.asarray(group_ids)
  if ids.shape != (size,):
    raise ValueError(f"group_ids must have shape ({size},), one id per example, got {ids.shape}")
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"group_ids must be integers, got dtype {ids.dtype}")
  return ids.astype(jnp.int32)


def group_grad_sums(loss_fn: Callable[..., Any], params: Any, batch: Any, group_ids: Any, num_groups: int,
                    example_weights: Any = None) -> Any:
  """The UNCLIPPED weighted sum of each group's per-example gradients, [num_groups, ...] per leaf.

  Args:
    loss_fn: `loss_fn(params, batch)` for a batch: per-example losses [B] (the convention of
      `ghost_clipped_grad`) or a scalar. It is called on each example alone, with a leading
      batch axis of size 1, under `jax.vmap`; the sum of its output is differentiated.
    params: the parameter pytree.
    batch: a pytree of arrays with a common leading batch axis B.
    group_ids: int [B], each example's group in [0, num_groups). Examples with an id outside
      that range (e.g. -1 for padding) belong to no group and contribute nothing.
    num_groups: G >= 1, static (it fixes the output shape).
    example_weights: [B] in [0, 1] (None: all 1); weight-0 examples contribute exactly
      nothing, even if their gradient is not finite. Invalid concrete weights raise
      ValueError; invalid traced ones make the compiled call fail (as in `clipped_grad`).

  Returns:
    A pytree like `params` whose leaves have a leading axis G: S_g = sum_{i in g} w_i g_i.
    Empty groups are zero.

  Example:
    >>> sums = group_grad_sums(loss_fn, params, batch, jnp.array([0, 0, 1, -1]), 2,
    ...                        example_weights=jnp.array([1., 1., 1., 0.]))
  """
  num_groups = _check_num_groups(num_groups)
  size = _batch_size(batch)
  ids = _check_group_ids(group_ids, size)
  weights = example_weight_array(example_weights, size)

  def example_loss(p, example):
    return jnp.sum(loss_fn(p, jax.tree.map(lambda x: x[None], example)))

  grads = jax.vmap(jax.grad(example_loss), in_axes=(None, 0))(params, batch)
  keep = weights > 0

  def segment(g):
    shape = (-1,) + (1,) * (g.ndim - 1)
    # `where`, not only a product: 0 * inf would be NaN for a padded example.
    weighted = jnp.where(keep.reshape(shape), g * weights.reshape(shape).astype(g.dtype), 0)
    return jax.ops.segment_sum(weighted, ids, num_groups, mode=jax.lax.GatherScatterMode.FILL_OR_DROP)

  return jax.tree.map(segment, grads)


def clip_group_sums(group_sums: Any, l2_clip_norm: float, *, return_norms: bool = False) -> Any:
  """Clips each group's summed gradient (leading axis G) to L2 norm C and sums over the groups.

  Args:
    group_sums: a pytree whose leaves have a common leading axis G (`group_grad_sums`).
    l2_clip_norm: the per-group L2 bound C >= 0; `float("inf")` disables clipping.
    return_norms: also return each group's unclipped norm, [G] float32.

  Returns:
    sum_g min(1, C / ||S_g||) S_g (a pytree like one group's sum), and the norms if asked.

  Example:
    >>> clipped = clip_group_sums(sums, 1.0)
  """
  _check_clip_norm(l2_clip_norm)
  norms = jax.vmap(tree_l2_norm)(group_sums)
  scale = clip_factor(norms, l2_clip_norm)

  def clipped_sum(s):
    return jnp.sum(s * scale.reshape((-1,) + (1,) * (s.ndim - 1)).astype(s.dtype), axis=0)

  grads = jax.tree.map(clipped_sum, group_sums)
  return (grads, norms) if return_norms else grads


def clipped_group_sum(loss_fn: Callable[..., Any], params: Any, batch: Any, group_ids: Any, num_groups: int,
                      l2_clip_norm: float, example_weights: Any = None, *, return_norms: bool = False) -> Any:
  """The sum over groups of each group's clipped gradient sum (group-level DP-SGD's query).

  `clip_group_sums(group_grad_sums(...))`; see those for the arguments. Every group must be
  complete in `batch`: clipping part of a group's examples here and the rest in another call
  would bound each part by C, so the group could move the total by a multiple of C.

  Args:
    loss_fn: per-example losses [B] (or a scalar) of a batch; see `group_grad_sums`.
    params: the parameter pytree.
    batch: a pytree with leading batch axis B.
    group_ids: int [B] in [0, num_groups); other ids (padding) contribute nothing.
    num_groups: G >= 1, static.
    l2_clip_norm: per-group L2 bound C >= 0 (inf: no clipping).
    example_weights: [B] in [0, 1]; 0 marks padding.
    return_norms: also return the unclipped group norms [G] (empty groups: 0).

  Returns:
    `grads` (like `params`), or `(grads, norms)`.

  Example:
    >>> fn = jax.jit(clipped_group_sum, static_argnums=(0, 4, 5))
    >>> grads = fn(loss_fn, params, batch, speaker_ids, 8, 1.0, mask)
  """
  _check_clip_norm(l2_clip_norm)
  sums = group_grad_sums(loss_fn, params, batch, group_ids, num_groups, example_weights)
  return clip_group_sums(sums, l2_clip_norm, return_norms=return_norms)
