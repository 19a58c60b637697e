"""DP-SGD baseline: the same transducer trained directly on the sensitive utterances.

One model per target epsilon, all trained together (stacked parameters, vmapped steps).
Each step draws a Poisson sample of the sensitive utterances (rate q = expected batch /
N; shared by the models, which does not affect any one model's guarantee), splits it
into fixed-shape physical batches, sums clipped per-example gradients over them (ghost
clipping: `libs.dp.ghost_clipped_grad` covers every layer of the LSTM transducer), adds
Gaussian noise with each model's calibrated multiplier and applies Adam (DP-Adam: any
optimizer after the noise is post-processing). The steps run in `libs.train.loop`, which
restores, checkpoints (with the training seconds), stops cleanly on a signal and shows
the progress bar.

Privacy: utterance-level (add/remove one utterance), Poisson-subsampled Gaussian
mechanism composed over the steps, RDP accountant (`libs.accounting`); a per-model
`PrivacyLedger` refuses any step that would pass its target. The Gaussian noise and the
Poisson samples come from `DpRandomness` (`dp_streams`), never from config.seed, which is
published in results.json. Each step logs only the epsilon spent per model
(`privacy/epsilon/target_<t>`, a formal guarantee at the run's delta) to
`workdir/metrics.jsonl` and TensorBoard; the training loss is a non-private function of
the sensitive data and is never logged.

Example:
  >>> rand = DpRandomness.from_config(config.seed, config.insecure_reproducible_noise)
  >>> result = train_dpsgd(config, workdir + "/dpsgd", model, sensitive, targets=[1, 2, 5, 10],
  ...                      delta=1e-5, rand=rand, name="matched")
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from libs import accounting
from libs.data import pipeline
from libs.dp import ghost
from libs.dp import noise as noise_lib
from libs.dp import sampling
from libs.dp.randomness import DpRandomness
from libs.speech import evaluate as evaluate_lib
from libs.train import checkpoint as ckpt_lib
from libs.train import metrics as metrics_lib
from libs.train import rng as rng_lib
from libs.train.loop import train_loop
from libs.train.state import TrainState
from projects.pate_asr import ensemble

UNIT = "utterance"


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


def epsilon_metric_names(targets: Sequence[float]) -> list[str]:
  """The metric name of each model's spent epsilon; a repeated target gets its model's index."""
  names = []
  for i, t in enumerate(targets):
    name = f"privacy/epsilon/target_{float(t):g}"
    names.append(name if name not in names else f"{name}_model_{i}")
  return names


class _Ledgers:
  """One `PrivacyLedger` per model, each charged one Poisson-sampled Gaussian event a step."""

  def __init__(self, targets, sigmas, delta, q):
    self.names = epsilon_metric_names(targets)
    self.ledgers = [accounting.PrivacyLedger(t, delta, unit=UNIT) for t in targets]
    self.events = [accounting.poisson_gaussian_event(s, q, 1) for s in sigmas]
    self.steps = 0

  def catch_up(self, steps: int) -> None:
    """Charges the steps a restored checkpoint already took (the ledgers live on the host)."""
    if steps > self.steps:
      for ledger, event in zip(self.ledgers, self.events):
        ledger.record(event, count=steps - self.steps)
      self.steps = steps

  def check_step(self) -> None:
    for ledger, event in zip(self.ledgers, self.events):
      ledger.check(event)  # Raises PrivacyBudgetExceeded before overspending.

  def record_step(self) -> None:
    self.catch_up(self.steps + 1)

  def epsilons(self) -> list[float]:
    return [ledger.epsilon() for ledger in self.ledgers]

  def row(self) -> dict[str, float]:
    return dict(zip(self.names, self.epsilons()))


def _seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """The initialization and SpecAugment keys: not DP randomness, so reproducible from config.seed."""
  streams = rng_lib.Streams(seed)
  return streams.key("dpsgd/init"), streams.key("dpsgd/spec_augment")


def _init_state(config, model, sensitive, noise_keys, q, init_key):
  """The stacked TrainState, one model (and noise key) per target."""
  dcfg = config.dpsgd
  params = ensemble.init_stacked(model, init_key, len(noise_keys), sensitive.features[0].shape[1])
  # The optimizer's structure does not depend on sigma; sigma is an argument of the step.
  init = lambda p, k: TrainState(jnp.zeros((), jnp.int32), p, _optimizer(dcfg, 1.0, q * len(sensitive), k).init(p))
  return jax.jit(jax.vmap(init))(params, noise_keys)


def _jitted_steps(config, model, expected_batch_size):
  """`accumulate(grads, params, batch, key)` (sum of clipped per-example gradients, per model)
  and `apply_step(state, grads, sigmas)` (noise + Adam, per model), both jitted and vmapped."""
  dcfg = config.dpsgd
  spec = evaluate_lib.spec_augment_config(config.train)

  def clipped_sum(params, batch, key):
    per_example = lambda p, b: evaluate_lib.per_example_nll(model, p, b, key, train=True, spec_augment=spec)
    fn = ghost.ghost_clipped_grad(per_example, l2_clip_norm=dcfg.l2_clip_norm)
    return fn(params, batch, example_weights=batch["weights"])

  accumulate = jax.jit(jax.vmap(lambda acc, p, b, k: jax.tree.map(jnp.add, acc, clipped_sum(p, b, k)),
                                in_axes=(0, 0, None, None)), donate_argnums=(0,))

  def apply(state, grads, sigma):
    opt = _optimizer(dcfg, sigma, expected_batch_size, jax.random.key(0))  # The noise key lives in opt_state.
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    return TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state)

  return accumulate, jax.jit(jax.vmap(apply), donate_argnums=(0,))


def train_dpsgd(config: ml_collections.ConfigDict, workdir: str, model, sensitive: pipeline.SpeechSplit,
                targets: Sequence[float], *, delta: float, rand: DpRandomness, name: str,
                progress: bool = True) -> DpsgdResult:
  """Trains one DP-SGD model per target epsilon (resuming from `workdir/checkpoints`).

  Args:
    config: the sweep config (`config.dpsgd`, `config.train` for SpecAugment and buckets).
    workdir: checkpoints, metrics.jsonl and TensorBoard events of this run.
    model: the transducer (flax module).
    sensitive: the utterances to protect.
    targets: one target epsilon per model (at `delta`).
    delta: the target delta.
    rand: where the DP noise and the Poisson samples come from.
    name: the scenario, which keeps the DP streams of different runs apart.
    progress: show a progress bar.

  Returns:
    DpsgdResult; `preempted` is True when a signal stopped it (rerun to resume).
  """
  dcfg = config.dpsgd
  os.makedirs(workdir, exist_ok=True)
  n = len(sensitive)
  q = min(1.0, dcfg.expected_batch_size / n)
  sigmas = [accounting.calibrate_noise_multiplier(t, delta, q, dcfg.num_steps) for t in targets]
  noise_keys, sampler_seed = dp_streams(rand, name, len(targets))
  init_key, aug_root = _seed_keys(config.seed)
  # On resume the loop replaces this state, noise keys included, with the checkpoint's (still secret) one.
  state = _init_state(config, model, sensitive, noise_keys, q, init_key)
  accumulate, apply_step = _jitted_steps(config, model, q * n)
  # The sample of step t is a function of (seed, t). A resumed run with secret randomness
  # draws a new seed, so its remaining steps use a different stream: as private, since each
  # step's Poisson sample is independent of everything released before.
  sampler = sampling.PoissonSampler(n, q, seed=sampler_seed)
  buckets = pipeline.frame_buckets(sensitive.feature_lengths, config.train.num_buckets)
  widths = pipeline.bucket_label_widths(sensitive, buckets)
  ledgers = _Ledgers(targets, sigmas, delta, q)
  sigma_arr = jnp.asarray(sigmas, jnp.float32)

  def step_fn(state, step):
    ledgers.catch_up(step)  # A resumed run starts at the checkpoint's step.
    ledgers.check_step()
    grads = jax.tree.map(jnp.zeros_like, state.params)
    step_key = jax.random.fold_in(aug_root, step)
    for b, (idx, _) in enumerate(sampling.physical_batches(sampler.indices(step), dcfg.physical_batch_size)):
      batch = pipeline.make_batch(sensitive, idx[idx >= 0], dcfg.physical_batch_size, buckets, widths)
      batch = {k: v for k, v in batch.items() if k != "index"}
      grads = accumulate(grads, state.params, batch, jax.random.fold_in(step_key, b))
    state = apply_step(state, grads, sigma_arr)
    ledgers.record_step()
    return state, ledgers.row()  # Accounted epsilons only: the loss is not private.

  writer = metrics_lib.create_writer(workdir)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=dcfg.checkpoint_every)
  if ckpt.latest_step() is None:  # Data-independent facts only.
    writer.write_hparams({"unit": UNIT, "accountant": "rdp", "delta": delta, "sampling_probability": q,
                          "num_steps": dcfg.num_steps, "randomness": rand.describe(),
                          **{f"noise_multiplier/{k.split('/')[-1]}": s for k, s in zip(ledgers.names, sigmas)}})
  try:
    out = train_loop(state, step_fn, num_steps=dcfg.num_steps, checkpointer=ckpt, writer=writer, desc="dp-sgd",
                     progress=progress, postfix=lambda row: {"eps": " ".join(f"{v:.2g}" for v in row.values())})
  finally:
    ckpt.close()
    writer.close()
  ledgers.catch_up(out.step)  # The checkpoint was already complete: no step ran in this process.
  return DpsgdResult(out.state.params, sigmas, ledgers.epsilons(), q,
                     int(np.asarray(jax.device_get(out.state.step))[0]), out.train_seconds, out.preempted)
