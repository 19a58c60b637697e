"""PATE aggregation of teacher votes in JAX: LNMax, GNMax, Confident-GNMax, noisy averaging.

All aggregators are pure functions of (votes, key, noise parameters), jit-able and batched
over queries: `votes` is a [Q, C] histogram (Q queries, C classes) of teacher votes,
integer or float counts. Keys are passed in (`jax.random.key` or legacy uint32 keys);
nothing here makes a key.

Privacy per query, when one teacher (trained on a disjoint partition) changes its vote:
the histogram moves by at most 2 in L1 and sqrt(2) in L2. So LNMax with Laplace scale b
is (2 / b)-DP (Papernot et al. 2017), GNMax with std sigma is (alpha, alpha / sigma^2)-RDP
(Papernot et al. 2018), and answers to different queries compose.

A noise parameter of 0 is allowed and means "no noise" (plain argmax, no privacy): handy
for tests and non-private baselines. With no noise, ties go to the lowest class index.
Noise parameters are validated when they are concrete; a traced noise parameter (passed
through `jax.jit` as an array) cannot be checked at trace time.

Example:
  >>> votes = vote_histogram(teacher_predictions, num_classes=10)  # [K, Q] -> [Q, 10]
  >>> labels = gnmax(votes, jax.random.key(0), sigma=40.0)
  >>> labels, answered = confident_gnmax(votes, jax.random.key(1), threshold=150.0,
  ...                                    sigma_threshold=100.0, sigma=40.0)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

NOT_ANSWERED = -1  # Label of a query that Confident-GNMax declines to answer.


def _is_traced(x: Any) -> bool:
  return isinstance(x, jax.core.Tracer)


def _check_noise_param(name: str, value: Any) -> None:
  """Raises ValueError unless a concrete `value` is a finite scalar >= 0."""
  if _is_traced(value):
    return  # Unknown at trace time; the caller passed it as a traced array on purpose.
  v = np.asarray(value)
  if v.ndim != 0:
    raise ValueError(f"{name} must be a scalar, got shape {v.shape}")
  if not np.issubdtype(v.dtype, np.number) or not np.isfinite(v) or v < 0:
    raise ValueError(f"{name} must be a finite number >= 0 (0 means no noise), got {value!r}")


def _float_votes(votes: Any) -> jax.Array:
  """Validates the rank (and, when concrete, the counts) of `votes`; returns floats."""
  votes = jnp.asarray(votes)
  if votes.ndim != 2:
    raise ValueError(f"votes must have rank 2 [queries, classes], got shape {votes.shape}")
  if votes.shape[1] < 1:
    raise ValueError(f"votes must have at least one class, got shape {votes.shape}")
  if not _is_traced(votes):
    check_votes(votes)
  if not jnp.issubdtype(votes.dtype, jnp.floating) or votes.dtype.itemsize < 4:
    votes = votes.astype(jnp.float32)  # Low-precision floats would round the noisy counts.
  return votes


def check_votes(votes: Any) -> None:
  """Host-side check of a concrete vote histogram: rank 2, finite, no negative counts.

  The aggregators call this themselves whenever `votes` is concrete (not a tracer); call
  it explicitly before a jitted aggregation, where the values are not visible.

  Args:
    votes: [Q, C] vote counts (NumPy or concrete JAX array).

  Raises:
    ValueError: naming `votes`, for a wrong rank, non-finite values or negative counts.

  Example:
    >>> check_votes(np.array([[3, 1, 0]]))  # fine
    >>> check_votes(np.array([[3, -1, 0]]))  # ValueError: votes has negative counts ...
  """
  if _is_traced(votes):
    raise ValueError("check_votes needs concrete votes, got a tracer; call it outside jit")
  v = np.asarray(votes)
  if v.ndim != 2:
    raise ValueError(f"votes must have rank 2 [queries, classes], got shape {v.shape}")
  if not (np.issubdtype(v.dtype, np.integer) or np.issubdtype(v.dtype, np.floating)):
    raise ValueError(f"votes must hold integer or float counts, got dtype {v.dtype}")
  if v.size == 0:
    return
  if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v)):
    raise ValueError("votes has non-finite values (NaN or inf)")
  if np.any(v < 0):
    bad = np.argwhere(v < 0)[0]
    raise ValueError(f"votes has negative counts (e.g. votes[{bad[0]}, {bad[1]}] = {v[tuple(bad)]})")


def _argmax(x: jax.Array) -> jax.Array:
  return jnp.argmax(x, axis=-1).astype(jnp.int32)


def _noisy_argmax(votes: Any, key: jax.Array, name: str, std: Any, sample: Any) -> jax.Array:
  """argmax of votes + std * sample(key): the body of LNMax and GNMax."""
  _check_noise_param(name, std)
  votes = _float_votes(votes)
  return _argmax(votes + std * sample(key, votes.shape, votes.dtype))


def lnmax(votes: Any, key: jax.Array, *, scale: Any) -> jax.Array:
  """Laplacian noisy max (LNMax, Papernot et al. 2017): argmax of votes + Laplace(0, scale).

  Each entry of the [Q, C] histogram gets i.i.d. Laplace noise of scale b = `scale` >= 0
  (0: no noise); returns [Q] int32 labels. One changed teacher moves the histogram by 2
  in L1, so each answer is (2 / scale)-DP.

  Example:
    >>> lnmax(jnp.array([[10, 8, 3]]), jax.random.key(0), scale=2.0)
    Array([0], dtype=int32)
  """
  return _noisy_argmax(votes, key, "scale", scale, jax.random.laplace)


def gnmax(votes: Any, key: jax.Array, *, sigma: Any) -> jax.Array:
  """Gaussian noisy max (GNMax, Papernot et al. 2018): argmax of votes + N(0, sigma^2).

  `sigma` >= 0 is the noise std (0: no noise); returns [Q] int32 labels. One changed
  teacher moves the histogram by sqrt(2) in L2; the data-independent guarantee of each
  answer is (alpha, alpha / sigma^2)-RDP.

  Example:
    >>> gnmax(jnp.array([[10, 8, 3]]), jax.random.key(0), sigma=3.0)
    Array([0], dtype=int32)
  """
  return _noisy_argmax(votes, key, "sigma", sigma, jax.random.normal)


def confident_gnmax(votes: Any, key: jax.Array, *, threshold: Any, sigma_threshold: Any,
                    sigma: Any) -> tuple[jax.Array, jax.Array]:
  """Confident-GNMax (Papernot et al. 2018): answer only when teachers agree enough.

  A query is answered iff max(votes) + N(0, sigma_threshold^2) >= threshold; an answered
  query gets a GNMax label drawn with independent noise of std `sigma`, an unanswered one
  gets `NOT_ANSWERED` (-1). The two noises come from independent subkeys of `key`, as the
  privacy analysis (threshold check composed with GNMax) requires.

  Args:
    votes: [Q, C] vote counts.
    key: PRNG key.
    threshold: vote threshold T.
    sigma_threshold: std >= 0 of the noise on the max count (0: no noise).
    sigma: std >= 0 of the GNMax noise (0: no noise).

  Returns:
    (labels [Q] int32 with -1 where unanswered, answered [Q] bool).

  Example:
    >>> labels, answered = confident_gnmax(jnp.array([[10, 8, 3], [4, 4, 4]]), jax.random.key(0),
    ...                                    threshold=9.0, sigma_threshold=0.0, sigma=0.0)
    >>> labels, answered
    (Array([ 0, -1], dtype=int32), Array([ True, False], dtype=bool))
  """
  _check_noise_param("sigma_threshold", sigma_threshold)
  _check_noise_param("sigma", sigma)
  if not _is_traced(threshold) and np.ndim(threshold) != 0:
    raise ValueError(f"threshold must be a scalar, got shape {np.shape(threshold)}")
  votes = _float_votes(votes)
  key_threshold, key_label = jax.random.split(key)
  noisy_max = jnp.max(votes, axis=-1) + sigma_threshold * jax.random.normal(
      key_threshold, votes.shape[:1], votes.dtype)
  answered = noisy_max >= threshold
  labels = gnmax(votes, key_label, sigma=sigma)
  return jnp.where(answered, labels, jnp.int32(NOT_ANSWERED)), answered


def check_probabilities(probabilities: Any, *, atol: float = 1e-3) -> None:
  """Host-side check that concrete teacher outputs lie in the probability simplex.

  `noisy_average`'s sqrt(2) sensitivity needs every vector non-negative with sum <= 1
  (then ||p - p'||_2^2 <= ||p||_2^2 + ||p'||_2^2 <= 2); `atol` absorbs softmax rounding.

  Args:
    probabilities: [K, Q, C] teacher probability vectors.
    atol: tolerance on the sum of each vector.

  Raises:
    ValueError: naming `probabilities`, for wrong rank, non-finite, negative or
      over-unit-mass vectors.

  Example:
    >>> check_probabilities(np.full((2, 1, 4), 0.25))  # fine
  """
  if _is_traced(probabilities):
    raise ValueError("check_probabilities needs concrete probabilities, got a tracer")
  p = np.asarray(probabilities, dtype=np.float64)
  if p.ndim != 3:
    raise ValueError(f"probabilities must have rank 3 [teachers, queries, classes], got shape {p.shape}")
  if p.size == 0:
    return
  if not np.all(np.isfinite(p)):
    raise ValueError("probabilities has non-finite values (NaN or inf)")
  if np.any(p < 0):
    raise ValueError(f"probabilities has negative entries (min {p.min()})")
  if np.any(p.sum(-1) > 1 + atol):
    raise ValueError(f"probabilities has vectors summing to more than 1 (max sum {p.sum(-1).max()})")


def noisy_average(probabilities: Any, key: jax.Array, *, sigma: Any) -> tuple[jax.Array, jax.Array]:
  """Gaussian-noised average of teachers' probability vectors (soft PATE labels).

  Noise N(0, sigma^2) goes on the SUM over the K teachers, which is then divided by K.
  Sensitivity: replacing one teacher changes that sum, per query, by p - p' for two
  probability vectors p, p', whose L2 norm is at most sqrt(2) (two different one-hot
  vectors). So each query is the Gaussian mechanism with L2 sensitivity sqrt(2), i.e. a
  dp_accounting noise multiplier of sigma / sqrt(2). One teacher affects all Q queries:
  account for Q compositions (jointly, sensitivity sqrt(2 Q)).

  Args:
    probabilities: [K, Q, C] probability vectors of K teachers (non-negative, each summing
      to at most 1; checked by `check_probabilities` when concrete).
    key: PRNG key.
    sigma: std >= 0 of the noise on the sum (0: exact mean).

  Returns:
    (noisy_mean [Q, C] float, labels [Q] int32 = argmax of noisy_mean).

  Example:
    >>> probs = jnp.array([[[0.9, 0.1]], [[0.3, 0.7]]])  # K=2 teachers, Q=1, C=2
    >>> noisy_average(probs, jax.random.key(0), sigma=0.0)
    (Array([[0.6, 0.4]], dtype=float32), Array([0], dtype=int32))
  """
  _check_noise_param("sigma", sigma)
  probabilities = jnp.asarray(probabilities)
  if probabilities.ndim != 3:
    raise ValueError(
        f"probabilities must have rank 3 [teachers, queries, classes], got shape {probabilities.shape}")
  if probabilities.shape[0] < 1:
    raise ValueError("probabilities must hold at least one teacher (axis 0 is empty)")
  if not _is_traced(probabilities):
    check_probabilities(probabilities)
  if not jnp.issubdtype(probabilities.dtype, jnp.floating) or probabilities.dtype.itemsize < 4:
    probabilities = probabilities.astype(jnp.float32)  # Sum K vectors without bf16 rounding.
  num_teachers = probabilities.shape[0]
  total = jnp.sum(probabilities, axis=0)
  noisy_mean = (total + sigma * jax.random.normal(key, total.shape, total.dtype)) / num_teachers
  return noisy_mean, _argmax(noisy_mean)


def vote_histogram(teacher_predictions: Any, num_classes: int) -> jax.Array:
  """Vote counts [Q, C] from the teachers' predicted labels [K, Q] (a one-hot sum).

  When `teacher_predictions` is concrete, labels outside [0, num_classes) raise; inside
  jit they cannot be checked and contribute no vote.

  Args:
    teacher_predictions: [K, Q] integer labels of K teachers on Q queries.
    num_classes: number of classes C (a Python int; it fixes the output shape).

  Returns:
    [Q, C] int32 counts; each row sums to K.

  Example:
    >>> vote_histogram(jnp.array([[0, 2], [0, 1], [1, 2]]), num_classes=3)
    Array([[2, 1, 0],
           [0, 1, 2]], dtype=int32)
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
    raise ValueError(f"num_classes must be a Python int >= 1, got {num_classes!r}")
  preds = jnp.asarray(teacher_predictions)
  if preds.ndim != 2:
    raise ValueError(f"teacher_predictions must have rank 2 [teachers, queries], got shape {preds.shape}")
  if not jnp.issubdtype(preds.dtype, jnp.integer):
    raise ValueError(f"teacher_predictions must be integer labels, got dtype {preds.dtype}")
  if not _is_traced(preds) and preds.size:
    p = np.asarray(preds)
    if p.min() < 0 or p.max() >= num_classes:
      raise ValueError(f"teacher_predictions has labels outside [0, {num_classes}): "
                       f"min {p.min()}, max {p.max()}")
  return jnp.sum(jax.nn.one_hot(preds, int(num_classes), dtype=jnp.int32), axis=0)
