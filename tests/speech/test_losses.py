"""Tests for libs.speech.losses (RNN-T and CTC).

References are brute-force float64 NumPy sums over every alignment, so they
share no code (or lattice bookkeeping) with the implementations under test.
"""

import itertools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from libs.speech import losses

_GARBAGE = 1e4  # Large finite value written into padded positions.


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
  x = x.astype(np.float64)
  m = x.max(axis=-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _rnnt_brute_force(logits: np.ndarray, t_len: int, labels: np.ndarray,
                      u_len: int, blank_id: int) -> float:
  """-log sum over every interleaving of t_len blanks and u_len labels.

  The last symbol must be the blank emitted at frame t_len - 1, so the u_len
  label positions are chosen among the first t_len + u_len - 1 symbols.

  Args:
    logits: [T, U + 1, V] for one example.
    t_len: valid frames.
    labels: [U] label ids.
    u_len: valid labels.
    blank_id: blank index.

  Returns:
    The float64 negative log-likelihood.
  """
  log_probs = _np_log_softmax(logits)
  num_symbols = t_len + u_len
  path_scores = []
  for label_pos in itertools.combinations(range(num_symbols - 1), u_len):
    label_pos = set(label_pos)
    t = u = 0
    score = 0.0
    for i in range(num_symbols):
      if i in label_pos:
        score += log_probs[t, u, labels[u]]
        u += 1
      else:
        score += log_probs[t, u, blank_id]
        t += 1
    assert (t, u) == (t_len, u_len)
    path_scores.append(score)
  return -float(np.logaddexp.reduce(path_scores))


def _ctc_brute_force(logits: np.ndarray, t_len: int, labels: np.ndarray,
                     u_len: int, blank_id: int) -> float:
  """-log sum over every frame labelling that collapses to the labels."""
  log_probs = _np_log_softmax(logits[:t_len])
  target = tuple(int(y) for y in labels[:u_len])
  path_scores = []
  for path in itertools.product(range(logits.shape[-1]), repeat=t_len):
    collapsed = [k for k, _ in itertools.groupby(path)]
    if tuple(k for k in collapsed if k != blank_id) == target:
      path_scores.append(sum(log_probs[t, k] for t, k in enumerate(path)))
  return -float(np.logaddexp.reduce(path_scores))


def _pad_with_garbage(logits: np.ndarray, labels: np.ndarray,
                      t_lens: np.ndarray, u_lens: np.ndarray,
                      rng: np.random.Generator) -> tuple[np.ndarray, ...]:
  """Writes large values / out-of-range ids into every padded position."""
  logits = logits.copy()
  labels = labels.copy()
  for b, (t_len, u_len) in enumerate(zip(t_lens, u_lens)):
    noise = rng.choice([-_GARBAGE, _GARBAGE], size=logits.shape[1:])
    logits[b, t_len:] = noise[t_len:]
    logits[b, :, u_len + 1:] = noise[:, u_len + 1:]
    labels[b, u_len:] = rng.choice([-7, 999], size=labels.shape[1] - u_len)
  return logits, labels


def _losses_and_grad(fn: Callable[..., jax.Array], logits: np.ndarray,
                     *args: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-example losses and d(sum of losses)/d logits in one jitted call."""
  def total(z):
    per_example = fn(z, *args)
    return per_example.sum(), per_example
  (_, per_example), grad = jax.jit(jax.value_and_grad(total, has_aux=True))(
      jnp.asarray(logits))
  return np.asarray(per_example), np.asarray(grad)


def _random_rnnt_batch(
    rng: np.random.Generator, t_lens: Sequence[int], u_lens: Sequence[int],
    max_t: int, max_u: int, vocab: int, blank_id: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Random (logits, logit_lengths, labels, label_lengths), garbage-padded."""
  batch = len(t_lens)
  t_lens = np.asarray(t_lens, np.int32)
  u_lens = np.asarray(u_lens, np.int32)
  logits = rng.normal(size=(batch, max_t, max_u + 1, vocab)).astype(np.float32)
  non_blank = np.array([k for k in range(vocab) if k != blank_id])
  labels = rng.choice(non_blank, size=(batch, max_u)).astype(np.int32)
  logits, labels = _pad_with_garbage(logits, labels, t_lens, u_lens, rng)
  return logits, t_lens, labels, u_lens


@pytest.mark.parametrize('blank_id', [0, 4])
def test_rnnt_matches_alignment_enumeration(blank_id):
  rng = np.random.default_rng(0)
  max_t, max_u, vocab = 4, 3, 5
  # Every (t_b, u_b) with 1 <= t_b <= 4, 0 <= u_b <= 3 in one batch.
  t_lens, u_lens = zip(*itertools.product(range(1, max_t + 1),
                                          range(max_u + 1)))
  logits, t_lens, labels, u_lens = _random_rnnt_batch(
      rng, t_lens, u_lens, max_t, max_u, vocab, blank_id)
  got = np.asarray(losses.rnnt_loss(logits, t_lens, labels, u_lens,
                                    blank_id=blank_id))
  want = [_rnnt_brute_force(logits[b], t_lens[b], labels[b], u_lens[b],
                            blank_id) for b in range(len(t_lens))]
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_rnnt_single_frame_no_labels():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 1, 1, 5)).astype(np.float32)
  ones = np.ones(3, np.int32)
  got = losses.rnnt_loss(logits, ones, np.zeros((3, 0), np.int32), 0 * ones)
  want = -_np_log_softmax(logits)[:, 0, 0, 0]
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_rnnt_gradient_matches_finite_differences():
  rng = np.random.default_rng(2)
  logits, t_lens, labels, u_lens = _random_rnnt_batch(
      rng, [3, 2], [2, 1], max_t=3, max_u=2, vocab=4)
  with jax.enable_x64(True):
    x = jnp.asarray(logits, jnp.float64)
    weights = jnp.array([1.0, 0.7], jnp.float64)  # Exercise the cotangent.

    def f(z):
      return jnp.sum(weights * losses.rnnt_loss(z, t_lens, labels, u_lens))

    grad = np.asarray(jax.grad(f)(x))
    assert grad.dtype == np.float64
    f_jit = jax.jit(f)
    eps = 1e-6
    numeric = np.zeros_like(grad)
    for idx in np.ndindex(*x.shape):
      if np.abs(logits[idx]) >= _GARBAGE:
        continue  # Padded: the loss does not depend on it (checked below).
      numeric[idx] = (float(f_jit(x.at[idx].add(eps))) -
                      float(f_jit(x.at[idx].add(-eps)))) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, atol=1e-7)


