"""Gaussian noise for DP-SGD as an optax transform, and the `dpsgd` optimizer.

`add_gaussian_noise` expects the SUM of clipped per-example gradients (what
`libs.dp.clipped_grad` returns), adds N(0, (noise_multiplier * l2_clip_norm)^2) to every
coordinate and divides by the expected batch size (for Poisson sampling, q * N: dividing
by the realized size would leak it). Its PRNG key lives in its state and each update
draws with `fold_in(key, count)`, so a resumed run adds exactly the same noise.

Example:
  >>> opt = dpsgd(0.5, l2_clip_norm=1.0, noise_multiplier=1.1, expected_batch_size=256,
  ...             key=jax.random.key(0))
  >>> opt_state = opt.init(params)
  >>> updates, opt_state = opt.update(clipped_grad_sum, opt_state, params)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class GaussianNoiseState(NamedTuple):
  key_data: jax.Array  # Raw key bits (uint32), so the state checkpoints like any array.
  count: jax.Array


def _check(l2_clip_norm, noise_multiplier, expected_batch_size):
  if isinstance(noise_multiplier, jax.Array):  # Traced or per-member (vmapped) noise: checked by the caller.
    return
  if not noise_multiplier >= 0:
    raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
  if not l2_clip_norm >= 0 or (l2_clip_norm == float("inf") and noise_multiplier > 0):
    raise ValueError(f"l2_clip_norm must be >= 0 and finite when noise_multiplier > 0, got {l2_clip_norm}")
  if not expected_batch_size > 0:
    raise ValueError(f"expected_batch_size must be > 0, got {expected_batch_size}")


def add_gaussian_noise(*, l2_clip_norm: float, noise_multiplier: float, expected_batch_size: float,
                       key: jax.Array) -> optax.GradientTransformation:
  """Noise of std `noise_multiplier * l2_clip_norm` on the summed gradient, then / batch size.

  Args:
    l2_clip_norm: the per-example clip norm used to compute the sum (the sensitivity).
    noise_multiplier: noise std in units of the clip norm (sigma); a JAX array is allowed
      (e.g. one value per vmapped model) and is then not validated here.
    expected_batch_size: divisor applied after the noise (q * N for Poisson sampling).
    key: a `jax.random.key` (or legacy uint32 key) for the noise.
  """
  _check(l2_clip_norm, noise_multiplier, expected_batch_size)
  key_data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  if isinstance(noise_multiplier, jax.Array):
    std = noise_multiplier * l2_clip_norm
  else:
    std = noise_multiplier * l2_clip_norm if noise_multiplier > 0 else 0.0

  def init_fn(params):
    del params
    return GaussianNoiseState(jnp.asarray(key_data), jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.key_data), state.count)
    leaves, treedef = jax.tree.flatten(updates)
    keys = jax.random.split(step_key, max(len(leaves), 1))
    noisy = [(g + std * jax.random.normal(k, g.shape, jnp.float32).astype(g.dtype)) / expected_batch_size
             for g, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy), GaussianNoiseState(state.key_data, state.count + 1)

  return optax.GradientTransformation(init_fn, update_fn)


def dpsgd(learning_rate: optax.ScalarOrSchedule, *, l2_clip_norm: float, noise_multiplier: float,
          expected_batch_size: float, key: jax.Array, momentum: float | None = None,
          optimizer: optax.GradientTransformation | None = None) -> optax.GradientTransformation:
  """DP-SGD: Gaussian noise on the clipped-gradient sum, then SGD (or `optimizer`).

  Any optimizer after the noise is post-processing and keeps the guarantee, so
  `optimizer=optax.adam(1e-3)` gives DP-Adam.
  """
  inner = optimizer if optimizer is not None else optax.sgd(learning_rate, momentum=momentum)
  return optax.chain(
      add_gaussian_noise(l2_clip_norm=l2_clip_norm, noise_multiplier=noise_multiplier,
                         expected_batch_size=expected_batch_size, key=key),
      inner)
