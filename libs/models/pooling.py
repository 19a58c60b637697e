"""Pooling whose gradient is finite on every backend.

`jnp.max`'s gradient is `g * [x == max] / count([x == max])`: it finds the maximum's
position by comparing the input with the output again. When XLA recomputes the input in
another fusion with different rounding (which depends on the CPU's vector instructions and
the optimisation level, so it differs between machines), no position compares equal, the
count is 0 and the gradient is inf or NaN. This is how DP-FedAvg's intent model turned NaN
in round 4 on some machines and not on others. `max_pool` gathers at `argmax` instead: the
gradient goes to the one position argmax picks, with no division at all.

Example:
  >>> pooled = max_pool(hidden, axis=-2)   # [..., T, D] -> [..., D]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def max_pool(x: jax.Array, axis: int = -2) -> jax.Array:
  """max over `axis`; the gradient is one-hot at the (first) argmax position.

  Args:
    x: any array.
    axis: the axis to reduce.

  Returns:
    `x` with `axis` removed, equal to `jnp.max(x, axis)` (for inputs without NaN).

  Example:
    >>> jax.grad(lambda x: max_pool(x, 0))(jnp.array([1.0, 3.0, 3.0]))
    Array([0., 1., 0.], dtype=float32)
  """
  idx = jax.lax.stop_gradient(jnp.argmax(x, axis=axis, keepdims=True))
  return jnp.squeeze(jnp.take_along_axis(x, idx, axis=axis), axis)