def test_rnnt_gradient_structure():
  rng = np.random.default_rng(3)
  logits, t_lens, labels, u_lens = _random_rnnt_batch(
      rng, [5, 3, 1], [3, 0, 2], max_t=5, max_u=3, vocab=6)
  _, grad = _losses_and_grad(losses.rnnt_loss, logits, t_lens, labels, u_lens)
  assert np.all(np.isfinite(grad))
  t = np.arange(5)[None, :, None]
  u = np.arange(4)[None, None, :]
  valid = (t < t_lens[:, None, None]) & (u <= u_lens[:, None, None])
  # Softmax: the gradient w.r.t. one node's logits sums to zero.
  np.testing.assert_allclose(grad.sum(-1)[valid], 0.0, atol=1e-6)
  assert np.all(grad[~valid] == 0.0)
  assert np.any(grad[valid] != 0.0)


def test_rnnt_naive_agrees():
  rng = np.random.default_rng(4)
  logits, t_lens, labels, u_lens = _random_rnnt_batch(
      rng, [7, 6, 2, 7], [5, 2, 5, 0], max_t=7, max_u=5, vocab=6)
  args = (t_lens, labels, u_lens)
  ours, ours_grad = _losses_and_grad(losses.rnnt_loss, logits, *args)
  naive, naive_grad = _losses_and_grad(losses.rnnt_loss_naive, logits, *args)
  np.testing.assert_allclose(ours, naive, rtol=1e-5)
  np.testing.assert_allclose(ours_grad, naive_grad, atol=1e-5)


def test_rnnt_padding_invariance():
  rng = np.random.default_rng(5)
  t_len, u_len, vocab = 4, 2, 5
  single = rng.normal(size=(1, t_len, u_len + 1, vocab)).astype(np.float32)
  single_labels = np.array([[3, 1]], np.int32)
  alone, alone_grad = _losses_and_grad(
      losses.rnnt_loss, single, np.array([t_len]), single_labels,
      np.array([u_len]))

  logits, t_lens, labels, u_lens = _random_rnnt_batch(
      rng, [6, t_len, 2], [3, u_len, 1], max_t=6, max_u=4, vocab=vocab)
  logits[1] = rng.choice([-_GARBAGE, _GARBAGE], size=logits.shape[1:])
  logits[1, -1, -1, :2] = [np.inf, np.nan]  # Even non-finite garbage.
  logits[1, :t_len, :u_len + 1] = single[0]
  labels[1, :u_len] = single_labels[0]
  for fn in (losses.rnnt_loss, losses.rnnt_loss_naive):
    batched, grad = _losses_and_grad(fn, logits, t_lens, labels, u_lens)
    np.testing.assert_allclose(batched[1], alone[0], rtol=1e-6)
    np.testing.assert_allclose(grad[1, :t_len, :u_len + 1], alone_grad[0],
                               atol=1e-6)
    assert np.all(grad[1, t_len:] == 0.0)
    assert np.all(grad[1, :, u_len + 1:] == 0.0)
    assert np.all(np.isfinite(grad))


