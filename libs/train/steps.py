"""Step builders: pure `train_step(state, batch, key) -> (state, metrics)` and its jitted,
data-parallel form.

Example:
  >>> step = make_train_step(loss_fn, optimizer)          # loss_fn(params, batch, key) -> (loss, aux)
  >>> step = jit_data_parallel(step, mesh)
  >>> state, metrics = step(state, shard_batch(batch, mesh), key)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax
from jax.sharding import Mesh

from libs.train import mesh as mesh_lib
from libs.train.state import TrainState

LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation):
  """A pure step: gradient of `loss_fn` at the state's params, then one optimizer update.

  The key is folded with the step number, so a resumed run draws the same randomness.
  """

  def train_step(state: TrainState, batch: dict, key: jax.Array):
    step_key = jax.random.fold_in(key, state.step)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, step_key)
    new_state = state.apply_gradients(grads, optimizer)
    return new_state, {"loss": loss, "grad_norm": optax.tree_utils.tree_norm(grads), **aux}

  return train_step


def jit_data_parallel(train_step, mesh: Mesh, *, donate: bool = True):
  """`jax.jit` with the batch split over the mesh's data axis and the state replicated."""
  repl, data = mesh_lib.replicated(mesh), mesh_lib.data_sharding(mesh)
  return jax.jit(train_step, in_shardings=(repl, data, repl), out_shardings=(repl, repl),
                 donate_argnums=(0,) if donate else ())
