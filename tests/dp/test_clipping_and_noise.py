"""DP-SGD primitives: per-example clipping (vmap and ghost), Gaussian noise, dpsgd."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from libs.dp import clipping, ghost, noise
from libs.models import asr as asr_lib
from libs.models.lm import LMConfig, TransformerLM, next_token_nll
from libs.speech import evaluate


class _MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(jnp.tanh(nn.Dense(8)(x)))


def _setup(dtype=jnp.float32, batch=6):
  model = _MLP()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, 5)) * 3, dtype)
  y = jnp.asarray(rng.integers(0, 3, batch))
  params = jax.jit(model.init)(jax.random.key(0), x)["params"]
  params = jax.tree.map(lambda p: p.astype(dtype), params)

  def loss_fn(params, x, y):
    logits = model.apply({"params": params}, x).astype(jnp.float32)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

  return params, x, y, loss_fn


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("clip", [0.0, 1.0, 10.0, math.inf])
def test_clipped_norms_never_exceed_clip_norm(clip, dtype):
  params, x, y, loss_fn = _setup(dtype)
  grad_fn = jax.jit(clipping.clipped_grad(loss_fn, l2_clip_norm=clip, return_norms=True))
  for i in range(x.shape[0]):
    one_hot = jnp.zeros(x.shape[0]).at[i].set(1.0)
    g, norms = grad_fn(params, x, y, example_weights=one_hot)
    n = float(clipping.tree_l2_norm(g))
    tol = 1e-2 if dtype == jnp.bfloat16 else 1e-5
    assert n <= clip * (1 + tol) + 1e-12
    if clip == math.inf:
      assert n == pytest.approx(float(norms[i]), rel=tol)
    if clip == 0.0:
      assert n == 0.0


def test_per_example_gradients_equal_a_python_loop():
  params, x, y, loss_fn = _setup()
  grad_fn = jax.jit(clipping.clipped_grad(loss_fn, l2_clip_norm=0.7, return_norms=True))
  total, norms = grad_fn(params, x, y)
  expected = jax.tree.map(jnp.zeros_like, params)
  for i in range(x.shape[0]):
    g = jax.grad(loss_fn)(params, x[i:i + 1], y[i:i + 1])
    n = float(clipping.tree_l2_norm(g))
    assert float(norms[i]) == pytest.approx(n, rel=1e-5)
    expected = jax.tree.map(lambda a, b: a + b * min(1.0, 0.7 / n), expected, g)
  for a, b in zip(jax.tree.leaves(total), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_padded_examples_change_nothing_and_microbatching_agrees():
  params, x, y, loss_fn = _setup(batch=4)
  grad_fn = clipping.clipped_grad(loss_fn, l2_clip_norm=1.0)
  real = grad_fn(params, x, y)
  padded_x = jnp.concatenate([x, jnp.full((4, 5), jnp.nan)])  # garbage rows
  padded_y = jnp.concatenate([y, y])
  weights = jnp.array([1, 1, 1, 1, 0, 0, 0, 0.0])
  padded = jax.jit(grad_fn)(params, padded_x, padded_y, example_weights=weights)
  micro = jax.jit(clipping.clipped_grad(loss_fn, l2_clip_norm=1.0, microbatch_size=2))(
      params, padded_x, padded_y, example_weights=weights)
  for a, b, c in zip(jax.tree.leaves(real), jax.tree.leaves(padded), jax.tree.leaves(micro)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="microbatch_size=3 must divide"):
    clipping.clipped_grad(loss_fn, l2_clip_norm=1.0, microbatch_size=3)(params, padded_x, padded_y)


def test_purity_and_bad_arguments():
  params, x, y, loss_fn = _setup()
  grad_fn = jax.jit(clipping.clipped_grad(loss_fn, l2_clip_norm=1.0))
  a, b = grad_fn(params, x, y), grad_fn(params, x, y)
  assert all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  with pytest.raises(ValueError, match="l2_clip_norm"):
    clipping.clipped_grad(loss_fn, l2_clip_norm=-1.0)
  with pytest.raises(ValueError, match="noise_multiplier"):
    noise.add_gaussian_noise(l2_clip_norm=1.0, noise_multiplier=-0.5, expected_batch_size=4, key=jax.random.key(0))
  with pytest.raises(ValueError, match="expected_batch_size"):
    noise.add_gaussian_noise(l2_clip_norm=1.0, noise_multiplier=1.0, expected_batch_size=0, key=jax.random.key(0))


def test_zero_noise_and_infinite_clip_is_plain_sgd():
  params, x, y, loss_fn = _setup()
  summed = clipping.clipped_grad(loss_fn, l2_clip_norm=math.inf)(params, x, y)
  dp = noise.dpsgd(0.1, l2_clip_norm=math.inf, noise_multiplier=0.0, expected_batch_size=x.shape[0],
                   key=jax.random.key(0))
  updates, _ = dp.update(summed, dp.init(params), params)
  sgd = optax.sgd(0.1)
  expected, _ = sgd.update(jax.grad(loss_fn)(params, x, y), sgd.init(params), params)
  for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def _noise_draws(std_multiplier, key, steps=1):
  zeros = {"w": jnp.zeros((20000,))}
  tx = noise.add_gaussian_noise(l2_clip_norm=2.0, noise_multiplier=1.5, expected_batch_size=1.0, key=key)
  state = tx.init(zeros)
  out = []
  for _ in range(steps):
    u, state = tx.update(zeros, state)
    out.append(np.asarray(u["w"]))
  return out


def test_noise_std_passes_ks_at_true_scale_and_fails_when_wrong():
  (draws,) = _noise_draws(1.0, jax.random.key(3))
  true_std = 1.5 * 2.0
  assert stats.kstest(draws, "norm", args=(0, true_std)).pvalue > 1e-3
  assert stats.kstest(draws, "norm", args=(0, true_std * 2 / 3)).pvalue < 1e-6
  assert stats.kstest(draws, "norm", args=(0, true_std * 3 / 2)).pvalue < 1e-6


def test_noise_differs_across_steps_and_keys_and_is_reproducible():
  a1, a2 = _noise_draws(1.0, jax.random.key(0), steps=2)
  b1, _ = _noise_draws(1.0, jax.random.key(1), steps=2)
  c1, c2 = _noise_draws(1.0, jax.random.key(0), steps=2)
  assert not np.allclose(a1, a2) and not np.allclose(a1, b1)
  np.testing.assert_array_equal(a1, c1)
  np.testing.assert_array_equal(a2, c2)


def test_noise_divides_by_expected_batch_size():
  tx = noise.add_gaussian_noise(l2_clip_norm=1.0, noise_multiplier=0.0, expected_batch_size=8.0,
                                key=jax.random.key(0))
  g = {"w": jnp.arange(4.0)}
  u, _ = tx.update(g, tx.init(g))
  np.testing.assert_allclose(u["w"], np.arange(4.0) / 8)


def _lm_setup(batch=5):
  cfg = LMConfig(vocab_size=40, max_len=10, dim=16, num_heads=2, num_layers=2)
  lm = TransformerLM(cfg)
  tokens = jax.random.randint(jax.random.key(0), (batch, 10), 0, 40)
  params = jax.jit(lm.init)(jax.random.key(1), tokens)["params"]
  per_example = lambda p, t: next_token_nll(lm.apply({"params": p}, t), t)
  return params, tokens, per_example


@pytest.mark.parametrize("clip", [0.05, 1.0, math.inf])
def test_ghost_clipping_equals_vmap(clip):
  params, tokens, per_example = _lm_setup()
  weights = jnp.array([1, 1, 0, 1, 1.0])
  vm, vm_norms = jax.jit(clipping.clipped_grad(lambda p, t: jnp.mean(per_example(p, t)), l2_clip_norm=clip,
                                               return_norms=True))(params, tokens, example_weights=weights)
  gh, gh_norms = jax.jit(ghost.ghost_clipped_grad(per_example, l2_clip_norm=clip, return_norms=True))(
      params, tokens, example_weights=weights)
  real = np.asarray(weights) > 0
  np.testing.assert_allclose(np.asarray(gh_norms)[real], np.asarray(vm_norms)[real], rtol=1e-4)
  assert jax.tree.structure(gh) == jax.tree.structure(vm)
  for a, b in zip(jax.tree.leaves(gh), jax.tree.leaves(vm)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def test_ghost_handles_a_layer_called_twice():
  dense = nn.Dense(3)

  class Twice(nn.Module):
    @nn.compact
    def __call__(self, x):
      layer = nn.Dense(4)
      return nn.Dense(2)(layer(x) + layer(x[:, ::-1] * 0.5))

  model = Twice()
  x = jax.random.normal(jax.random.key(0), (4, 4))
  params = jax.jit(model.init)(jax.random.key(1), x)["params"]
  per_example = lambda p, x: jnp.sum(model.apply({"params": p}, x) ** 2, axis=-1)
  vm = clipping.clipped_grad(lambda p, x: jnp.sum(per_example(p, x)), l2_clip_norm=0.3)(params, x)
  gh = ghost.ghost_clipped_grad(per_example, l2_clip_norm=0.3)(params, x)
  for a, b in zip(jax.tree.leaves(gh), jax.tree.leaves(vm)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  del dense


def test_ghost_rejects_uncovered_layers():
  class Scale(nn.Module):  # A raw parameter outside any supported layer.
    @nn.compact
    def __call__(self, x):
      return x * self.param("gain", nn.initializers.ones, (x.shape[-1],))

  class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(2)(Scale()(x))

  model = Model()
  x = jnp.ones((2, 5))
  params = jax.jit(model.init)(jax.random.key(0), x)["params"]
  fn = ghost.ghost_clipped_grad(lambda p, x: jnp.sum(model.apply({"params": p}, x), -1), l2_clip_norm=1.0)
  with pytest.raises(ValueError, match="Scale_0/gain"):
    fn(params, x)


@pytest.mark.parametrize("encoder", ["lstm", "amortized"])
def test_ghost_clipping_covers_the_transducer_and_equals_vmap(encoder):
  """Conv subsampling, bidirectional and unidirectional LSTMs, Embed, LayerNorm, joint Dense; and
  the amortized Transformer (attention, arbitrators' straight-through gates, compute penalty)."""
  from projects.pate_asr.configs import nonprivate  # pylint: disable=import-outside-toplevel
  model_cfg = nonprivate.get_config("tiny").model
  model_cfg.encoder = encoder
  model = asr_lib.build_model(model_cfg, 29)
  params = asr_lib.init_params(model, jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {"features": jnp.asarray(rng.standard_normal((4, 40, 80)), jnp.float32),
           "feature_lengths": jnp.array([40, 33, 20, 9], jnp.int32),
           "labels": jnp.asarray(rng.integers(1, 29, (4, 6)), jnp.int32),
           "label_lengths": jnp.array([6, 3, 0, 2], jnp.int32)}
  weights = jnp.array([1.0, 1.0, 0.0, 1.0])
  per_example = lambda p, b: evaluate.per_example_loss(model, p, b, None, train=False)
  vm, vm_norms = jax.jit(clipping.clipped_grad(lambda p, b: jnp.sum(per_example(p, b)), l2_clip_norm=20.0,
                                               return_norms=True))(params, batch, example_weights=weights)
  gh, gh_norms = jax.jit(ghost.ghost_clipped_grad(per_example, l2_clip_norm=20.0, return_norms=True))(
      params, batch, example_weights=weights)
  real = np.asarray(weights) > 0
  np.testing.assert_allclose(np.asarray(gh_norms)[real], np.asarray(vm_norms)[real], rtol=1e-4)
  assert float(vm_norms[0]) > 20.0  # the clip is active for some examples
  for a, b in zip(jax.tree.leaves(gh), jax.tree.leaves(vm)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_ghost_clipping_covers_conv_layers():
  class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))(x))
      x = nn.relu(nn.Conv(3, (3,), padding="SAME")(x.reshape(x.shape[0], -1, 4)))
      return nn.Dense(2)(x.reshape(x.shape[0], -1))

  model = CNN()
  x = jax.random.normal(jax.random.key(0), (3, 9, 6, 2))
  params = jax.jit(model.init)(jax.random.key(1), x)["params"]
  per_example = lambda p, x: jnp.sum(model.apply({"params": p}, x) ** 2, axis=-1)
  vm, n1 = clipping.clipped_grad(lambda p, x: jnp.sum(per_example(p, x)), l2_clip_norm=1.0,
                                 return_norms=True)(params, x)
  gh, n2 = ghost.ghost_clipped_grad(per_example, l2_clip_norm=1.0, return_norms=True)(params, x)
  np.testing.assert_allclose(n2, n1, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(gh), jax.tree.leaves(vm)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
