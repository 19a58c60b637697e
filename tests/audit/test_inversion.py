"""Model inversion against independent references: finite differences (float64), brute-force
NumPy loops for total variation, scipy's DCT for MCD, embeddings with a known answer."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import fft as scipy_fft

from libs.audit import inversion


def _tv_loop(x, length, eps):
  """Total variation by explicit loops over neighbour pairs of the first `length` frames."""
  pen = (lambda d: abs(d)) if eps == 0 else (lambda d: math.sqrt(d * d + eps * eps) - eps)
  total = 0.0
  for t in range(length):
    for f in range(x.shape[1]):
      if t + 1 < length:
        total += pen(x[t + 1, f] - x[t, f])
      if f + 1 < x.shape[1]:
        total += pen(x[t, f + 1] - x[t, f])
  return total


@pytest.mark.parametrize("length, eps", [(7, 0.0), (7, 0.1), (4, 0.0), (1, 0.05)])
def test_total_variation_matches_a_loop_and_ignores_padding(length, eps):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(7, 5))
  x[length:] = np.nan  # Padding may hold anything.
  mask = np.arange(7) < length
  with jax.enable_x64(True):
    got = float(inversion.total_variation(jnp.asarray(x), jnp.asarray(mask), eps=eps))
  assert got == pytest.approx(_tv_loop(x, length, eps), rel=1e-12)


def _toy_log_prob(params, x, aux):
  """A smooth stand-in for log p(y | x): a per-frame classifier's log-probability of labels."""
  logits = jnp.tanh(x @ params["w1"]) @ params["w2"]
  frames = jnp.arange(x.shape[0]) < aux["length"]
  return jnp.sum(jnp.where(frames, jax.nn.log_softmax(logits)[jnp.arange(x.shape[0]), aux["labels"]], 0.0))


def _toy_params(rng, bins=4, hidden=6, classes=3):
  return {"w1": rng.normal(size=(bins, hidden)), "w2": rng.normal(size=(hidden, classes))}


def test_objective_gradient_matches_finite_differences_in_float64():
  rng = np.random.default_rng(1)
  config = inversion.InversionConfig(tv_weight=0.3, l2_weight=0.1, tv_eps=0.05)
  with jax.enable_x64(True):
    params = jax.tree.map(jnp.asarray, _toy_params(rng))
    x = jnp.asarray(rng.normal(size=(6, 4)))
    mask = jnp.arange(6) < 5
    aux = {"labels": jnp.asarray(rng.integers(0, 3, 6)), "length": jnp.asarray(5)}
    # A per-utterance normalisation-like transform: the priors act on what the model sees.
    transform = lambda x, m: jnp.tanh(x) / (1.0 + jnp.sum(jnp.where(m[:, None], x * x, 0.0)) / 10)
    f = lambda x: inversion.objective(_toy_log_prob, params, x, mask, aux, config, transform)[0]
    grad = np.asarray(jax.grad(f)(x))
    assert grad.dtype == np.float64
    h = 1e-6
    numeric = np.zeros(x.shape)
    for i in np.ndindex(*x.shape):
      e = np.zeros(x.shape)
      e[i] = h
      numeric[i] = (float(f(x + e)) - float(f(x - e))) / (2 * h)
  np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
  assert np.all(grad[5:] == 0)  # The padding frame never moves the objective.


def test_objective_parts():
  rng = np.random.default_rng(2)
  params = jax.tree.map(jnp.asarray, _toy_params(rng))
  x = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
  mask = jnp.ones(5, bool)
  aux = {"labels": jnp.zeros(5, jnp.int32), "length": jnp.asarray(5)}
  cfg = inversion.InversionConfig(tv_weight=0.5, l2_weight=0.2, tv_eps=0.0)
  value, parts = inversion.objective(_toy_log_prob, params, x, mask, aux, cfg)
  expected = parts["log_prob"] - 0.5 * _tv_loop(np.asarray(x, np.float64), 5, 0.0) - 0.1 * np.sum(np.square(x))
  assert float(value) == pytest.approx(float(expected), rel=1e-5)


