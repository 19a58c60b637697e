"""DP-SGD baseline: the same transducer trained directly on the sensitive utterances.

One model per target epsilon, all trained together (stacked parameters, vmapped steps).
Each step draws a Poisson sample of the sensitive utterances (rate q = expected batch /
N; shared by the models, which does not affect any one model's guarantee), splits it
into fixed-shape physical batches, sums clipped per-example gradients over them (ghost
clipping: `libs.dp.ghost_clipped_grad` covers every layer of the LSTM transducer), adds
Gaussian noise with each model's calibrated multiplier and applies Adam (DP-Adam: any
optimizer after the noise is post-processing).

Privacy: utterance-level (add/remove one utterance), Poisson-subsampled Gaussian
mechanism composed over the steps, RDP accountant (`libs.accounting`); a per-model
`PrivacyLedger` refuses any step that would pass its target. The Gaussian noise and the
Poisson samples come from `DpRandomness` (`dp_streams`), never from config.seed, which is
published in results.json.

Example:
  >>> rand = DpRandomness.from_config(config.seed, config.insecure_reproducible_noise)
  >>> result = train_dpsgd(config, workdir + "/dpsgd", model, sensitive, targets=[1, 2, 5, 10],
  ...                      delta=1e-5, rand=rand, name="matched")
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from libs import accounting
from libs.data import pipeline
from libs.dp import ghost
from libs.dp import noise as noise_lib
from libs.dp import sampling
from libs.dp.randomness import DpRandomness
from libs.speech import evaluate as evaluate_lib
from libs.train import checkpoint as ckpt_lib
from libs.train.state import TrainState
from projects.pate_asr import ensemble


@dataclasses.dataclass
class DpsgdResult:
  params: object  # Stacked, one model per target.
  noise_multipliers: list[float]
  epsilons: list[float]  # Spent, from each model's ledger.
  sampling_probability: float
  steps: int
  train_seconds: float
  preempted: bool


def _optimizer(dcfg, noise_multiplier, expected_batch_size, key):
  warmup = max(min(dcfg.warmup_steps, dcfg.num_steps - 1), 1)
  schedule = optax.warmup_cosine_decay_schedule(0.0, dcfg.learning_rate, warmup, max(dcfg.num_steps, warmup + 1),
                                                end_value=0.1 * dcfg.learning_rate)
  return noise_lib.dpsgd(schedule, l2_clip_norm=dcfg.l2_clip_norm, noise_multiplier=noise_multiplier,
                         expected_batch_size=expected_batch_size, key=key, optimizer=optax.adam(schedule))


def dp_streams(rand: DpRandomness, name: str, num: int) -> tuple[jax.Array, int]:
  """The Gaussian noise keys (one per model) and the Poisson sampler seed of DP-SGD run `name`.

  Anyone who can regenerate the noise or the sample can undo the guarantee, so both come
  from `rand` (a secret unless the config asks for insecure reproducible noise), never from
  the published config.seed. `name` (the scenario) keeps the streams of runs on overlapping
  sensitive data independent.
  """
  return jax.random.split(rand.key(f"dpsgd_noise/{name}"), num), rand.seed(f"dpsgd_sampling/{name}")


def train_dpsgd(config: ml_collections.ConfigDict, workdir: str, model, sensitive: pipeline.SpeechSplit,
                targets: Sequence[float], *, delta: float, rand: DpRandomness, name: str,
                progress: bool = True) -> DpsgdResult:
  dcfg = config.dpsgd
  os.makedirs(workdir, exist_ok=True)
  n = len(sensitive)
  q = min(1.0, dcfg.expected_batch_size / n)
  sigmas = [accounting.calibrate_noise_multiplier(t, delta, q, dcfg.num_steps) for t in targets]
  num = len(targets)
  # Initialization and SpecAugment are not DP randomness: they stay reproducible from config.seed.
  init_key, _, aug_root = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 3), 3)
  params = ensemble.init_stacked(model, init_key, num, sensitive.features[0].shape[1])
  noise_keys, sampler_seed = dp_streams(rand, name, num)
  # The optimizer's structure does not depend on sigma; sigma is an argument of the step.
  state = jax.jit(jax.vmap(lambda p, k: TrainState(jnp.zeros((), jnp.int32), p,
                                                   _optimizer(dcfg, 1.0, q * n, k).init(p))))(params, noise_keys)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=dcfg.checkpoint_every)
  state = ckpt.restore_or(state)  # On resume the noise keys are the checkpointed (still secret) ones.
  start = int(np.asarray(jax.device_get(state.step))[0])
  spec = evaluate_lib.spec_augment_config(config.train)

  def per_example(params, batch, key):
    return evaluate_lib.per_example_nll(model, params, batch, key, train=True, spec_augment=spec)

  def clipped_sum(params, batch, key):
    fn = ghost.ghost_clipped_grad(lambda p, b: per_example(p, b, key), l2_clip_norm=dcfg.l2_clip_norm)
    return fn(params, batch, example_weights=batch["weights"])

  accumulate = jax.jit(jax.vmap(lambda acc, p, b, k: jax.tree.map(jnp.add, acc, clipped_sum(p, b, k)),
                                in_axes=(0, 0, None, None)), donate_argnums=(0,))

  def apply(state, grads, sigma, key):
    del key
    opt = _optimizer(dcfg, sigma, q * n, jax.random.key(0))  # The noise key lives in opt_state.
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    return TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state)

  apply_step = jax.jit(jax.vmap(apply, in_axes=(0, 0, 0, None)), donate_argnums=(0,))
  # The sample of step t is a function of (seed, t). A resumed run with secret randomness
  # draws a new seed, so its remaining steps use a different stream: as private, since each
  # step's Poisson sample is independent of everything released before.
  sampler = sampling.PoissonSampler(n, q, seed=sampler_seed)
  buckets = pipeline.frame_buckets(sensitive.feature_lengths, config.train.num_buckets)
  widths = pipeline.bucket_label_widths(sensitive, buckets)
  ledgers = []
  for target, sigma in zip(targets, sigmas):
    ledger = accounting.PrivacyLedger(target, delta)
    if start:
      ledger.record(accounting.poisson_gaussian_event(sigma, q, 1), count=start)
    ledgers.append(ledger)
  events = [accounting.poisson_gaussian_event(s, q, 1) for s in sigmas]
  sigma_arr = jnp.asarray(sigmas, jnp.float32)
  log_path = os.path.join(workdir, "progress.json")
  elapsed = json.load(open(log_path))["train_seconds"] if start and os.path.exists(log_path) else 0.0
  preempted = False
  with ckpt_lib.PreemptionGuard() as guard, tqdm.tqdm(total=dcfg.num_steps, initial=start, desc="dp-sgd",
                                                       unit="step", disable=not progress, leave=False) as bar:
    t0 = time.perf_counter()
    for step in range(start, dcfg.num_steps):
      for ledger, event in zip(ledgers, events):
        ledger.check(event)  # Raises PrivacyBudgetExceeded before overspending.
      indices = sampler.indices(step)
      grads = jax.tree.map(jnp.zeros_like, state.params)
      step_key = jax.random.fold_in(aug_root, step)
      for b, (idx, _) in enumerate(sampling.physical_batches(indices, dcfg.physical_batch_size)):
        real = idx[idx >= 0]
        batch = pipeline.make_batch(sensitive, real, dcfg.physical_batch_size, buckets, widths)
        batch = {k: v for k, v in batch.items() if k != "index"}
        grads = accumulate(grads, state.params, batch, jax.random.fold_in(step_key, b))
      state = apply_step(state, grads, sigma_arr, step_key)
      for ledger, event in zip(ledgers, events):
        ledger.record(event)
      bar.update(1)
      done = step + 1
      stop = guard.stop_requested  # Read once: a signal may land while saving.
      ckpt.maybe_save(state, force=stop or done == dcfg.num_steps)
      if done % dcfg.checkpoint_every == 0 or done == dcfg.num_steps or stop:
        jax.block_until_ready(state)
        total = elapsed + time.perf_counter() - t0
        with open(log_path, "w", encoding="utf-8") as f:
          json.dump({"step": done, "train_seconds": total}, f)
      if stop:
        preempted = True
        break
  ckpt.close()
  jax.block_until_ready(state)
  elapsed += time.perf_counter() - t0
  return DpsgdResult(state.params, sigmas, [l.epsilon() for l in ledgers], q,
                     int(np.asarray(jax.device_get(state.step))[0]), elapsed, preempted)
