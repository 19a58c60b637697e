"""max_pool: the value of jnp.max, a gradient without any division (finite on every backend)."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from libs.models.pooling import max_pool


def _primitives(jaxpr):
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      names |= _primitives(sub)
  return names


def test_value_matches_numpy_and_gradient_is_one_hot_at_the_first_argmax():
  x = np.random.default_rng(0).normal(size=(3, 7, 5)).astype(np.float32)
  x[1, 2, 0] = x[1, 5, 0] = 9.0  # A tie: the gradient goes to the first position only.
  np.testing.assert_array_equal(np.asarray(max_pool(jnp.asarray(x), axis=-2)), x.max(axis=-2))
  g = np.asarray(jax.grad(lambda v: jnp.sum(max_pool(v, axis=-2) * jnp.arange(1.0, 6.0)))(jnp.asarray(x)))
  expected = np.zeros_like(x)
  first = x.argmax(axis=-2)
  for b in range(3):
    for d in range(5):
      expected[b, first[b, d], d] = d + 1
  np.testing.assert_array_equal(g, expected)


def test_gradient_has_no_division_unlike_jnp_max():
  """The cause of DP-FedAvg's NaN on some CPUs: jnp.max's gradient divides by the number of
  positions that compare equal to the max (0 when XLA recomputes the input with other rounding).
  max_pool's gradient has no `div` and no equality test at all, on any backend."""
  x = jnp.ones((4, 6, 3))

  def grad_primitives(pool):
    return _primitives(jax.make_jaxpr(jax.grad(lambda v: jnp.sum(pool(v))))(x).jaxpr)

  assert {"div", "eq"} <= grad_primitives(lambda v: jnp.max(v, axis=-2))  # the test can see the hazard
  assert not {"div", "eq"} & grad_primitives(lambda v: max_pool(v, axis=-2))


def test_gradient_is_finite_under_vmap_and_jit():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 16, 4)), jnp.float32)
  g = jax.jit(jax.vmap(jax.grad(lambda v: jnp.sum(max_pool(jax.nn.relu(v), axis=0) ** 2))))(x)
  assert np.all(np.isfinite(np.asarray(g)))
