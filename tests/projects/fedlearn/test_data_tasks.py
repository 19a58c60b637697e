"""fedlearn tasks: per-example losses against NumPy references, padding invariance, vmap over
clients, and that the intent model actually learns.

XLA compiles take seconds on a busy CPU (a jitted flax init with its random initializers most of
all), so the shared models get random NumPy parameters of the shapes `task.init` produces
(traced, not compiled), and their outputs come from one jitted function reused at one shape
([N, L]) wherever possible. `task.init` itself is run in its own test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from projects.fedlearn import data as fd
from projects.fedlearn.tasks import make_task

L, EXTRA, N = 16, 6, 32
SIZES = {"intent": {"embed_dim": 32, "hidden_dim": 64}, "next_word": {"dim": 32, "num_heads": 2, "num_layers": 1}}


@pytest.fixture(scope="module")
def pop():
  return fd.generate_population(200, seed=0, max_len=L)


class Model:
  """A task (max_len L + EXTRA, so padded inputs fit), its params and one jitted function."""

  def __init__(self, name, pop):
    self.task = make_task(name, vocab_size=len(pop.vocab), num_intents=len(pop.intent_names),
                          max_len=L + EXTRA, **SIZES[name])
    shapes = jax.eval_shape(self.task.init, jax.random.key(0))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
      name = jax.tree_util.keystr(path)
      if name.endswith("['scale']"):
        return jnp.ones(leaf.shape, leaf.dtype)
      scale = 0.0 if name.endswith("['bias']") else 0.2
      return jnp.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype)

    self.params = jax.tree_util.tree_map_with_path(fill, shapes)
    self.outputs = lambda p, x, y: (self.task.apply(p, x), self.task.example_losses(p, x, y),
                                    self.task.example_metrics(p, x, y))
    self.jit_outputs = jax.jit(self.outputs)


@pytest.fixture(scope="module")
def models(pop):
  return {name: Model(name, pop) for name in SIZES}


def _log_softmax64(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_intent_losses_and_metrics_match_numpy(pop, models):
  m = models["intent"]
  tokens, intents = pop.tokens[:N], pop.intents[:N]
  logits, losses, metrics = m.jit_outputs(m.params, tokens, intents)
  logp = _log_softmax64(logits)
  want = np.array([-logp[i, intents[i]] for i in range(N)])
  np.testing.assert_allclose(losses, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(metrics["loss"], want, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(metrics["correct"], [float(np.argmax(logp[i]) == intents[i]) for i in range(N)])


def test_next_word_losses_and_metrics_match_a_loop(pop, models):
  m = models["next_word"]
  tokens, intents = pop.tokens[:N], pop.intents[:N]
  logits, got, metrics = m.jit_outputs(m.params, tokens, intents)
  logp = _log_softmax64(logits)
  losses, acc, num = [], [], []
  for i in range(N):
    nll, hits, n = 0.0, 0, 0
    for t in range(L - 1):
      if tokens[i, t + 1] != 0:  # a real next token
        nll -= logp[i, t, tokens[i, t + 1]]
        hits += int(np.argmax(logp[i, t]) == tokens[i, t + 1])
        n += 1
    losses.append(nll / n), acc.append(hits / n), num.append(n)
  np.testing.assert_allclose(got, losses, rtol=1e-4)
  np.testing.assert_allclose(metrics["loss"], losses, rtol=1e-4)
  np.testing.assert_allclose(metrics["correct"], acc, atol=1e-6)
  np.testing.assert_array_equal(metrics["num_tokens"], num)


@pytest.mark.parametrize("name", ["intent", "next_word"])
def test_padding_changes_no_loss_and_padded_examples_are_harmless(pop, models, name):
  m = models[name]
  # A padded client batch: N slots, some of them padding examples (all-zero rows).
  batch = pop.client_batch(list(range(N // 4)), 4)
  x, y, mask = batch.tokens.reshape(-1, L), batch.intents.reshape(-1), batch.mask.reshape(-1)
  assert mask.min() == 0 and mask.max() == 1
  # The same examples with EXTRA more padding tokens, and with their padding slots filled with
  # real examples: neither may change the real examples' losses or the masked gradient.
  longer = np.pad(x, ((0, 0), (0, EXTRA)))
  filled_x = np.where(mask[:, None] > 0, longer, np.pad(pop.tokens[-N:], ((0, 0), (0, EXTRA))))
  filled_y = np.where(mask > 0, y, pop.intents[-N:])

  _, losses, _ = m.jit_outputs(m.params, x, y)
  _, losses_longer, _ = m.jit_outputs(m.params, longer, y)
  assert np.isfinite(losses).all()
  np.testing.assert_allclose(losses_longer, losses, rtol=1e-5, atol=1e-6)
  if name == "next_word":
    np.testing.assert_array_equal(losses[mask == 0], 0.0)  # no real targets: 0, not NaN
    return  # its (slow to compile) gradient is exercised by the federated core's tests

  def masked_sum(p, x, y, w):
    return jnp.sum(w * m.task.example_losses(p, x, y))

  grad = jax.jit(jax.grad(masked_sum))
  g, g_filled = grad(m.params, longer, y, mask), grad(m.params, filled_x, filled_y, mask)
  assert all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(g))
  assert max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(g)) > 0
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_filled)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["intent", "next_word"])
def test_vmap_over_clients_equals_a_loop(pop, models, name):
  m = models[name]
  num_clients = 3
  params = [jax.tree.map(lambda v, c=c: v * (1.0 + 0.3 * c), m.params) for c in range(num_clients)]
  stacked = jax.tree.map(lambda *p: jnp.stack(p), *params)
  batch = pop.client_batch(list(range(num_clients)), N)
  _, got, got_m = jax.jit(jax.vmap(m.outputs))(stacked, batch.tokens, batch.intents)
  assert got.shape == (num_clients, N)
  for c in range(num_clients):
    _, want, want_m = m.jit_outputs(params[c], batch.tokens[c], batch.intents[c])
    np.testing.assert_allclose(got[c], want, rtol=1e-5, atol=1e-6)
    assert set(got_m) == set(want_m)
    for k in want_m:
      np.testing.assert_allclose(got_m[k][c], want_m[k], rtol=1e-5, atol=1e-6)
  real = batch.mask[0] > 0
  assert not np.allclose(got[0][real], got[1][real])  # different params, different losses


def test_intent_model_learns_centrally_and_generalizes_to_held_out_devices(models):
  train, test = fd.generate_population(300, seed=0), fd.held_out(200, seed=0)
  m = models["intent"]
  opt = optax.adam(3e-3)
  params, state = m.params, opt.init(m.params)

  @jax.jit
  def step(params, state, x, y):
    grads = jax.grad(lambda p: m.task.example_losses(p, x, y).mean())(params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  chunks = min(64, len(test.tokens) // N)  # whole [N, L] chunks only (the population size varies by seed)
  assert chunks >= 16, len(test.tokens)

  def accuracy(params):  # in [N, L] chunks: reuses the compiled function
    hits = [m.jit_outputs(params, test.tokens[s:s + N], test.intents[s:s + N])[2]["correct"]
            for s in range(0, chunks * N, N)]
    return float(np.mean(hits))

  before = accuracy(params)
  x, y = train.pooled()
  rng = np.random.default_rng(0)
  for _ in range(150):
    b = rng.integers(0, len(x), N)
    params, state = step(params, state, x[b], y[b])
  after = accuracy(params)
  assert before < 0.3 and after > 0.9, (before, after)


def test_init_gives_finite_keyed_params_of_the_model_shapes(pop, models):
  task = models["intent"].task
  a, b = task.init(jax.random.key(1)), task.init(jax.random.key(2))
  assert jax.tree.structure(a) == jax.tree.structure(models["intent"].params)
  for x, y, ref in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(models["intent"].params)):
    assert x.shape == ref.shape and x.dtype == ref.dtype and bool(jnp.isfinite(x).all())
  assert not np.allclose(jax.tree.leaves(a)[-1], jax.tree.leaves(b)[-1])  # the key matters


def test_make_task_checks_its_arguments():
  with pytest.raises(ValueError, match="task"):
    make_task("speech", vocab_size=100, num_intents=3, max_len=8)
  with pytest.raises(ValueError, match="max_len"):
    make_task("intent", vocab_size=100, num_intents=3, max_len=1)
  task = make_task("next_word", vocab_size=100, num_intents=3, max_len=8)
  assert task.name == "next_word" and task.max_len == 8
