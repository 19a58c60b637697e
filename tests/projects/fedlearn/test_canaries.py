"""projects/fedlearn/canaries.py: canary data placement, exposure bookkeeping, relaxed inputs of the
intent model, and the config end to end (tiny)."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from libs.audit import canaries as canary_lib
from projects.fedlearn import canaries
from projects.fedlearn import data as fd
from projects.fedlearn import tasks
from projects.fedlearn.configs import canaries as canaries_config


def _canaries(repetitions=(0, 2, 5), per=2, template="my pin code is {} {}", alphabet=("one", "two", "three")):
  cfg = ml_collections.ConfigDict({"template": template, "alphabet": alphabet, "repetitions": repetitions,
                                   "secrets_per_repetition": per, "intent": "call_contact"})
  pop = fd.generate_population(12, seed=0)
  return pop, canaries.make_canaries(pop.vocab, cfg, pop.intent_names, pop.max_len, seed=0)


def test_canaries_extend_the_vocabulary_without_moving_existing_ids():
  pop, can = _canaries()
  assert can.vocab[:len(pop.vocab)] == pop.vocab
  assert {"pin", "code"} <= set(can.vocab[len(pop.vocab):])
  assert fd.decode(can.tokens[:1], can.vocab)[0] == "my pin code is " + " ".join(
      ("one", "two", "three")[s] for s in can.secrets[0])
  assert can.repetitions.tolist() == [0, 0, 2, 2, 5, 5]
  assert can.label == pop.intent_names.index("call_contact")


def test_central_data_gives_each_model_exactly_its_repetitions():
  pop, can = _canaries()
  x, y = pop.pooled()
  xs, ys, member = canaries.central_data(x, y, can)
  n = len(y)
  for m, r in enumerate(can.repetitions):
    assert member[m].sum() == n + r
    assert np.array_equal(xs[m, :n], x) and np.array_equal(ys[m, :n], y)
    canary_rows = np.flatnonzero(member[m, n:]) + n
    assert all(np.array_equal(xs[m, i], can.tokens[m]) and ys[m, i] == can.label for i in canary_rows)


def test_device_data_puts_the_copies_on_one_device_only():
  pop, can = _canaries()
  out = canaries.device_data(pop, can.tokens[4], can.label, 5, device=3)
  counts = out.num_examples()
  assert counts[3] == pop.num_examples()[3] + 5 and np.array_equal(np.delete(counts, 3), np.delete(
      pop.num_examples(), 3))
  rows = out.device_rows(3)
  assert all(np.array_equal(out.tokens[i], can.tokens[4]) for i in rows[:5])
  assert np.array_equal(out.tokens[rows[5:]], pop.tokens[pop.device_rows(3)])
  for d in (0, 5, 11):
    assert np.array_equal(out.tokens[out.device_rows(d)], pop.tokens[pop.device_rows(d)])


def test_intent_model_gives_the_same_logits_for_tokens_and_their_one_hot_rows():
  task = tasks.make_task("intent", vocab_size=40, num_intents=5, max_len=8, embed_dim=8, hidden_dim=16)
  params = task.init(jax.random.key(0))
  tokens = jnp.array([[2, 5, 7, 9, 3, 0, 0, 0], [2, 11, 3, 0, 0, 0, 0, 0]])
  np.testing.assert_allclose(task.apply(params, jax.nn.one_hot(tokens, 40)), task.apply(params, tokens), atol=1e-6)


def test_exposures_rank_each_models_canary_among_all_fillings():
  pop, can = _canaries(repetitions=(1,), per=3)
  task = tasks.make_task("next_word", vocab_size=len(can.vocab), num_intents=14, max_len=pop.max_len, dim=16,
                         num_heads=2, num_layers=1, mlp_multiplier=2)
  params = jax.vmap(task.init)(jax.random.split(jax.random.key(0), 3))
  got = canaries.exposures(task, params, can, batch_size=4)
  fillings = canary_lib.all_fillings(2, 3)
  for m in range(3):
    rows = canary_lib.fill_template(can.template, can.slots, can.alphabet, fillings)
    p = jax.tree.map(lambda a, m=m: a[m], params)
    losses = np.asarray(task.example_losses(p, jnp.asarray(rows), jnp.zeros(len(rows), jnp.int32)))
    index = [tuple(f) for f in fillings].index(tuple(can.secrets[m]))
    assert got[m] == pytest.approx(canary_lib.exposure(losses, index))


def test_tiny_config_runs_end_to_end_and_reruns_from_its_stages(tmp_path, monkeypatch):
  config = canaries_config.get_config("tiny")
  config.canaries.runs = ("central", "federated")
  results = canaries.run(config, str(tmp_path))
  rows = results["canaries"]
  settings = {(r["setting"], r["unit"]) for r in rows}
  assert settings == {("non-private", "example"), ("dpsgd_eps4", "example"), ("fedavg", "device"),
                      ("dp_fedavg_eps4", "device")}
  assert {r["repetitions"] for r in rows} == {0, 3} and {r["attack"] for r in rows} == set(canaries.ATTACKS)
  for r in rows:
    assert {"model", "epsilon", "repetitions", "extraction_rate", "delta", "accountant", "unit"} <= set(r)
    assert r["extraction_rate"] <= r["digit_accuracy"] or r["extraction_rate"] == 0.0
    assert (r["epsilon"] is None) == (r["setting"] in ("non-private", "fedavg"))
    if r["epsilon"] is not None:
      assert r["epsilon"] <= 4.0 + 1e-6
  assert json.load(open(tmp_path / "results.json"))["canaries"] == rows
  assert os.path.exists(tmp_path / "figures" / "canaries.png")

  def no_training(*args, **kwargs):
    raise AssertionError("a finished stage was trained again")

  monkeypatch.setattr(canaries, "train_models", no_training)
  monkeypatch.setattr(canaries, "train_federated", no_training)
  assert canaries.run(config, str(tmp_path))["canaries"] == rows
