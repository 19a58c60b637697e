"""Per-example weights of `clipped_grad` and `ghost_clipped_grad` must lie in [0, 1].

A weight above 1 multiplies the sensitivity of the clipped sum (the DP guarantee is void),
a negative or NaN one is meaningless: concrete weights raise ValueError at the call,
traced ones make the compiled call fail when it runs. Valid weights are checked against a
float64 NumPy reference of the weighted clipped sum on a linear model.
"""

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from libs.dp import clipping, ghost

_BATCH, _DIM = 6, 3


class _Linear(nn.Module):
  """x . w + b, as a submodule (ghost clipping keys layers by their module path)."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(x)


_MODEL = _Linear()


def _per_example_loss(params, x, y):
  pred = _MODEL.apply({"params": params}, x)[:, 0]
  return 0.5 * jnp.square(pred - y)


def _grad_fn(kind, clip, **kwargs):
  if kind == "vmap":
    return clipping.clipped_grad(lambda p, x, y: jnp.sum(_per_example_loss(p, x, y)), l2_clip_norm=clip, **kwargs)
  return ghost.ghost_clipped_grad(_per_example_loss, l2_clip_norm=clip, **kwargs)


def _data(seed=0, batch=_BATCH):
  rng = np.random.default_rng(seed)
  # Rows of very different scales, so that a clip of 0.5 binds for some examples only.
  x = rng.standard_normal((batch, _DIM)) * np.geomspace(0.05, 3.0, batch)[:, None]
  y = rng.standard_normal(batch)
  params = {"Dense_0": {"kernel": rng.standard_normal((_DIM, 1)), "bias": rng.standard_normal((1,))}}
  to32 = lambda a: jnp.asarray(a, jnp.float32)
  return jax.tree.map(to32, params), to32(x), to32(y)


def _reference(params, x, y, weights, clip):
  """sum_i w_i min(1, C / ||g_i||) g_i in float64, with the per-example gradients of
  0.5 (x_i . w + b - y_i)^2 by hand: g_i = r_i (x_i, 1), r_i the residual."""
  kernel = np.asarray(params["Dense_0"]["kernel"], np.float64)[:, 0]
  bias = np.asarray(params["Dense_0"]["bias"], np.float64)[0]
  x, y, w = (np.asarray(a, np.float64) for a in (x, y, weights))
  r = x @ kernel + bias - y
  norms = np.abs(r) * np.sqrt(np.sum(x * x, axis=1) + 1.0)
  factor = np.ones_like(norms) if math.isinf(clip) else np.minimum(1.0, clip / np.where(norms > 0, norms, 1.0))
  c = w * factor * r
  return {"Dense_0": {"kernel": (c @ x)[:, None], "bias": np.array([np.sum(c)])}}, norms


def _assert_close(got, expected):
  assert jax.tree.structure(got) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    assert np.asarray(a).shape == b.shape
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=1e-5, atol=1e-6)


def _bad_weights(value, index=2):
  w = np.ones(_BATCH, np.float32)
  w[index] = value
  return w


def _message(value, index=2):
  return re.escape("example_weights must lie in [0, 1]") + ".*" + re.escape(f"example_weights[{index}]={value}")


# Traced weights are checked by a host callback that raises; JAX reports its error as a
# JaxRuntimeError, or as a ValueError from its C++ dispatch path (calls after the first),
# with the callback's message either way.
_RUNTIME_ERRORS = (ValueError, jax.errors.JaxRuntimeError)
_KINDS = ["vmap", "ghost"]
_BAD = [(2.0, "2.0"), (-0.5, "-0.5"), (float("nan"), "nan")]


@pytest.mark.parametrize("kind", _KINDS)
@pytest.mark.parametrize("bad,shown", _BAD)
@pytest.mark.parametrize("container", ["numpy", "list", "jax"])
def test_concrete_invalid_weights_raise_value_error(kind, bad, shown, container):
  params, x, y = _data()
  w = _bad_weights(bad)
  w = {"numpy": w, "list": w.tolist(), "jax": jnp.asarray(w)}[container]
  with pytest.raises(ValueError, match=_message(shown)):
    _grad_fn(kind, 1.0)(params, x, y, example_weights=w)


@pytest.mark.parametrize("kind", _KINDS)
def test_error_lists_the_first_offending_weights_and_counts_the_rest(kind):
  params, x, y = _data(batch=8)
  w = np.array([1, 3, -1, 0.5, np.nan, 2, 4, 5], np.float32)
  with pytest.raises(ValueError) as info:
    _grad_fn(kind, 1.0)(params, x, y, example_weights=w)
  assert str(info.value).endswith("got example_weights[1]=3.0, example_weights[2]=-1.0, example_weights[4]=nan, "
                                  "example_weights[5]=2.0, example_weights[6]=4.0 and 1 more")


@pytest.mark.parametrize("kind", _KINDS)
def test_concrete_weights_closed_over_in_jit_raise_when_tracing(kind):
  params, x, y = _data()
  fn = jax.jit(lambda p, x, y: _grad_fn(kind, 1.0)(p, x, y, example_weights=_bad_weights(2.0)))
  with pytest.raises(ValueError, match=_message("2.0")):
    fn(params, x, y)


@pytest.mark.parametrize("kind,micro", [("vmap", None), ("vmap", 2), ("ghost", None)])
@pytest.mark.parametrize("bad,shown", _BAD)
def test_traced_invalid_weights_fail_the_compiled_call(kind, micro, bad, shown):
  params, x, y = _data()
  kwargs = {"microbatch_size": micro} if micro else {}
  fn = jax.jit(_grad_fn(kind, 1.0, **kwargs))
  good = np.array([1, 0, 0.5, 1, 0.25, 1], np.float32)
  _assert_close(fn(params, x, y, example_weights=good), _reference(params, x, y, good, 1.0)[0])
  # The same compiled function: the weights are only known when it runs.
  with pytest.raises(_RUNTIME_ERRORS, match=_message(shown)):
    jax.block_until_ready(fn(params, x, y, example_weights=_bad_weights(bad)))
  # A first call with invalid weights fails too (JAX's Python dispatch path).
  with pytest.raises(_RUNTIME_ERRORS, match=_message(shown)):
    jax.block_until_ready(jax.jit(_grad_fn(kind, 1.0, **kwargs))(params, x, y, example_weights=_bad_weights(bad)))
  # The failure leaves the function usable for the next, valid call.
  _assert_close(fn(params, x, y, example_weights=good), _reference(params, x, y, good, 1.0)[0])


@pytest.mark.parametrize("kind", _KINDS)
def test_traced_weights_under_vmap_over_stacked_models(kind):
  """As the DP-SGD trainer calls it: models stacked on axis 0, one batch for all."""
  (p0, x, y), (p1, _, _) = _data(0), _data(1)
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), p0, p1)
  grad_fn = _grad_fn(kind, 0.5)
  fn = jax.jit(jax.vmap(lambda p, x, y, w: grad_fn(p, x, y, example_weights=w), in_axes=(0, None, None, None)))
  good = np.array([0.1, 0.3, 0.999, 0, 1, 0.7], np.float32)
  got = fn(stacked, x, y, good)
  for m, p in enumerate((p0, p1)):
    _assert_close(jax.tree.map(lambda a, m=m: a[m], got), _reference(p, x, y, good, 0.5)[0])
  with pytest.raises(_RUNTIME_ERRORS, match=_message("2.0")):
    jax.block_until_ready(fn(stacked, x, y, _bad_weights(2.0)))


@pytest.mark.parametrize("kind", _KINDS)
def test_traced_weights_under_vmap_over_batches_of_examples(kind):
  """Weights batched by the vmap: each batch is checked; one bad weight fails the call."""
  params, x0, y0 = _data(0)
  _, x1, y1 = _data(1)
  x, y = jnp.stack([x0, x1]), jnp.stack([y0, y1])
  grad_fn = _grad_fn(kind, 0.5)
  fn = jax.jit(jax.vmap(lambda x, y, w: grad_fn(params, x, y, example_weights=w)))
  good = np.array([[1, 0, 0.5, 1, 0.25, 1], [0.1, 0.3, 0.999, 0, 1, 0.7]], np.float32)
  got = fn(x, y, good)
  for m, (xm, ym) in enumerate(((x0, y0), (x1, y1))):
    _assert_close(jax.tree.map(lambda a, m=m: a[m], got), _reference(params, xm, ym, good[m], 0.5)[0])
  bad = good.copy()
  bad[1, 4] = -0.5
  with pytest.raises(_RUNTIME_ERRORS, match=_message("-0.5", index=4)):
    jax.block_until_ready(fn(x, y, bad))


@pytest.mark.parametrize("kind", _KINDS)
@pytest.mark.parametrize("clip", [0.5, math.inf])
@pytest.mark.parametrize("weights", [
    [1, 1, 1, 1, 1, 1],
    [1, 0, 0.5, 1, 0.25, 1],
    [0.1, 0.3, 0.999, 0, 1, 0.7],
    [0, 0, 0, 0, 0, 0],
])
@pytest.mark.parametrize("jit", [False, True])
def test_valid_weights_match_a_float64_numpy_reference(kind, clip, weights, jit):
  params, x, y = _data()
  w = np.asarray(weights, np.float32)
  expected, ref_norms = _reference(params, x, y, w, clip)
  if clip == 0.5:
    assert (ref_norms > clip).any() and (ref_norms < clip).any()  # The clip binds for some only.
  fn = _grad_fn(kind, clip, return_norms=True)
  fn = jax.jit(fn) if jit else fn
  got, norms = fn(params, x, y, example_weights=w)
  _assert_close(got, expected)
  real = w > 0  # ghost reports a norm of 0 for padded examples.
  np.testing.assert_allclose(np.asarray(norms)[real], ref_norms[real], rtol=1e-5)
  if all(v == 1 for v in weights):  # All-ones weights are the same as none.
    _assert_close(fn(params, x, y)[0], expected)


def test_weights_keep_their_gradient():
  """The check has no derivative; differentiating through the weights still works."""
  params, x, y = _data()
  w = jnp.asarray([1, 0.5, 0.25, 1, 0.75, 1], jnp.float32)
  loss = lambda w: jnp.sum(_grad_fn("vmap", 0.5)(params, x, y, example_weights=w)["Dense_0"]["bias"])
  ref = lambda w: np.sum(_reference(params, x, y, w, 0.5)[0]["Dense_0"]["bias"])
  # The bias sum is linear in w: its gradient is the per-example clipped bias gradients.
  expected = np.array([ref(np.eye(_BATCH)[i]) for i in range(_BATCH)])
  np.testing.assert_allclose(jax.jit(jax.grad(loss))(w), expected, rtol=1e-5, atol=1e-6)
