"""Membership inference on the ASR transducer: the vmapped ensemble steps against a per-model
Python loop of per-utterance gradients, the Poisson batches, the universe, and the entrypoint."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from libs.dp import noise as noise_lib
from libs.models import asr as asr_lib
from libs.speech import evaluate as evaluate_lib
from libs.speech.tokenizer import CharTokenizer
from libs.data import pipeline
from projects.pate_asr import ensemble
from projects.pate_asr import membership
from projects.pate_asr.configs import membership as membership_configs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MODELS, BATCH, FRAMES, MELS = 3, 4, 40, 80


def _tiny():
  config = membership_configs.get_config("tiny")
  model = asr_lib.build_model(config.model, CharTokenizer().vocab_size)
  return config, model


def _batches(seed):
  """[models, batch, ...] batches, every model its own utterances; the last row of model 1 is padding."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(FRAMES // 2, FRAMES + 1, (MODELS, BATCH)).astype(np.int32)
  label_lengths = rng.integers(1, 5, (MODELS, BATCH)).astype(np.int32)
  weights = np.ones((MODELS, BATCH), np.float32)
  weights[1, -1] = 0.0
  return {"features": rng.normal(size=(MODELS, BATCH, FRAMES, MELS)).astype(np.float32),
          "feature_lengths": lengths, "labels": rng.integers(1, 20, (MODELS, BATCH, 4)).astype(np.int32),
          "label_lengths": label_lengths, "weights": weights}


def _params(model, seed):
  return ensemble.init_stacked(model, jax.random.key(seed), MODELS, MELS)


def _utterance_grad(model):
  """One utterance's own gradient, jitted once per test (an eager transducer gradient takes seconds)."""
  return jax.jit(jax.grad(lambda p, one: evaluate_lib.per_example_nll(model, p, one, None, train=False)[0]))


def _reference_sum(grad_one, params, batch, clip):
  """One model's sum of per-utterance gradients, each by its own jax.grad, clipped to `clip` (a loop)."""
  total = jax.tree.map(lambda p: np.zeros(p.shape, np.float64), params)
  for i in range(BATCH):
    if batch["weights"][i] == 0:
      continue
    one = {k: v[i: i + 1] for k, v in batch.items()}
    g = grad_one(params, one)
    g = jax.tree.map(lambda x: np.asarray(x, np.float64), g)
    norm = math.sqrt(sum(float(np.sum(x ** 2)) for x in jax.tree.leaves(g)))
    scale = min(1.0, clip / norm) if math.isfinite(clip) else 1.0
    total = jax.tree.map(lambda t, x, s=scale: t + s * x, total, g)
  return total


@pytest.mark.parametrize("sigma", [None, 0.7])
def test_vmapped_steps_equal_a_per_model_loop_of_clipped_utterance_gradients(sigma):
  config, model = _tiny()
  mcfg = config.membership
  mcfg.l2_clip_norm = 0.5  # Below the tiny model's per-utterance norms: clipping is active.
  params, batch = _params(model, 0), _batches(1)
  accumulate, apply = membership.make_steps(model, mcfg, sigma, expected_batch_size=3.0)
  zeros = jax.tree.map(jnp.zeros_like, params)
  summed = accumulate(zeros, params, batch)
  # Per-model slices in NumPy: an eager jax slice or norm compiles once per leaf shape.
  params_np, summed_np = jax.device_get(params), jax.device_get(summed)
  clip = math.inf if sigma is None else mcfg.l2_clip_norm
  grad_one = _utterance_grad(model)
  for m in range(MODELS):
    one_params = jax.tree.map(lambda p, m=m: p[m], params_np)
    ref = _reference_sum(grad_one, one_params, {k: v[m] for k, v in batch.items()}, clip)
    for got, want in zip(jax.tree.leaves(jax.tree.map(lambda p, m=m: p[m], summed_np)), jax.tree.leaves(ref)):
      np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    if sigma is not None:
      norm = math.sqrt(sum(float(np.sum(np.float64(p[m]) ** 2)) for p in jax.tree.leaves(summed_np)))
      assert norm <= (BATCH - (m == 1)) * mcfg.l2_clip_norm * (1 + 1e-5)

  # Two updates (the first has learning rate 0: warmup): per model, the noise of ITS key
  # (libs.dp.dpsgd, unvmapped) and Adam, as for one model alone.
  keys = jax.random.split(jax.random.key(7), MODELS) if sigma is not None else None
  state = apply(apply(membership.init_state(mcfg, params, sigma, 3.0, keys), summed), summed)
  lr = optax.warmup_cosine_decay_schedule(0.0, mcfg.learning_rate, max(min(mcfg.warmup_steps, mcfg.steps - 1), 1),
                                          max(mcfg.steps, 2), end_value=0.1 * mcfg.learning_rate)

  @jax.jit  # One model alone, its own key: compiled once, run per model (eager optax compiles per leaf).
  def two_updates(p_m, g_m, key):
    if sigma is None:
      opt = optax.chain(optax.scale(1 / 3.0), optax.adam(lr))
    else:
      opt = noise_lib.dpsgd(lr, l2_clip_norm=mcfg.l2_clip_norm, noise_multiplier=sigma, expected_batch_size=3.0,
                            key=key, optimizer=optax.adam(lr))
    want, opt_state = p_m, opt.init(p_m)
    for _ in range(2):
      updates, opt_state = opt.update(g_m, opt_state, want)
      want = optax.apply_updates(want, updates)
    return want

  state_params = jax.device_get(state.params)
  for m in range(MODELS):
    p_m, g_m = jax.tree.map(lambda p, m=m: p[m], params_np), jax.tree.map(lambda p, m=m: p[m], summed_np)
    want = jax.device_get(two_updates(p_m, g_m, None if keys is None else keys[m]))
    got = jax.tree.map(lambda p, m=m: p[m], state_params)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(p_m))) > 0
    for a, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-6)
  assert state.step.tolist() == [2] * MODELS
  if sigma is not None:  # Equal models and gradients, different keys: different noise, different models.
    twin_params = jax.tree.map(lambda p: np.stack([p[0]] * MODELS), params_np)
    twin_grads = jax.tree.map(lambda p: np.stack([p[0]] * MODELS), summed_np)
    moved = apply(apply(membership.init_state(mcfg, twin_params, sigma, 3.0, keys), twin_grads), twin_grads)
    for leaf in jax.tree.leaves(moved.params):
      assert not np.allclose(np.asarray(leaf[0]), np.asarray(leaf[1]))


