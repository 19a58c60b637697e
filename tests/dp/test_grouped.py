"""Group-level clipping (`libs.dp.grouped`) against a float64 NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from libs.dp import grouped

NUM_GROUPS = 5


def _loss(params, batch):
  """Per-example losses [B] of a one-layer tanh regression."""
  h = jnp.tanh(batch["x"] @ params["w"] + params["b"])
  return 0.5 * jnp.sum(jnp.square(h - batch["y"]), axis=-1)


def _np_grad(params, x, y):
  """float64 analytic gradient of `_loss` on one example."""
  w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
  h = np.tanh(x @ w + b)
  dz = (h - y) * (1 - h ** 2)
  return {"b": dz, "w": np.outer(x, dz)}


def _reference(params, batch, ids, weights, clip):
  """sum_g min(1, C / ||S_g||) S_g and the norms ||S_g||, looping in float64."""
  x, y = np.asarray(batch["x"], np.float64), np.asarray(batch["y"], np.float64)
  sums = [{k: np.zeros(np.shape(v)) for k, v in params.items()} for _ in range(NUM_GROUPS)]
  for i in range(len(ids)):
    if weights[i] == 0 or not 0 <= ids[i] < NUM_GROUPS:
      continue
    g = _np_grad(params, x[i], y[i])
    for k in g:
      sums[ids[i]][k] += weights[i] * g[k]
  norms = np.array([np.sqrt(sum(np.sum(s[k] ** 2) for k in s)) for s in sums])
  total = {k: np.zeros(np.shape(v)) for k, v in params.items()}
  for s, n in zip(sums, norms):
    factor = 1.0 if n <= clip else clip / n
    for k in total:
      total[k] += factor * s[k]
  return total, norms


def _setup():
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.asarray([0.1, -0.2], jnp.float32)}
  n = 12
  x = rng.normal(size=(n, 3)).astype(np.float32)
  y = rng.normal(size=(n, 2)).astype(np.float32) * 3
  x[0] *= 0.05  # Group 0: one example with a small gradient (below the clip).
  y[0] = np.tanh(x[0] @ np.asarray(params["w"]) + np.asarray(params["b"])) + 0.01
  # Group 1: five examples (above the clip); group 2: empty; group 3: four examples, one of
  # weight 0.5; group 4: empty. Rows 10 and 11 are padding: weight 0, one with id -1 and one
  # with a real id and non-finite data, which must not reach any sum.
  ids = np.array([0, 1, 1, 1, 1, 1, 3, 3, 3, 3, -1, 3], np.int32)
  weights = np.array([1, 1, 1, 1, 1, 1, 1, 0.5, 1, 1, 0, 0], np.float32)
  x[11] = np.inf
  return params, {"x": x, "y": y}, ids, weights


def _assert_tree_close(a, b, **kw):
  for k in b:
    np.testing.assert_allclose(np.asarray(a[k], np.float64), b[k], **kw)


def test_clipped_group_sum_matches_float64_reference():
  params, batch, ids, weights = _setup()
  _, norms = _reference(params, batch, ids, weights, np.inf)
  clip = float(np.sqrt(norms[0] * norms[1]))  # Between the small group and the large one.
  assert norms[0] < clip < norms[1] and norms[2] == norms[4] == 0
  expected, _ = _reference(params, batch, ids, weights, clip)
  got, got_norms = grouped.clipped_group_sum(_loss, params, batch, ids, NUM_GROUPS, clip, weights,
                                             return_norms=True)
  _assert_tree_close(got, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got_norms), norms, rtol=1e-5, atol=1e-7)
  assert np.all(np.isfinite(np.asarray(got["w"])))


def test_reference_grads_agree_with_a_loop_of_jax_grad():
  params, batch, _, _ = _setup()
  for i in range(10):
    example = jax.tree.map(lambda v: v[i:i + 1], batch)
    g = jax.grad(lambda p: jnp.sum(_loss(p, example)))(params)
    _assert_tree_close(g, _np_grad(params, np.float64(batch["x"][i]), np.float64(batch["y"][i])),
                       rtol=1e-5, atol=1e-6)


def test_group_sums_and_clip_under_jit():
  params, batch, ids, weights = _setup()
  sums = jax.jit(grouped.group_grad_sums, static_argnums=(0, 4))(_loss, params, batch, ids, NUM_GROUPS, weights)
  assert sums["w"].shape == (NUM_GROUPS, 3, 2)
  np.testing.assert_array_equal(np.asarray(sums["w"][2]), 0)  # Empty groups are zero.
  np.testing.assert_array_equal(np.asarray(sums["b"][4]), 0)
  for clip in (0.0, 0.5, 2.0, float("inf")):
    fn = jax.jit(lambda p, b, i, w, c=clip: grouped.clipped_group_sum(_loss, p, b, i, NUM_GROUPS, c, w))
    expected, _ = _reference(params, batch, ids, weights, clip)
    _assert_tree_close(fn(params, batch, ids, weights), expected, rtol=1e-5, atol=1e-6)


def test_accumulating_unclipped_sums_over_physical_batches_is_exact():
  """Splitting a group across two physical batches: sum the unclipped sums, then clip once."""
  params, batch, ids, weights = _setup()
  sums = [grouped.group_grad_sums(_loss, params, jax.tree.map(lambda v, s=s: v[s], batch), ids[s], NUM_GROUPS,
                                  weights[s]) for s in (slice(0, 3), slice(3, 12))]  # Splits group 1.
  total = jax.tree.map(jnp.add, *sums)
  clip = 1.0
  expected, _ = _reference(params, batch, ids, weights, clip)
  _assert_tree_close(grouped.clip_group_sums(total, clip), expected, rtol=1e-5, atol=1e-6)


def test_each_group_counts_once_not_each_example():
  """Removing one group moves the clipped sum by at most C, however many examples it has."""
  params, batch, ids, weights = _setup()
  clip = 0.3
  full = grouped.clipped_group_sum(_loss, params, batch, ids, NUM_GROUPS, clip, weights)
  for g in range(NUM_GROUPS):
    without = grouped.clipped_group_sum(_loss, params, batch, ids, NUM_GROUPS, clip, np.where(ids == g, 0, weights))
    diff = np.sqrt(sum(np.sum((np.asarray(full[k]) - np.asarray(without[k])) ** 2) for k in full))
    assert diff <= clip * (1 + 1e-5)


def test_bad_arguments_raise():
  params, batch, ids, weights = _setup()
  with pytest.raises(ValueError, match="example_weights must lie in"):
    grouped.clipped_group_sum(_loss, params, batch, ids, NUM_GROUPS, 1.0, np.where(weights > 0, 1.5, 0))
  with pytest.raises(ValueError, match="group_ids must have shape"):
    grouped.clipped_group_sum(_loss, params, batch, ids[:3], NUM_GROUPS, 1.0, weights)
  with pytest.raises(ValueError, match="group_ids must be integers"):
    grouped.clipped_group_sum(_loss, params, batch, ids.astype(np.float32), NUM_GROUPS, 1.0, weights)
  with pytest.raises(ValueError, match="num_groups"):
    grouped.clipped_group_sum(_loss, params, batch, ids, 0, 1.0, weights)
  with pytest.raises(ValueError, match="l2_clip_norm"):
    grouped.clipped_group_sum(_loss, params, batch, ids, NUM_GROUPS, -1.0, weights)
