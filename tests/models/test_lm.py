"""The causal LM's hidden states and the LM classifier built on it."""

import jax
import jax.numpy as jnp
import numpy as np

from libs.models.lm import LMClassifier, LMConfig, TransformerLM

CFG = LMConfig(vocab_size=30, max_len=10, dim=16, num_heads=2, num_layers=2)


def _tokens():
  return jnp.array([[2, 5, 6, 7, 3, 0, 0, 0, 0, 0], [2, 9, 3, 0, 0, 0, 0, 0, 0, 0]])


def test_hidden_states_are_causal_and_feed_the_head():
  lm = TransformerLM(CFG)
  t = _tokens()
  params = jax.jit(lm.init)(jax.random.key(0), t)["params"]
  hidden = lm.apply({"params": params}, t, return_hidden=True)
  logits = lm.apply({"params": params}, t)
  head = params["head"]
  np.testing.assert_allclose(logits, hidden @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)
  changed = t.at[0, 4].set(11)  # a later token cannot move earlier hidden states
  np.testing.assert_allclose(lm.apply({"params": params}, changed, return_hidden=True)[0, :4], hidden[0, :4],
                             rtol=1e-5, atol=1e-6)


def test_classifier_takes_a_pretrained_lm_and_its_own_embeddings():
  t = _tokens()
  lm_params = jax.jit(TransformerLM(CFG).init)(jax.random.key(0), t)["params"]
  clf = LMClassifier(CFG, num_classes=4)
  fresh = jax.jit(clf.init)(jax.random.key(1), t)["params"]
  params = {"lm": {k: v for k, v in lm_params.items() if k != "head"}, "classifier": fresh["classifier"]}
  assert jax.tree.structure(params) == jax.tree.structure(fresh)
  logits = clf.apply({"params": params}, t)
  np.testing.assert_allclose(clf.apply({"params": params}, t, token_embeddings=clf.embed(params, t)), logits,
                             rtol=1e-6)
  # Mean pooling over real tokens: the classifier equals a NumPy pooling of the LM's hidden states.
  hidden = np.asarray(TransformerLM(CFG).apply({"params": lm_params}, t, return_hidden=True))
  mask = np.asarray(t > 0)[..., None]
  pooled = (hidden * mask).sum(1) / mask.sum(1)
  k = params["classifier"]
  np.testing.assert_allclose(logits, pooled @ np.asarray(k["kernel"]) + np.asarray(k["bias"]), rtol=1e-4, atol=1e-5)
