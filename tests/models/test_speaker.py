"""Speaker embeddings: padding invariance, finite pooling, the pairwise loss against a NumPy
reference, adversarial reweighting (ARL weights, pair-sum rule, stop-gradient) and a tiny
training run that separates synthetic speakers."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from libs.models import speaker

_SMALL = speaker.SpeakerConfig(channels=16, embed_dim=8, layers=((3, 1), (3, 2), (1, 1)))


def _features(rng, b=4, t=12, f=6):
  return jnp.asarray(rng.standard_normal((b, t, f)), jnp.float32)


def _init(cfg=_SMALL, feats=None, lengths=None):
  enc = speaker.SpeakerEncoder(cfg)
  params = jax.jit(enc.init, static_argnames="train")(jax.random.key(0), feats, lengths, train=False)["params"]
  return enc, params


def test_encoder_output_shape_and_no_batch_stats():
  feats = _features(np.random.default_rng(0))
  lengths = jnp.array([12, 7, 3, 1])
  enc = speaker.SpeakerEncoder(_SMALL)
  variables = jax.jit(enc.init, static_argnames="train")(jax.random.key(0), feats, lengths, train=False)
  assert set(variables) == {"params"}
  out = enc.apply(variables, feats, lengths, train=False)
  assert out.shape == (4, 8) and out.dtype == jnp.float32


def test_encoder_ignores_frames_past_lengths():
  rng = np.random.default_rng(1)
  feats = _features(rng)
  lengths = jnp.array([12, 7, 3, 1])
  enc, params = _init(feats=feats, lengths=lengths)
  apply = jax.jit(lambda p, x, n: enc.apply({"params": p}, x, n, train=False))
  ref = apply(params, feats, lengths)
  pad = ~(np.arange(12)[None, :, None] < np.asarray(lengths)[:, None, None])
  changed = jnp.where(pad, 100.0 * rng.standard_normal(feats.shape), feats)
  np.testing.assert_allclose(apply(params, changed, lengths), ref, rtol=1e-5, atol=1e-5)
  with_nan = jnp.where(pad, jnp.nan, feats)
  np.testing.assert_allclose(apply(params, with_nan, lengths), ref, rtol=1e-5, atol=1e-5)
  # Padding the batch further does not change it either.
  longer = jnp.concatenate([feats, 7.0 * jnp.ones((4, 5, 6))], axis=1)
  np.testing.assert_allclose(apply(params, longer, lengths), ref, rtol=1e-5, atol=1e-5)
  # Nor does the gradient depend on (or turn NaN from) padded frames.
  grad = jax.grad(lambda p, x: jnp.sum(apply(p, x, lengths) ** 2))
  g_ref, g_nan = grad(params, feats), grad(params, with_nan)
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_nan)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_encoder_finite_for_length_one_and_constant_inputs():
  feats = jnp.concatenate([jnp.full((2, 9, 6), 3.0), jnp.zeros((2, 9, 6))])
  lengths = jnp.array([1, 9, 1, 9])
  enc, params = _init(feats=feats, lengths=lengths)
  fn = lambda p: jnp.sum(enc.apply({"params": p}, feats, lengths, train=False) ** 2)
  value, grads = jax.jit(jax.value_and_grad(fn))(params)
  assert np.isfinite(value)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  pooled, pool_grad = jax.value_and_grad(lambda x: jnp.sum(speaker.stats_pool(x, jnp.array([1, 5, 0]))))(
      jnp.ones((3, 5, 2)))
  assert np.isfinite(pooled) and np.all(np.isfinite(pool_grad))


def test_encoder_dropout_needs_train():
  cfg = speaker.SpeakerConfig(channels=8, embed_dim=4, layers=((3, 1),), dropout=0.5)
  feats = _features(np.random.default_rng(2))
  lengths = jnp.array([12, 5, 3, 2])
  enc, params = _init(cfg, feats, lengths)
  a = enc.apply({"params": params}, feats, lengths, train=False)
  b = enc.apply({"params": params}, feats, lengths, train=False)
  np.testing.assert_array_equal(a, b)
  c = enc.apply({"params": params}, feats, lengths, train=True, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(a, c)


@pytest.mark.parametrize("kwargs", [dict(channels=0), dict(layers=()), dict(layers=((3, 0),)),
                                    dict(dropout=1.0)])
def test_config_rejects_bad_values(kwargs):
  with pytest.raises(ValueError, match="SpeakerConfig"):
    speaker.SpeakerConfig(**kwargs)


def test_cosine_scores_guard_zero_norms():
  a = jnp.array([[3.0, 4.0], [0.0, 0.0]])
  b = jnp.array([[1.0, 0.0], [0.0, 2.0], [-3.0, -4.0]])
  np.testing.assert_allclose(speaker.cosine_scores(a, b), [[0.6, 0.8, -1.0], [0.0, 0.0, 0.0]], atol=1e-6)
  g = jax.grad(lambda x: jnp.sum(speaker.cosine_scores(x, b)))(a)
  assert np.all(np.isfinite(g))
  with pytest.raises(ValueError, match="same E"):
    speaker.cosine_scores(a, jnp.ones((2, 3)))


@pytest.mark.parametrize("b", [0, 1, 2, 5, 8])
def test_pair_indices_cover_each_unordered_pair_once(b):
  i, j = speaker.pair_indices(b)
  assert i.dtype == np.int32 and len(i) == b * (b - 1) // 2
  assert list(zip(i.tolist(), j.tolist())) == list(itertools.combinations(range(b), 2))


def _numpy_pairwise_loss(emb, labels, scale, bias, pair_weights=None, valid=None):
  emb = np.asarray(emb, np.float64)
  b = len(emb)
  pos_num = pos_den = neg_num = neg_den = 0.0
  for k, (i, j) in enumerate(itertools.combinations(range(b), 2)):
    if valid is not None and not (valid[i] and valid[j]):
      continue
    w = 1.0 if pair_weights is None else float(pair_weights[k])
    cos = emb[i] @ emb[j] / (np.linalg.norm(emb[i]) * np.linalg.norm(emb[j]))
    p = 1.0 / (1.0 + np.exp(-(scale * cos + bias)))
    if labels[i] == labels[j]:
      pos_num += -w * np.log(p)
      pos_den += w
    else:
      neg_num += -w * np.log(1.0 - p)
      neg_den += w
  terms = [num / den for num, den in ((pos_num, pos_den), (neg_num, neg_den)) if den > 0]
  return float(np.mean(terms)) if terms else 0.0


def test_pairwise_loss_matches_numpy_reference():
  rng = np.random.default_rng(3)
  emb = rng.standard_normal((7, 5)).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 1, 2, 0])
  pw = rng.uniform(0.5, 3.0, 21).astype(np.float32)
  valid = np.array([1, 1, 1, 0, 1, 1, 1], bool)
  loss = jax.jit(speaker.pairwise_loss)
  for kw in (dict(), dict(pair_weights=pw), dict(valid=valid), dict(pair_weights=pw, valid=valid)):
    got = loss(jnp.asarray(emb), jnp.asarray(labels), 7.0, -2.0, **kw)
    np.testing.assert_allclose(got, _numpy_pairwise_loss(emb, labels, 7.0, -2.0, **kw), rtol=1e-5, err_msg=str(kw))
  # Padded examples may hold NaN without effect; uniform pair weights change nothing.
  nan_emb = np.where(valid[:, None], emb, np.nan)
  np.testing.assert_allclose(speaker.pairwise_loss(nan_emb, labels, 7.0, -2.0, valid=valid),
                             _numpy_pairwise_loss(emb, labels, 7.0, -2.0, valid=valid), rtol=1e-5)
  np.testing.assert_allclose(speaker.pairwise_loss(emb, labels, 7.0, -2.0, pair_weights=np.full(21, 3.0)),
                             _numpy_pairwise_loss(emb, labels, 7.0, -2.0), rtol=1e-5)
  g = jax.grad(lambda e: speaker.pairwise_loss(e, labels, 7.0, -2.0, valid=valid))(jnp.asarray(nan_emb))
  assert np.all(np.isfinite(g)) and np.all(g[~valid] == 0)


def test_pairwise_loss_single_class_and_empty():
  emb = np.random.default_rng(4).standard_normal((4, 3)).astype(np.float32)
  for labels in ([0, 1, 2, 3], [5, 5, 5, 5]):
    np.testing.assert_allclose(speaker.pairwise_loss(emb, np.array(labels), 5.0, 0.0),
                               _numpy_pairwise_loss(emb, labels, 5.0, 0.0), rtol=1e-5)
  assert float(speaker.pairwise_loss(emb, np.arange(4), 5.0, 0.0, valid=np.array([1, 0, 0, 0]))) == 0.0
  with pytest.raises(ValueError, match="pair_weights must have shape"):
    speaker.pairwise_loss(emb, np.arange(4), 5.0, 0.0, pair_weights=np.ones(5))


def test_loss_params_positive_scale():
  lp = speaker.init_loss_params(10.0, -5.0)
  scale, bias = speaker.scale_and_bias(jax.tree.map(lambda x: x - 20.0, lp))
  assert float(scale) > 0
  np.testing.assert_allclose(speaker.scale_and_bias(lp), (10.0, -5.0), rtol=1e-6)


def test_example_weights_arl_form():
  rng = np.random.default_rng(5)
  scores = jnp.asarray(rng.standard_normal(6) * 30, jnp.float32)
  valid = np.array([1, 1, 0, 1, 1, 0], bool)
  w = speaker.example_weights(scores, valid)
  assert w.shape == (6,)
  n = valid.sum()
  assert np.all(np.asarray(w)[valid] >= 1.0)
  np.testing.assert_array_equal(np.asarray(w)[~valid], 0.0)
  np.testing.assert_allclose(np.sum(w), 2 * n, rtol=1e-5)
  s = np.asarray(scores, np.float64)[valid]
  np.testing.assert_allclose(np.asarray(w)[valid], 1 + n * np.exp(s - s.max()) / np.exp(s - s.max()).sum(),
                             rtol=1e-5)
  np.testing.assert_allclose(speaker.example_weights(jnp.zeros(4)), 2.0)
  # Padded scores may be anything; no valid example at all gives zeros.
  np.testing.assert_allclose(speaker.example_weights(jnp.where(valid, scores, jnp.nan), valid), w, rtol=1e-6)
  np.testing.assert_array_equal(speaker.example_weights(scores, np.zeros(6, bool)), 0.0)
  g = jax.grad(lambda s: speaker.example_weights(s, valid)[0])(scores)
  assert np.all(np.isfinite(g))


def test_pair_weights_are_sums():
  w = jnp.array([1.0, 2.5, 4.0, 1.5])
  i, j = speaker.pair_indices(4)
  pw = speaker.pair_weights(w, i, j)
  expected = [float(w[a] + w[b]) for a, b in itertools.combinations(range(4), 2)]
  np.testing.assert_allclose(pw, expected)


def _arw_setup(b=8, e=6, clusters=3):
  rng = np.random.default_rng(6)
  emb = jnp.asarray(rng.standard_normal((b, e)), jnp.float32)
  labels = jnp.asarray(np.repeat(np.arange(b // 2), 2))
  cluster_ids = jnp.asarray(rng.integers(0, clusters, b))
  adversary = speaker.Adversary(num_clusters=clusters, hidden=(16,))
  adv_params = adversary.init(jax.random.key(0), emb, cluster_ids)["params"]
  return emb, labels, cluster_ids, adversary, adv_params


def test_adversary_objective_has_no_gradient_to_embeddings():
  emb, labels, clusters, adversary, adv_params = _arw_setup()
  scores = adversary.apply({"params": adv_params}, emb, clusters)
  assert scores.shape == (8,)
  lp = speaker.init_loss_params()
  valid = jnp.array([1, 1, 1, 1, 1, 1, 1, 0], bool)

  def adversary_loss(e, p):
    return speaker.arw_losses(e, labels, clusters, lp, adversary, p, valid=valid)[1]

  g_emb, g_adv = jax.jit(jax.grad(adversary_loss, argnums=(0, 1)))(emb, adv_params)
  np.testing.assert_array_equal(g_emb, 0.0)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(g_adv)) > 0
  # The extractor's loss sends nothing to the adversary, and the two objectives are opposite.
  ext = lambda e, p: speaker.arw_losses(e, labels, clusters, lp, adversary, p, valid=valid)[0]
  g_emb, g_adv = jax.jit(jax.grad(ext, argnums=(0, 1)))(emb, adv_params)
  assert float(jnp.sum(jnp.abs(g_emb))) > 0
  assert all(np.all(g == 0) for g in jax.tree.leaves(g_adv))
  e_loss, a_loss, aux = jax.jit(lambda e, p: speaker.arw_losses(e, labels, clusters, lp, adversary, p, valid=valid))(
      emb, adv_params)
  np.testing.assert_allclose(e_loss, -a_loss, rtol=1e-6)
  i, j = speaker.pair_indices(8)
  np.testing.assert_allclose(e_loss, speaker.pairwise_loss(
      emb, labels, *speaker.scale_and_bias(lp), pair_weights=speaker.pair_weights(aux["example_weights"], i, j),
      valid=valid), rtol=1e-6)
  np.testing.assert_allclose(jnp.sum(aux["example_weights"]), 2 * 7, rtol=1e-5)


def test_adversary_ascent_raises_weighted_loss():
  emb, labels, clusters, adversary, adv_params = _arw_setup()
  lp = speaker.init_loss_params()
  adv_loss = lambda p: speaker.arw_losses(emb, labels, clusters, lp, adversary, p)[1]
  grad_fn = jax.jit(jax.value_and_grad(adv_loss))
  opt = optax.sgd(0.5)
  state = opt.init(adv_params)
  before = -float(grad_fn(adv_params)[0])
  for _ in range(20):
    updates, state = opt.update(grad_fn(adv_params)[1], state)
    adv_params = optax.apply_updates(adv_params, updates)
  assert -float(grad_fn(adv_params)[0]) > before


def _synthetic_speakers(rng, speakers, utts, t=24, f=12):
  offsets = rng.standard_normal((speakers, 1, f)) * 1.0
  feats = rng.standard_normal((speakers, utts, t, f)) + offsets[:, None]
  lengths = rng.integers(t // 2, t + 1, (speakers, utts))
  return (jnp.asarray(feats.reshape(speakers * utts, t, f), jnp.float32),
          jnp.asarray(lengths.reshape(-1), jnp.int32), jnp.asarray(np.repeat(np.arange(speakers), utts)))


def test_tiny_training_separates_speakers():
  rng = np.random.default_rng(7)
  cfg = speaker.SpeakerConfig(channels=24, embed_dim=16, layers=((3, 1), (3, 2), (1, 1)))
  feats, lengths, labels = _synthetic_speakers(rng, 6, 4)
  enc = speaker.SpeakerEncoder(cfg)
  init = jax.jit(enc.init, static_argnames="train")
  params = {"encoder": init(jax.random.key(0), feats, lengths, train=False)["params"], "loss": speaker.init_loss_params()}
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)

  def loss_fn(p, x, n, y):
    emb = enc.apply({"params": p["encoder"]}, x, n, train=True)
    return speaker.pairwise_loss(emb, y, *speaker.scale_and_bias(p["loss"]))

  @jax.jit
  def step(p, s, x, n, y):
    loss, g = jax.value_and_grad(loss_fn)(p, x, n, y)
    updates, s = opt.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss

  first = None
  for k in range(40):
    params, opt_state, loss = step(params, opt_state, feats, lengths, labels)
    first = float(loss) if first is None else first
  assert float(loss) < first
  # Held-out utterances of the same speakers (new noise, same spectral offsets).
  test_rng = np.random.default_rng(7)
  offsets = test_rng.standard_normal((6, 1, 12))
  feats_t = jnp.asarray((np.random.default_rng(8).standard_normal((6, 4, 24, 12)) + offsets[:, None])
                        .reshape(24, 24, 12), jnp.float32)
  emb = enc.apply({"params": params["encoder"]}, feats_t, jnp.full((24,), 24), train=False)
  scores = np.asarray(speaker.cosine_scores(emb, emb))
  same = np.asarray(labels)[:, None] == np.asarray(labels)[None]
  off_diag = ~np.eye(24, dtype=bool)
  pos, neg = scores[same & off_diag], scores[~same]
  assert pos.mean() - neg.mean() > 0.3, (pos.mean(), neg.mean())
  # EER-like: at the best threshold, few errors.
  thresholds = np.sort(np.concatenate([pos, neg]))
  errors = min(max(np.mean(pos < t), np.mean(neg >= t)) for t in thresholds)
  assert errors < 0.2, errors