def test_inversion_recovers_a_known_input_better_than_its_start():
  """log p(x) = -||A x - A x*||^2 with A invertible: the maximum is x*; Adam from 0 gets close."""
  rng = np.random.default_rng(3)
  frames, bins = 8, 3
  a = np.eye(bins) + 0.3 * rng.normal(size=(bins, bins))
  targets = rng.normal(size=(2, frames, bins))  # Two utterances, vmapped.
  lengths = np.array([8, 5])
  mask = np.arange(frames)[None] < lengths[:, None]

  def log_prob(params, x, aux):
    return -jnp.sum(jnp.square((x - aux["target"]) @ params)) / 2

  invert = inversion.make_inverter(log_prob, inversion.InversionConfig(steps=400, learning_rate=0.05,
                                                                       tv_weight=0.0))
  x0 = np.zeros((2, frames, bins), np.float32)
  result = invert(jnp.asarray(a, jnp.float32), x0, mask, {"target": jnp.asarray(targets, jnp.float32)})
  assert result.x.shape == x0.shape and result.log_prob.shape == (401, 2)
  for b, n in enumerate(lengths):
    start = np.linalg.norm(x0[b, :n] - targets[b, :n])
    end = np.linalg.norm(np.asarray(result.x[b, :n]) - targets[b, :n])
    assert end < 0.05 * start, (b, start, end)
    assert np.all(np.asarray(result.x[b, n:]) == 0)  # Padding stays zero.
  assert np.all(np.asarray(result.log_prob[-1]) > np.asarray(result.log_prob[0]))


def test_the_tv_prior_smooths_the_reconstruction():
  """With only the prior and a likelihood that pins two frames, TV pulls the rest flat."""
  frames, bins = 6, 2

  def log_prob(params, x, aux):
    del params, aux
    return -10.0 * (jnp.sum(jnp.square(x[0] - 1.0)) + jnp.sum(jnp.square(x[-1] - 1.0)))

  x0 = np.random.default_rng(4).normal(size=(1, frames, bins)).astype(np.float32)
  mask = np.ones((1, frames), bool)
  smooth = inversion.make_inverter(log_prob, inversion.InversionConfig(steps=600, learning_rate=0.02,
                                                                       tv_weight=1.0, tv_eps=1e-3))
  rough = inversion.make_inverter(log_prob, inversion.InversionConfig(steps=600, learning_rate=0.02))
  tv = lambda r: float(r.tv[-1, 0])
  assert tv(smooth(None, x0, mask, {})) < 0.2 * tv(rough(None, x0, mask, {}))


def _mcd_reference(a, b, num):
  """The published formula, frame by frame, with scipy's orthonormal DCT-II."""
  out = []
  for x, y in zip(a, b):
    cx = scipy_fft.dct(np.asarray(x, np.float64), type=2, norm="ortho")
    cy = scipy_fft.dct(np.asarray(y, np.float64), type=2, norm="ortho")
    out.append(10.0 / math.log(10.0) * math.sqrt(2.0 * sum((cx[d] - cy[d]) ** 2 for d in range(1, num + 1))))
  return float(np.mean(out))


@pytest.mark.parametrize("num", [1, 12, 24, 39])
def test_mcd_matches_scipy_dct_and_the_formula(num):
  rng = np.random.default_rng(5)
  a, b = rng.normal(size=(3, 9, 40)), rng.normal(size=(3, 9, 40))
  lengths = np.array([9, 4, 1])
  got = inversion.mel_cepstral_distortion(a, b, lengths, num_coefficients=num)
  want = [_mcd_reference(a[i, :n], b[i, :n], num) for i, n in enumerate(lengths)]
  np.testing.assert_allclose(got, want, rtol=1e-12)
  single = inversion.mel_cepstral_distortion(a[0], b[0], num_coefficients=num)
  assert single == pytest.approx(want[0], rel=1e-12)