def test_poisson_batches_draw_only_each_models_utterances_at_rate_q():
  rng = np.random.default_rng(0)
  member = np.zeros((4, 200), bool)
  member[:, :100] = True
  member[2] = ~member[2]
  member[3, ::2] = False
  counts = np.zeros(4)
  draws = 400
  for _ in range(draws):
    batches = membership.poisson_batches(member, 0.1, 8, rng)
    assert batches and all(len(b) == 4 for b in batches)
    for m in range(4):
      drawn = np.concatenate([b[m] for b in batches])
      assert all(len(b[m]) <= 8 for b in batches)
      assert len(np.unique(drawn)) == len(drawn) and member[m, drawn].all()
      counts[m] += len(drawn)
  expected = 0.1 * member.sum(1) * draws
  # Binomial(members * draws, 0.1): within 5 standard deviations.
  assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected * 0.9)), (counts, expected)
  empty = membership.poisson_batches(np.zeros((2, 5), bool), 0.5, 4, rng)
  assert len(empty) == 1 and all(len(i) == 0 for i in empty[0])  # An empty sample still steps.


def _split(speakers):
  n = len(speakers)
  return pipeline.SpeechSplit([np.zeros((4, 2), np.float32)] * n, [np.ones(1, np.int32)] * n, ["a"] * n,
                              [f"u{i}" for i in range(n)], {"speaker_id": np.asarray(speakers)})


def test_universe_takes_one_utterance_per_speaker_first():
  split = _split(np.repeat(np.arange(10), 5))
  chosen = membership.universe(split, 10, seed=0)
  assert sorted(chosen.metadata["speaker_id"].tolist()) == list(range(10))
  more = membership.universe(split, 14, seed=0)
  assert np.bincount(more.metadata["speaker_id"]).max() == 2 and len(set(more.utterance_ids)) == 14
  assert membership.universe(split, 10, seed=0).utterance_ids == chosen.utterance_ids  # Seeded.
  with pytest.raises(ValueError, match="universe_utterances=51"):
    membership.universe(split, 51, seed=0)


@pytest.mark.parametrize("field, value", [("num_models", 5), ("num_models", 2), ("sampling_probability", 0.0),
                                          ("target_epsilons", (1.0, -1.0)), ("attack_targets", 9),
                                          ("l2_clip_norm", float("inf")), ("delta", 1.0)])
def test_validate_names_the_field(field, value):
  config = membership_configs.get_config("tiny")
  config.membership[field] = value
  with pytest.raises(ValueError, match=f"config.membership.{field}"):
    membership.validate(config)


@pytest.mark.slow
def test_entrypoint_tiny_end_to_end_and_rerun(tiny_corpus_dir, tmp_path, shared_jax_cache):
  workdir = str(tmp_path / "mia")
  env = dict(os.environ, TSML_DATA_DIR=tiny_corpus_dir, **shared_jax_cache,
             XLA_FLAGS="--xla_backend_optimization_level=0", PYTHONUNBUFFERED="1")
  command = [sys.executable, "-m", "projects.pate_asr.main",
             "--config=projects/pate_asr/configs/membership.py:tiny", f"--workdir={workdir}",
             "--config.progress=False"]
  first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-4000:]
  assert "utterance-level DP-SGD, delta 1e-05, RDP accountant" in first.stdout
  results = json.load(open(os.path.join(workdir, "results.json"), encoding="utf-8"))
  rows = results["membership"]
  assert {(r["model"], r["attack"]) for r in rows} == {
      (m, a) for m in ("non-private", "dpsgd_eps10", "dpsgd_eps1") for a in ("loss", "lira")}
  for r in rows:
    assert r["unit"] == "utterance" and 0 <= r["auc"] <= 1 and 0 <= r["test_wer"] < math.inf
    assert r["members_attacked"] + r["non_members_attacked"] == 2 * 12  # 2 targets x 12 utterances.
    if r["epsilon"] is None:
      assert r["tpr_bound_at_fpr_0.01"] == 1.0 and r["accountant"] is None
    else:
      assert r["epsilon"] <= r["target_epsilon"] + 1e-6 and r["delta"] == 1e-5 and r["accountant"] == "rdp"
      assert r["tpr_profile_bound_at_fpr_0.01"] <= r["tpr_bound_at_fpr_0.01"] <= 1.0
  assert results["randomness"] == "os-secret"
  assert os.path.getsize(os.path.join(workdir, "figures", "membership_roc.png")) > 0
  assert "nll" not in json.dumps(results)  # The per-utterance losses stay private.
  assert os.path.exists(os.path.join(workdir, "membership", "non-private", "private", "utterance_nll.npy"))
  # A rerun reuses every finished stage: the same table from the saved losses.
  second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert second.returncode == 0, second.stderr[-4000:]
  again = json.load(open(os.path.join(workdir, "results.json"), encoding="utf-8"))["membership"]
  assert [(r["auc"], r["test_wer"]) for r in again] == [(r["auc"], r["test_wer"]) for r in rows]
