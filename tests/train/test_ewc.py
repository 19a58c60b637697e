"""EWC: the penalty against float64 finite differences, the Fisher diagonal against a
per-example Python loop (padding with NaN inputs excluded), and the loss wrapper."""

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from libs.train import ewc, steps
from libs.train.state import TrainState


class _MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(jnp.tanh(nn.Dense(6)(x)))


def _small_tree(rng, dtype=np.float32):
  return {"a": {"w": rng.standard_normal((3, 2)).astype(dtype), "b": rng.standard_normal(2).astype(dtype)},
          "c": np.asarray(rng.standard_normal(), dtype)}


def test_penalty_gradient_matches_central_finite_difference_in_float64():
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    params, anchor = _small_tree(rng, np.float64), _small_tree(rng, np.float64)
    fisher = jax.tree.map(lambda x: np.abs(x), _small_tree(rng, np.float64))
    f64 = lambda p: ewc.ewc_penalty(p, anchor, fisher, 3.0)
    grads = jax.grad(lambda p: ewc.ewc_penalty(p, anchor, fisher, 3.0))(params)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    eps = 1e-6
    fd = np.array([(f64(unravel(flat.at[k].add(eps))) - f64(unravel(flat.at[k].add(-eps)))) / (2 * eps)
                   for k in range(flat.size)])
    assert flat.dtype == jnp.float64 and f64(params).dtype == jnp.float64
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(grads)[0], fd, rtol=1e-7, atol=1e-9)
    # And against the formula in NumPy.
    ref = 0.5 * 3.0 * sum(np.sum(f * (x - a) ** 2) for x, a, f in zip(
        jax.tree.leaves(params), jax.tree.leaves(anchor), jax.tree.leaves(fisher)))
    np.testing.assert_allclose(f64(params), ref, rtol=1e-12)


def test_penalty_zero_at_anchor_and_linear_in_strength():
  rng = np.random.default_rng(1)
  params, anchor = _small_tree(rng), _small_tree(rng)
  fisher = jax.tree.map(np.abs, _small_tree(rng))
  assert float(ewc.ewc_penalty(anchor, anchor, fisher, 5.0)) == 0.0
  one = float(ewc.ewc_penalty(params, anchor, fisher, 1.0))
  assert one > 0
  np.testing.assert_allclose(float(ewc.ewc_penalty(params, anchor, fisher, 7.5)), 7.5 * one, rtol=1e-6)
  assert float(ewc.ewc_penalty(params, anchor, fisher, 0.0)) == 0.0
  bf16 = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
  assert ewc.ewc_penalty(bf16, anchor, fisher, 1.0).dtype == jnp.float32


def _mlp_setup(batch=7):
  model = _MLP()
  rng = np.random.default_rng(2)
  x = rng.standard_normal((batch, 4)).astype(np.float32)
  y = rng.integers(0, 3, batch).astype(np.int32)
  params = model.init(jax.random.key(0), x)["params"]

  def example_loss(p, ex):  # NLL of a batch of one
    logits = model.apply({"params": p}, ex["x"])
    return -jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(ex["y"], 3))

  return params, x, y, example_loss


def _loop_fisher(example_loss, params, x, y):
  grad = jax.jit(jax.grad(example_loss))
  acc = None
  for k in range(len(x)):
    g = grad(params, {"x": x[k: k + 1], "y": y[k: k + 1], "weights": np.ones(1, np.float32)})
    sq = jax.tree.map(lambda t: np.asarray(t, np.float64) ** 2, g)
    acc = sq if acc is None else jax.tree.map(np.add, acc, sq)
  return jax.tree.map(lambda t: t / len(x), acc)


