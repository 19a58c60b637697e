"""PATE aggregators: exact answer distributions (chi-square, KS), purity, jit and validation.

Each distribution test checks the samples against probabilities computed independently in
float64 by numerical integration, and checks that the same samples reject a wrong noise
scale, so the test has power to fail. Keys are fixed, so the tests are deterministic.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from libs.dp import pate_aggregators as pate

VOTES = np.array([10.0, 8.0, 3.0])
NUM_DRAWS = 200_000


def _noisy_max_probs(votes, dist) -> np.ndarray:
  """Pr[argmax_i (v_i + noise_i) = i] = int pdf_i(x) prod_{j != i} cdf_j(x) dx, in float64."""
  noise = [dist(loc=v) for v in votes]
  spread = float(noise[0].std())
  lo, hi = votes.min() - 40 * spread, votes.max() + 40 * spread
  probs = []
  for i in range(len(votes)):
    def integrand(x, i=i):
      others = np.prod([noise[j].cdf(x) for j in range(len(votes)) if j != i])
      return noise[i].pdf(x) * others
    value, _ = integrate.quad(integrand, lo, hi, points=list(votes), limit=500, epsabs=1e-13)
    probs.append(value)
  probs = np.array(probs)
  assert abs(probs.sum() - 1) < 1e-8
  return probs


@functools.lru_cache(maxsize=None)
def _laplace_probs(scale):
  return _noisy_max_probs(VOTES, functools.partial(stats.laplace, scale=scale))


@functools.lru_cache(maxsize=None)
def _gauss_probs(sigma):
  return _noisy_max_probs(VOTES, functools.partial(stats.norm, scale=sigma))


def _chisquare_pvalue(labels, probs) -> float:
  labels = np.asarray(labels)
  assert labels.min() >= 0
  counts = np.bincount(labels, minlength=len(probs))
  assert len(counts) == len(probs)
  return stats.chisquare(counts, probs * counts.sum()).pvalue


def _tiled(n=NUM_DRAWS):
  return jnp.tile(jnp.asarray(VOTES, jnp.float32), (n, 1))


def test_lnmax_matches_exact_distribution_and_rejects_wrong_scale():
  labels = pate.lnmax(_tiled(), jax.random.key(0), scale=2.0)
  assert labels.shape == (NUM_DRAWS,) and labels.dtype == jnp.int32
  assert _chisquare_pvalue(labels, _laplace_probs(2.0)) > 1e-3
  assert _chisquare_pvalue(labels, _laplace_probs(4.0)) < 1e-6
  assert _chisquare_pvalue(labels, _laplace_probs(1.0)) < 1e-6


def test_gnmax_matches_exact_distribution_and_rejects_wrong_sigma():
  labels = pate.gnmax(_tiled(), jax.random.key(1), sigma=3.0)
  assert labels.shape == (NUM_DRAWS,) and labels.dtype == jnp.int32
  assert _chisquare_pvalue(labels, _gauss_probs(3.0)) > 1e-3
  assert _chisquare_pvalue(labels, _gauss_probs(6.0)) < 1e-6
  assert _chisquare_pvalue(labels, _gauss_probs(1.5)) < 1e-6


def test_confident_gnmax_answer_rate_and_labels():
  threshold, sigma_threshold, sigma = 9.0, 2.0, 3.0
  labels, answered = pate.confident_gnmax(_tiled(), jax.random.key(2), threshold=threshold,
                                          sigma_threshold=sigma_threshold, sigma=sigma)
  labels, answered = np.asarray(labels), np.asarray(answered)
  assert answered.dtype == bool and labels.dtype == np.int32
  # Pr[max + N(0, s^2) >= T] = Pr[N(0, 1) >= (T - max) / s].
  exact_rate = stats.norm.sf((threshold - VOTES.max()) / sigma_threshold)
  wrong_rate = stats.norm.sf((threshold - VOTES.max()) / (2 * sigma_threshold))
  assert stats.binomtest(int(answered.sum()), NUM_DRAWS, exact_rate).pvalue > 1e-3
  assert stats.binomtest(int(answered.sum()), NUM_DRAWS, wrong_rate).pvalue < 1e-6
  assert np.all(labels[~answered] == pate.NOT_ANSWERED)
  # Independent noises: answered labels are distributed exactly like GNMax's.
  assert _chisquare_pvalue(labels[answered], _gauss_probs(sigma)) > 1e-3
  assert _chisquare_pvalue(labels[answered], _gauss_probs(2 * sigma)) < 1e-6


def test_confident_gnmax_without_noise_is_a_hard_threshold():
  votes = jnp.array([[10, 8, 3], [4, 4, 4], [0, 9, 0]])
  labels, answered = pate.confident_gnmax(votes, jax.random.key(0), threshold=9,
                                          sigma_threshold=0.0, sigma=0.0)
  np.testing.assert_array_equal(answered, [True, False, True])
  np.testing.assert_array_equal(labels, [0, -1, 1])


def _teacher_probs(k=4, q=20_000, c=5):
  return np.random.default_rng(0).dirichlet(np.ones(c), size=(k, q)).astype(np.float32)


def test_noisy_average_exact_without_noise():
  probs = _teacher_probs()
  mean, labels = pate.noisy_average(probs, jax.random.key(0), sigma=0.0)
  np.testing.assert_allclose(mean, probs.astype(np.float64).mean(0), atol=1e-6)
  np.testing.assert_array_equal(labels, np.argmax(np.asarray(mean), -1))


def test_noisy_average_noise_on_sum_has_std_sigma():
  probs, sigma = _teacher_probs(), 1.5
  mean, labels = pate.noisy_average(probs, jax.random.key(3), sigma=sigma)
  noise = (np.asarray(mean, np.float64) * probs.shape[0] - probs.astype(np.float64).sum(0)).ravel()
  assert stats.kstest(noise, stats.norm(scale=sigma).cdf).pvalue > 1e-3
  assert stats.kstest(noise, stats.norm(scale=sigma * 2 / 3).cdf).pvalue < 1e-6
  assert stats.kstest(noise, stats.norm(scale=sigma * 3 / 2).cdf).pvalue < 1e-6
  np.testing.assert_array_equal(labels, np.argmax(np.asarray(mean), -1))


def test_vote_histogram_counts_and_jit():
  rng = np.random.default_rng(0)
  preds = rng.integers(0, 7, size=(11, 50))
  expected = np.stack([np.bincount(preds[:, j], minlength=7) for j in range(50)])
  hist = pate.vote_histogram(preds, 7)
  assert hist.dtype == jnp.int32 and hist.shape == (50, 7)
  np.testing.assert_array_equal(hist, expected)
  np.testing.assert_array_equal(jax.jit(pate.vote_histogram, static_argnums=1)(preds, 7), expected)


@pytest.mark.parametrize("aggregate", [
    functools.partial(pate.lnmax, scale=2.0),
    functools.partial(pate.gnmax, sigma=2.0),
    lambda v, k: pate.confident_gnmax(v, k, threshold=8.0, sigma_threshold=2.0, sigma=2.0)[0],
])
def test_purity_keys_and_jit(aggregate):
  votes = jnp.tile(jnp.array([[5.0, 5.0, 4.0]]), (1000, 1))
  a = aggregate(votes, jax.random.key(7))
  np.testing.assert_array_equal(a, aggregate(votes, jax.random.key(7)))
  assert np.any(np.asarray(a) != np.asarray(aggregate(votes, jax.random.key(8))))
  np.testing.assert_array_equal(a, jax.jit(aggregate)(votes, jax.random.key(7)))
  np.testing.assert_array_equal(a, aggregate(votes.astype(jnp.int32), jax.random.key(7)))


def test_traced_noise_parameter_and_legacy_key():
  votes = jnp.tile(jnp.array([[5.0, 5.0, 4.0]]), (1000, 1))  # Same shape as above: reuses compiles.
  key = jax.random.key(7)
  traced = jax.jit(pate.gnmax)(votes, key, sigma=jnp.float32(2.0))
  np.testing.assert_array_equal(traced, pate.gnmax(votes, key, sigma=2.0))
  legacy = pate.gnmax(votes, jax.random.PRNGKey(7), sigma=2.0)  # Raw uint32 keys work too.
  assert legacy.shape == (1000,) and legacy.dtype == jnp.int32


def test_zero_noise_is_plain_argmax():
  votes = jnp.array([[1, 7, 3], [9, 0, 9]])
  key = jax.random.key(0)
  for labels in (pate.lnmax(votes, key, scale=0.0), pate.gnmax(votes, key, sigma=0)):
    np.testing.assert_array_equal(labels, [1, 0])  # Ties go to the lowest index.


@pytest.mark.parametrize("call, match", [
    (lambda v, k: pate.lnmax(v, k, scale=-1.0), r"^scale must be"),
    (lambda v, k: pate.gnmax(v, k, sigma=-0.1), r"^sigma must be"),
    (lambda v, k: pate.gnmax(v, k, sigma=float("nan")), r"^sigma must be"),
    (lambda v, k: pate.confident_gnmax(v, k, threshold=1.0, sigma_threshold=-1.0, sigma=1.0),
     r"^sigma_threshold must be"),
    (lambda v, k: pate.confident_gnmax(v, k, threshold=1.0, sigma_threshold=1.0, sigma=-1.0),
     r"^sigma must be"),
    (lambda v, k: pate.gnmax(v[0], k, sigma=1.0), r"^votes must have rank 2"),
    (lambda v, k: pate.lnmax(v[None], k, scale=1.0), r"^votes must have rank 2"),
    (lambda v, k: pate.gnmax(-v, k, sigma=1.0), r"^votes has negative counts"),
    (lambda v, k: pate.noisy_average(jnp.ones((2, 3)) / 3, k, sigma=1.0), r"^probabilities must have rank 3"),
    (lambda v, k: pate.noisy_average(jnp.ones((2, 3, 3)) / 3, k, sigma=-1.0), r"^sigma must be"),
    (lambda v, k: pate.noisy_average(jnp.ones((2, 3, 3)), k, sigma=1.0),
     r"^probabilities has vectors summing"),
    (lambda v, k: pate.vote_histogram(jnp.array([[0, 3]]), 3), r"^teacher_predictions has labels outside"),
    (lambda v, k: pate.vote_histogram(jnp.array([0, 1]), 3), r"^teacher_predictions must have rank 2"),
    (lambda v, k: pate.vote_histogram(jnp.array([[0, 1]]), 0), r"^num_classes must be"),
])
def test_bad_input_raises_naming_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call(jnp.array([[3.0, 1.0, 0.0]]), jax.random.key(0))


def test_check_votes():
  pate.check_votes(np.array([[3, 1, 0], [0, 0, 4]]))
  with pytest.raises(ValueError, match=r"votes has negative counts"):
    pate.check_votes(np.array([[3, -1, 0]]))
  with pytest.raises(ValueError, match=r"votes has non-finite"):
    pate.check_votes(np.array([[3.0, np.nan, 0.0]]))
  with pytest.raises(ValueError, match=r"votes must have rank 2"):
    pate.check_votes(np.array([3, 1]))
  # Under jit the counts are not visible: no error at trace time, the caller checks first.
  jax.jit(functools.partial(pate.gnmax, sigma=1.0))(jnp.array([[3.0, -1.0]]), jax.random.key(0))