def test_mcd_ignores_level_and_is_zero_on_itself():
  rng = np.random.default_rng(6)
  a = rng.normal(size=(2, 5, 16))
  assert np.allclose(inversion.mel_cepstral_distortion(a, a), 0.0)
  # A constant offset per frame moves only c0, which MCD excludes.
  shifted = a + rng.normal(size=(2, 5, 1))
  assert np.allclose(inversion.mel_cepstral_distortion(a, shifted), 0.0, atol=1e-12)
  np.testing.assert_allclose(inversion.dct_matrix(16), scipy_fft.dct(np.eye(16), type=2, norm="ortho", axis=0),
                             atol=1e-14)


def test_mcd_rejects_bad_input():
  with pytest.raises(ValueError, match="one shape"):
    inversion.mel_cepstral_distortion(np.zeros((2, 3, 4)), np.zeros((2, 4, 4)))
  with pytest.raises(ValueError, match="lengths"):
    inversion.mel_cepstral_distortion(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), [3, 0])
  with pytest.raises(ValueError, match="num_coefficients"):
    inversion.mel_cepstral_distortion(np.zeros((3, 4)), np.zeros((3, 4)), num_coefficients=4)


def test_identification_metrics_on_constructed_embeddings():
  # Three speakers on orthogonal axes; query 0 is speaker 0 exactly, query 1 is speaker 1 with a
  # pull towards speaker 2, query 2 is nearer speaker 0 than its own speaker 2.
  speakers = np.eye(3)
  queries = np.array([[1.0, 0.0, 0.0], [0.0, 0.8, 0.6], [0.8, 0.0, 0.6]])
  sim = inversion.cosine_similarity(queries, speakers)
  np.testing.assert_allclose(sim, queries)  # Unit rows against the axes.
  m = inversion.identification_metrics(sim, np.array([0, 1, 2]))
  assert m["similarity_true"] == pytest.approx((1.0 + 0.8 + 0.6) / 3)
  assert m["similarity_other"] == pytest.approx((0 + 0 + 0 + 0.6 + 0.8 + 0) / 6)
  assert m["top1"] == pytest.approx(2 / 3)
  assert m["mean_rank"] == pytest.approx((1 + 1 + 2) / 3)
  assert m["rank_score"] == pytest.approx((1 + 1 + 0.5) / 3)
  assert m["chance_top1"] == pytest.approx(1 / 3) and m["candidates"] == 3


def test_identification_ties_are_misses_and_count_half():
  sim = np.array([[0.5, 0.5, 0.1, 0.1]])
  m = inversion.identification_metrics(sim, np.array([0]))
  assert m["top1"] == 0.0 and m["mean_rank"] == 1.5 and m["rank_score"] == pytest.approx((2 + 0.5) / 3)


def test_identification_at_chance_for_random_embeddings():
  rng = np.random.default_rng(7)
  sim = inversion.cosine_similarity(rng.normal(size=(4000, 16)), rng.normal(size=(20, 16)))
  m = inversion.identification_metrics(sim, rng.integers(0, 20, 4000))
  assert m["rank_score"] == pytest.approx(0.5, abs=0.02) and m["top1"] == pytest.approx(0.05, abs=0.015)


def test_cosine_similarity_zero_rows_and_bad_shapes():
  sim = inversion.cosine_similarity(np.zeros((1, 3)), np.ones((2, 3)))
  assert np.all(sim == 0)
  with pytest.raises(ValueError, match="same E"):
    inversion.cosine_similarity(np.zeros((1, 3)), np.ones((2, 4)))
  with pytest.raises(ValueError, match="true_index"):
    inversion.identification_metrics(np.zeros((2, 3)), np.array([0, 3]))