def test_rnnt_long_input_is_finite():
  rng = np.random.default_rng(6)
  max_t, max_u, vocab = 1000, 200, 32
  logits = rng.normal(size=(2, max_t, max_u + 1, vocab)).astype(np.float32)
  labels = rng.integers(1, vocab, size=(2, max_u), dtype=np.int32)
  t_lens = np.array([max_t, 700], np.int32)
  u_lens = np.array([max_u, 150], np.int32)
  loss, grad = _losses_and_grad(losses.rnnt_loss, logits, t_lens, labels,
                                u_lens)
  assert np.all(np.isfinite(loss)) and np.all(loss > 0)
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad.sum(-1)[0], 0.0, atol=1e-4)
  assert np.all(grad[1, 700:] == 0.0)


def test_rnnt_bfloat16_input():
  rng = np.random.default_rng(7)
  logits, t_lens, labels, u_lens = _random_rnnt_batch(
      rng, [5, 3], [3, 1], max_t=5, max_u=3, vocab=6)
  x16 = jnp.asarray(logits, jnp.bfloat16)
  loss16, grad16 = jax.value_and_grad(lambda z: losses.rnnt_loss(
      z, t_lens, labels, u_lens).sum())(x16)
  loss32 = losses.rnnt_loss(x16.astype(jnp.float32), t_lens, labels, u_lens)
  assert grad16.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(grad16, np.float32)))
  np.testing.assert_allclose(loss16, loss32.sum(), rtol=1e-6)


def test_ctc_matches_path_enumeration():
  rng = np.random.default_rng(8)
  max_t, max_u, vocab = 5, 3, 4
  t_lens = np.array([5, 5, 4, 3, 1], np.int32)
  u_lens = np.array([3, 2, 1, 0, 1], np.int32)
  labels = np.array([[1, 1, 2], [3, 3, 0], [2, 0, 0], [1, 1, 1],
                     [3, 0, 0]], np.int32)  # Includes repeats.
  logits = rng.normal(size=(5, max_t, vocab)).astype(np.float32)
  for b, (t_len, u_len) in enumerate(zip(t_lens, u_lens)):
    logits[b, t_len:] = _GARBAGE
    labels[b, u_len:] = labels[b, u_len - 1] if u_len else 2  # Fake repeat.
  got = losses.ctc_loss(logits, t_lens, labels, u_lens)
  want = [_ctc_brute_force(logits[b], t_lens[b], labels[b], u_lens[b], 0)
          for b in range(5)]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  grad = jax.grad(lambda z: losses.ctc_loss(
      z, t_lens, labels, u_lens).sum())(jnp.asarray(logits))
  assert np.all(np.isfinite(grad))
  assert np.all(np.asarray(grad[2, 4:]) == 0.0)


@pytest.mark.parametrize('fn', [losses.rnnt_loss, losses.rnnt_loss_naive])
def test_rnnt_bad_shapes_raise(fn):
  logits = np.zeros((2, 4, 3, 5), np.float32)
  labels = np.ones((2, 2), np.int32)
  lens = np.array([4, 3], np.int32)
  with pytest.raises(ValueError, match='logits'):
    fn(logits[0], lens, labels, lens)
  with pytest.raises(ValueError, match=r'labels\.shape\[1\]'):
    fn(logits, lens, labels[:, :1], lens)
  with pytest.raises(ValueError, match='labels'):
    fn(logits, lens, labels[:1], lens)
  with pytest.raises(ValueError, match='logit_lengths'):
    fn(logits, lens[:1], labels, lens)
  with pytest.raises(ValueError, match='label_lengths'):
    fn(logits, lens, labels, lens[:, None])
  with pytest.raises(ValueError, match='blank_id'):
    fn(logits, lens, labels, lens, blank_id=5)


def test_ctc_bad_shapes_raise():
  logits = np.zeros((2, 4, 5), np.float32)
  labels = np.ones((2, 2), np.int32)
  lens = np.array([4, 2], np.int32)
  with pytest.raises(ValueError, match='logits'):
    losses.ctc_loss(logits[..., None], lens, labels, lens)
  with pytest.raises(ValueError, match='labels'):
    losses.ctc_loss(logits, lens, labels[:1], lens)
  with pytest.raises(ValueError, match='logit_lengths'):
    losses.ctc_loss(logits, lens[:1], labels, lens)
  with pytest.raises(ValueError, match='label_lengths'):
    losses.ctc_loss(logits, lens, labels, lens[:1])
