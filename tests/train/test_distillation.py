"""Distillation loss and counterfactual teacher targets against NumPy float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from libs.data import gender_text as gt
from libs.models.lm import next_token_nll
from libs.train import distillation as dl


def _probs(rng, shape):
  logits = 3.0 * rng.normal(size=shape)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return p / p.sum(-1, keepdims=True)


def _reference_loss(logits, teacher, targets, mask, alpha, temperature):
  logits = logits.astype(np.float64)
  teacher = teacher.astype(np.float64)
  log_s = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
      -1, keepdims=True)
  z = logits / temperature
  log_s_t = z - z.max(-1, keepdims=True) - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
  q = teacher ** (1.0 / temperature)
  q /= q.sum(-1, keepdims=True)
  b, t = targets.shape
  out = np.zeros(b)
  for i in range(b):
    total, count = 0.0, 0.0
    for j in range(t):
      if not mask[i, j]:
        continue
      ce = -log_s[i, j, targets[i, j]]
      kl = sum(q[i, j, v] * (np.log(q[i, j, v]) - log_s_t[i, j, v]) for v in range(q.shape[-1]) if q[i, j, v] > 0)
      total += alpha * ce + (1 - alpha) * temperature ** 2 * kl
      count += 1
    out[i] = total / count if count else 0.0
  return out


@pytest.mark.parametrize("alpha, temperature", [(0.0, 1.0), (0.3, 2.0), (0.7, 0.5), (1.0, 3.0)])
def test_distillation_loss_matches_float64_reference(alpha, temperature):
  rng = np.random.default_rng(0)
  b, t, v = 4, 6, 9
  logits = rng.normal(size=(b, t, v)).astype(np.float32)
  teacher = _probs(rng, (b, t, v))
  teacher[0, 0, :3] = 0.0  # Zero teacher probabilities: their KL terms are 0, not NaN.
  teacher[0, 0] /= teacher[0, 0].sum()
  targets = rng.integers(v, size=(b, t))
  mask = rng.random((b, t)) < 0.7
  mask[1] = False  # A fully masked row.
  got = dl.distillation_loss(jnp.asarray(logits), jnp.asarray(teacher, jnp.float32), jnp.asarray(targets),
                             jnp.asarray(mask), alpha=alpha, temperature=temperature)
  want = _reference_loss(logits, teacher, targets, mask, alpha, temperature)
  assert got.shape == (b,) and np.all(np.isfinite(np.asarray(got)))
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)
  assert float(got[1]) == 0.0


def test_fully_masked_batch_has_finite_loss_and_gradients():
  logits = jnp.zeros((2, 3, 5))
  teacher = jnp.full((2, 3, 5), 0.2)
  grad = jax.grad(lambda z: jnp.sum(dl.distillation_loss(z, teacher, jnp.zeros((2, 3), jnp.int32),
                                                         jnp.zeros((2, 3)), alpha=0.5, temperature=2.0)))(logits)
  assert np.all(np.isfinite(np.asarray(grad))) and float(jnp.abs(grad).max()) == 0.0


def test_alpha_one_is_plain_next_token_cross_entropy():
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(1, 11, size=(3, 7)))
  tokens = tokens.at[0, 5:].set(0)  # Padding.
  logits = jnp.asarray(rng.normal(size=(3, 7, 11)), jnp.float32)
  teacher = jnp.asarray(_probs(rng, (3, 7, 11)), jnp.float32)
  got = dl.distillation_loss(logits[:, :-1], teacher[:, :-1], tokens[:, 1:], tokens[:, 1:] > 0, alpha=1.0,
                             temperature=2.0)
  np.testing.assert_allclose(np.asarray(got), np.asarray(next_token_nll(logits, tokens, tokens > 0)), rtol=1e-6)


def test_alpha_zero_with_student_equal_to_teacher_is_zero():
  rng = np.random.default_rng(2)
  teacher = _probs(rng, (2, 4, 6)).astype(np.float32)
  loss = dl.distillation_loss(jnp.log(jnp.asarray(teacher)), jnp.asarray(teacher), jnp.zeros((2, 4), jnp.int32),
                              jnp.ones((2, 4)), alpha=0.0, temperature=2.0)
  np.testing.assert_allclose(np.asarray(loss), 0.0, atol=1e-5)


def test_tempered_at_one_is_identity_and_sharpens_below_one():
  p = jnp.array([0.7, 0.2, 0.1, 0.0])
  np.testing.assert_allclose(np.asarray(dl.tempered(p, 1.0)), np.asarray(p))
  sharp = np.asarray(dl.tempered(p, 0.5))
  np.testing.assert_allclose(sharp, np.array([0.49, 0.04, 0.01, 0.0]) / 0.54, rtol=1e-6)


def _sentences(vocab):
  texts = ["the nurse said that she would check the patient charts", "set a timer for ten minutes",
           "my brother works as a nurse and he loves it", "ask the pilot if he can fly the plane today"]
  return np.stack([vocab.encode(t) for t in texts])


def test_gendered_prefix_is_a_cumulative_or_over_the_context():
  vocab = gt.vocabulary()
  tokens = _sentences(vocab)
  got = np.asarray(dl.gendered_prefix(jnp.asarray(tokens), jnp.asarray(vocab.swap_ids)))
  changed = vocab.swap_ids[tokens] != tokens
  want = np.array([[changed[i, :t + 1].any() for t in range(tokens.shape[1])] for i in range(len(tokens))])
  np.testing.assert_array_equal(got, want)
  assert not got[0, :5].any() and got[0, 5:].all()  # <bos> the nurse said that | she ...
  assert not got[1].any()  # role-neutral
  assert got[2, 2:].all() and not got[2, :2].any()  # <bos> my | brother ...


@pytest.mark.parametrize("mix", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("mapped", [False, True])
def test_counterfactual_teacher_probs_against_float64_reference(mix, mapped):
  vocab = gt.vocabulary()
  tokens = _sentences(vocab)
  rng = np.random.default_rng(3)
  shape = tokens.shape + (len(vocab),)
  probs, probs_rev = _probs(rng, shape), _probs(rng, shape)
  gendered = np.asarray(dl.gendered_prefix(jnp.asarray(tokens), jnp.asarray(vocab.swap_ids)))
  got = np.asarray(dl.counterfactual_teacher_probs(
      jnp.asarray(probs, jnp.float32), jnp.asarray(probs_rev, jnp.float32), jnp.asarray(gendered), mix=mix,
      swap_ids=jnp.asarray(vocab.swap_ids) if mapped else None))
  reversed_ = probs_rev[..., vocab.swap_ids] if mapped else probs_rev
  want = np.where(gendered[..., None], (1 - mix) * probs + mix * reversed_, probs)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)
  # Role-neutral prefixes: exactly the teacher's distribution (bit for bit).
  np.testing.assert_array_equal(got[~gendered], probs.astype(np.float32)[~gendered])


def test_mapped_mixture_on_a_role_neutral_context_balances_only_gendered_words():
  vocab = gt.vocabulary()
  rng = np.random.default_rng(4)
  probs = _probs(rng, (1, 3, len(vocab))).astype(np.float32)
  everywhere = jnp.ones((1, 3), bool)
  # A role-neutral context is its own reversal: the teacher's two distributions are the same.
  got = np.asarray(dl.counterfactual_teacher_probs(jnp.asarray(probs), jnp.asarray(probs), everywhere, mix=0.5,
                                                   swap_ids=jnp.asarray(vocab.swap_ids)))
  he, she = vocab.index["he"], vocab.index["she"]
  np.testing.assert_allclose(got[..., he], got[..., she], rtol=1e-6)
  np.testing.assert_allclose(got[..., he], (probs[..., he] + probs[..., she]) / 2, rtol=1e-6)
  neutral = vocab.swap_ids == np.arange(len(vocab))
  np.testing.assert_array_equal(got[..., neutral], probs[..., neutral])
  np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)


def test_mapped_mixture_keeps_gender_agreement():
  # "my sister ... and" -> she 0.9, he 0.1; its reversal "my brother ... and" -> he 0.7, she 0.3.
  vocab = gt.vocabulary()
  he, she, v = vocab.index["he"], vocab.index["she"], len(vocab)
  p, p_rev = np.zeros((1, 1, v), np.float32), np.zeros((1, 1, v), np.float32)
  p[..., she], p[..., he] = 0.9, 0.1
  p_rev[..., he], p_rev[..., she] = 0.7, 0.3
  got = np.asarray(dl.counterfactual_teacher_probs(jnp.asarray(p), jnp.asarray(p_rev), jnp.ones((1, 1), bool),
                                                   mix=0.5, swap_ids=jnp.asarray(vocab.swap_ids)))
  np.testing.assert_allclose([got[0, 0, she], got[0, 0, he]], [0.8, 0.2], rtol=1e-6)
  raw = np.asarray(dl.counterfactual_teacher_probs(jnp.asarray(p), jnp.asarray(p_rev), jnp.ones((1, 1), bool),
                                                   mix=0.5))
  np.testing.assert_allclose([raw[0, 0, she], raw[0, 0, he]], [0.6, 0.4], rtol=1e-6)


def test_optax_cross_entropy_is_the_hard_term():
  # The hard term is the usual integer-label cross-entropy (optax's), position by position.
  rng = np.random.default_rng(5)
  logits = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
  targets = jnp.asarray(rng.integers(4, size=(2, 3)))
  got = dl.distillation_loss(logits, jnp.full((2, 3, 4), 0.25), targets, jnp.ones((2, 3)), alpha=1.0,
                             temperature=1.0)
  want = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean(-1)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
