"""Prediction sensitivity against finite differences; accumulated sensitivity against a loop."""

import jax
import jax.numpy as jnp
import numpy as np

from libs.metrics import sensitivity


def _model(key, t=5, d=3, c=4):
  k1, k2 = jax.random.split(key)
  w1 = jax.random.normal(k1, (t * d, 8))
  w2 = jax.random.normal(k2, (8, c))

  def fn(e):  # [B, T, D] -> [B, C] probabilities
    h = jnp.tanh(e.reshape(e.shape[0], -1) @ w1)
    return jax.nn.softmax(h @ w2)
  return fn


def test_position_sensitivity_matches_central_differences_in_float64():
  with jax.enable_x64(True):
    fn = _model(jax.random.key(0))
    e = jax.random.normal(jax.random.key(1), (2, 5, 3), dtype=jnp.float64)
    got = np.asarray(sensitivity.position_sensitivity(fn, e))
    ref = np.zeros((2, 4, 5))
    h = 1e-6
    for b in range(2):
      for t in range(5):
        for d in range(3):
          step = np.zeros((2, 5, 3))
          step[b, t, d] = h
          diff = (np.asarray(fn(e + step)) - np.asarray(fn(e - step)))[b] / (2 * h)  # [C]
          ref[b, :, t] += np.abs(diff)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)


def test_examples_do_not_leak_into_each_other():
  fn = _model(jax.random.key(2))
  e = jax.random.normal(jax.random.key(3), (3, 5, 3))
  together = sensitivity.position_sensitivity(fn, e)
  alone = jnp.concatenate([sensitivity.position_sensitivity(fn, e[i:i + 1]) for i in range(3)])
  np.testing.assert_allclose(together, alone, rtol=1e-5)


def test_feature_weights_normalise_over_unmasked_positions():
  s = jnp.array([[1.0, 3.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
  mask = jnp.array([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
  w = np.asarray(sensitivity.feature_weights(s, mask))
  np.testing.assert_allclose(w[0], [0.25, 0.75, 0.0, 0.0])
  np.testing.assert_allclose(w[1], [1 / 3, 1 / 3, 1 / 3, 0.0])  # No sensitivity: uniform, not NaN.


def test_accumulated_sensitivity_is_the_weighted_double_sum():
  rng = np.random.default_rng(0)
  s = rng.uniform(size=(2, 3, 4))
  w = rng.uniform(size=(2, 4))
  v = rng.uniform(size=(3,))
  got = np.asarray(sensitivity.accumulated_prediction_sensitivity(jnp.asarray(s), jnp.asarray(w), jnp.asarray(v)))
  ref = [sum(v[c] * s[b, c, t] * w[b, t] for c in range(3) for t in range(4)) for b in range(2)]
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  uniform = sensitivity.accumulated_prediction_sensitivity(jnp.asarray(s), jnp.asarray(w))
  np.testing.assert_allclose(uniform, np.einsum("bct,bt->b", s, w) / 3, rtol=1e-5)


def test_a_model_blind_to_the_protected_position_has_zero_aps():
  # f ignores position 0, which is the only position g uses: APS is 0 whatever f does elsewhere.
  def f(e):
    return jax.nn.softmax(jnp.stack([e[:, 1:].sum((1, 2)), -e[:, 1:].sum((1, 2))], -1))

  def g(e):
    return jax.nn.sigmoid(e[:, 0].sum(-1, keepdims=True))

  e = jax.random.normal(jax.random.key(4), (4, 3, 2))
  mask = jnp.ones((4, 3))
  w = sensitivity.feature_weights(sensitivity.position_sensitivity(g, e)[:, 0], mask)
  np.testing.assert_allclose(w[:, 0], 1.0, rtol=1e-6)
  aps = sensitivity.accumulated_prediction_sensitivity(sensitivity.position_sensitivity(f, e), w)
  np.testing.assert_allclose(aps, 0.0, atol=1e-7)


def test_per_example_arguments_reach_fn_one_example_at_a_time():
  # fn masks positions with the token ids it is given: masked positions have zero sensitivity.
  def fn(e, tokens):
    m = (tokens > 0)[..., None].astype(e.dtype)
    return jax.nn.softmax(jnp.stack([(e * m).sum((1, 2)), -(e * m).sum((1, 2))], -1))

  e = jax.random.normal(jax.random.key(5), (2, 4, 3))
  tokens = jnp.array([[5, 6, 0, 0], [7, 0, 0, 0]])
  s = np.asarray(sensitivity.position_sensitivity(fn, e, tokens))
  assert s.shape == (2, 2, 4)
  assert np.all(s[0, :, 2:] == 0) and np.all(s[1, :, 1:] == 0)
  assert np.all(s[0, :, :2] > 0) and np.all(s[1, :, :1] > 0)


def test_relative_sensitivity_is_scale_free_and_one_for_uniform_weights():
  rng = np.random.default_rng(1)
  s = jnp.asarray(rng.uniform(size=(3, 2, 5)))
  mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], jnp.float32)
  w = sensitivity.feature_weights(jnp.asarray(rng.uniform(size=(3, 5))), mask)
  rel = sensitivity.relative_prediction_sensitivity(s, w, mask)
  np.testing.assert_allclose(sensitivity.relative_prediction_sensitivity(10 * s, w, mask), rel, rtol=1e-5)
  uniform = mask / mask.sum(-1, keepdims=True)
  np.testing.assert_allclose(sensitivity.relative_prediction_sensitivity(s, uniform, mask), 1.0, rtol=1e-5)
  aps = sensitivity.accumulated_prediction_sensitivity(s, w)
  np.testing.assert_allclose(rel, aps / sensitivity.accumulated_prediction_sensitivity(s, uniform), rtol=1e-5)