@pytest.mark.parametrize("microbatch_size", [None, 2])
def test_fisher_matches_per_example_loop_with_nan_padding(microbatch_size):
  params, x, y, example_loss = _mlp_setup()
  ref = _loop_fisher(example_loss, params, x, y)
  # Two batches of 5 rows: 4 + 3 real examples, the padding rows hold NaN inputs.
  xp = np.full((10, 4), np.nan, np.float32)
  yp = np.zeros(10, np.int32)
  w = np.zeros(10, np.float32)
  rows = [0, 1, 2, 3, 5, 6, 7]
  xp[rows], yp[rows], w[rows] = x, y, 1.0
  batches = [{"x": xp[:5], "y": yp[:5], "weights": w[:5]}, {"x": xp[5:], "y": yp[5:], "weights": w[5:]}]
  got = ewc.fisher_diagonal(example_loss, params, batches, microbatch_size=microbatch_size)
  assert jax.tree.structure(got) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_fisher_max_examples_and_keys():
  params, x, y, example_loss = _mlp_setup()
  batches = [{"x": x[:4], "y": y[:4], "weights": np.ones(4, np.float32)},
             {"x": x[4:], "y": y[4:], "weights": np.ones(3, np.float32)}]
  got = ewc.fisher_diagonal(example_loss, params, batches, max_examples=5)
  ref = _loop_fisher(example_loss, params, x[:5], y[:5])
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
  # With a key, each example gets its own key (here: it only scales the loss, deterministically).
  keyed = lambda p, ex, k: example_loss(p, ex) * (1.0 + 0.0 * jax.random.uniform(k))
  for mb in (None, 3):  # 3 does not divide 4: padded with weight-0 copies, keys included.
    got_k = ewc.fisher_diagonal(keyed, params, batches, key=jax.random.key(3), max_examples=5, microbatch_size=mb)
    for a, b in zip(jax.tree.leaves(got_k), jax.tree.leaves(got)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_fisher_errors():
  params, x, y, example_loss = _mlp_setup()
  with pytest.raises(ValueError, match="no real example"):
    ewc.fisher_diagonal(example_loss, params, [{"x": x, "y": y, "weights": np.zeros(7, np.float32)}])
  with pytest.raises(ValueError, match="'weights'"):
    ewc.fisher_diagonal(example_loss, params, [{"x": x, "y": y}])
  bad = x.copy()
  bad[0] = np.nan
  with pytest.raises(ValueError, match="not finite"):
    ewc.fisher_diagonal(example_loss, params, [{"x": bad, "y": y, "weights": np.ones(7, np.float32)}])


def test_with_ewc_adds_exactly_the_penalty():
  params, x, y, example_loss = _mlp_setup()
  batch = {"x": x, "y": y, "weights": np.ones(7, np.float32)}
  fisher = ewc.fisher_diagonal(example_loss, params, [batch])

  def loss_fn(p, b, key):
    del key
    return example_loss(p, b) / len(b["x"]), {"acc": jnp.float32(0.5)}

  wrapped = ewc.with_ewc(loss_fn, params, fisher, 10.0)
  moved = jax.tree.map(lambda t: t + 0.1, params)
  base, base_aux = loss_fn(moved, batch, None)
  total, aux = jax.jit(wrapped)(moved, batch, jax.random.key(0))
  penalty = ewc.ewc_penalty(moved, params, fisher, 10.0)
  assert float(penalty) > 0 and aux["acc"] == base_aux["acc"]
  np.testing.assert_allclose(aux["ewc_penalty"], penalty, rtol=1e-6)
  np.testing.assert_allclose(total, base + penalty, rtol=1e-6)
  # Usable as the loss of a train step: it reports the penalty among the metrics.
  optimizer = optax.sgd(0.1)
  step = jax.jit(steps.make_train_step(wrapped, optimizer))
  _, metrics = step(TrainState.create(moved, optimizer), batch, jax.random.key(0))
  np.testing.assert_allclose(metrics["ewc_penalty"], penalty, rtol=1e-6)
  np.testing.assert_allclose(metrics["loss"], base + penalty, rtol=1e-6)
  g_total, g_task, g_pen = jax.jit(lambda p: (
      jax.grad(lambda q: wrapped(q, batch, None)[0])(p), jax.grad(lambda q: loss_fn(q, batch, None)[0])(p),
      jax.grad(lambda q: ewc.ewc_penalty(q, params, fisher, 10.0))(p)))(moved)
  for a, b, c in zip(jax.tree.leaves(g_total), jax.tree.leaves(g_task), jax.tree.leaves(g_pen)):
    np.testing.assert_allclose(a, b + c, rtol=1e-5, atol=1e-7)


def test_with_ewc_validates():
  params = {"dense": {"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)}}
  fisher = jax.tree.map(np.ones_like, params)
  loss_fn = lambda p, b, k: (jnp.float32(0.0), {})
  for strength in (-1.0, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="strength"):
      ewc.with_ewc(loss_fn, params, fisher, strength)
  negative = {"dense": {"kernel": -np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)}}
  with pytest.raises(ValueError, match=r"fisher\['dense'\]\['kernel'\]"):
    ewc.with_ewc(loss_fn, params, negative, 1.0)
  nan = {"dense": {"kernel": np.ones((2, 3), np.float32), "bias": np.array([0.0, np.nan, 0.0], np.float32)}}
  with pytest.raises(ValueError, match=r"fisher\['dense'\]\['bias'\]"):
    ewc.with_ewc(loss_fn, params, nan, 1.0)
  with pytest.raises(ValueError, match="missing leaves"):
    ewc.with_ewc(loss_fn, params, {"dense": {"kernel": np.ones((2, 3), np.float32)}}, 1.0)
  with pytest.raises(ValueError, match=r"fisher\['dense'\]\['bias'\] has shape"):
    ewc.with_ewc(loss_fn, params, {"dense": {"kernel": np.ones((2, 3)), "bias": np.ones(4)}}, 1.0)
