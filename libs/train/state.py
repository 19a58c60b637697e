"""The training state: one frozen dataclass registered as a pytree.

Example:
  >>> state = TrainState.create(params, optax.adam(1e-3))
  >>> state = state.apply_gradients(grads, optimizer)
"""

from __future__ import annotations

from typing import Any

import flax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Step counter, parameters and optimizer state (DP noise keys live in `opt_state`).

  The optimizer itself is not stored: it is static configuration that the step function
  binds with `functools.partial`, so the state is pure data that orbax can save.
  """
  step: jnp.ndarray
  params: Any
  opt_state: Any

  @classmethod
  def create(cls, params, optimizer: optax.GradientTransformation) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

  def apply_gradients(self, grads, optimizer: optax.GradientTransformation) -> "TrainState":
    updates, opt_state = optimizer.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state)
