"""DP-SGD baseline: the same transducer trained directly on the sensitive utterances.

One model per target epsilon, all trained together (stacked parameters, vmapped steps),
from a fresh initialization or from given parameters (`init_params`: a public pretrained
model). Two privacy units (`unit`):

* "utterance": each step draws a Poisson sample of the sensitive utterances (rate q =
  expected_batch_size / N), splits it into fixed-shape physical batches and sums clipped
  per-example gradients over them (ghost clipping: `libs.dp.ghost_clipped_grad` covers
  every layer of the LSTM transducer).
* "speaker": each step draws a Poisson sample of the SPEAKERS (speaker_id metadata; rate
  q = expected_speakers / number of speakers). A sampled speaker contributes at most
  `max_utterances_per_speaker` of its utterances (all of them if it has no more; otherwise
  a fresh random subset each step, drawn from the secret sampler seed); their gradients are
  summed and that sum is clipped to l2_clip_norm as one unit (`libs.dp.clipped_group_sum`,
  per-example gradients by vmap: ghost clipping does not apply to groups). Each speaker's
  utterances are packed into ONE physical batch (the cap must not exceed
  physical_batch_size), so every per-speaker sum is complete when it is clipped and the
  sum over physical batches equals the logical batch's sum exactly.

Either way the clipped sum gets Gaussian noise with each model's calibrated multiplier
times l2_clip_norm, is divided by the expected number of units (q * N or q * speakers) and
drives Adam (DP-Adam: any optimizer after the noise is post-processing). The Poisson sample
is shared by the models, which does not affect any one model's guarantee. The steps run in
`libs.train.loop`, which restores, checkpoints (with the training seconds), stops cleanly
on a signal and shows the progress bar.

Privacy: add/remove one utterance (unit "utterance") or add/remove one speaker with all
their utterances (unit "speaker"); a Poisson-subsampled Gaussian mechanism (q over that
unit) composed over the steps, RDP accountant (`libs.accounting`); epsilons are formal
guarantees at the run's delta. A per-model `PrivacyLedger` refuses any step that would pass
its target. The Gaussian noise, the Poisson samples and the per-speaker utterance subsets
come from `DpRandomness` (`dp_streams`), never from config.seed, which is published in
results.json. Each step logs only the epsilon spent per model
(`privacy/epsilon/target_<t>`) to `workdir/metrics.jsonl` and TensorBoard; the hparams
record the unit. The training loss is a non-private function of the sensitive data and is
never logged.

Example:
  >>> rand = DpRandomness.from_config(config.seed, config.insecure_reproducible_noise)
  >>> result = train_dpsgd(config, workdir + "/dpsgd", model, sensitive, targets=[1, 2, 5, 10],
  ...                      delta=1e-5, rand=rand, name="matched", unit="speaker",
  ...                      init_params=pretrained_params)
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
from libs.dp import grouped
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

UNIT = "utterance"  # The default privacy unit.
UNITS = ("utterance", "speaker")


@dataclasses.dataclass
class DpsgdResult:
  params: object  # Stacked, one model per target.
  noise_multipliers: list[float]
  epsilons: list[float]  # Spent, from each model's ledger, add/remove one `unit`, RDP, at the run's delta.
  sampling_probability: float  # q of the sampled unit (utterances or speakers).
  steps: int
  train_seconds: float
  preempted: bool
  unit: str = UNIT  # "utterance" or "speaker": what neighbouring datasets differ in.


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

  def __init__(self, targets, sigmas, delta, q, unit):
    self.names = epsilon_metric_names(targets)
    self.ledgers = [accounting.PrivacyLedger(t, delta, unit=unit) for t in targets]
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


def _stacked_params(model, init_key, num_models: int, num_mels: int, init_params=None):
  """[num_models, ...] starting parameters: `init_params` broadcast to every model, or a fresh init.

  Raises:
    ValueError: `init_params` does not have the model's parameter names and shapes.
  """
  if init_params is None:
    return ensemble.init_stacked(model, init_key, num_models, num_mels)
  expected = jax.eval_shape(lambda k: ensemble.init_stacked(model, k, num_models, num_mels), init_key)
  want, treedef = jax.tree_util.tree_flatten_with_path(expected)
  got, _ = jax.tree_util.tree_flatten_with_path(init_params)
  want_shapes = {jax.tree_util.keystr(k): tuple(v.shape[1:]) for k, v in want}
  got_shapes = {jax.tree_util.keystr(k): tuple(np.shape(v)) for k, v in got}
  if want_shapes != got_shapes:
    diff = sorted(k for k in want_shapes.keys() | got_shapes.keys() if want_shapes.get(k) != got_shapes.get(k))
    shown = "; ".join(f"{k}: model {want_shapes.get(k)}, init_params {got_shapes.get(k)}" for k in diff[:5])
    raise ValueError(f"init_params must be ONE model's (unstacked) parameters, with the model's names and "
                     f"shapes; {len(diff)} differ: {shown}")
  by_path = {jax.tree_util.keystr(k): v for k, v in got}
  # Broadcast (a copy per model: the state is donated to the step) in the model's dtypes.
  leaves = [jnp.array(jnp.broadcast_to(jnp.asarray(by_path[jax.tree_util.keystr(k)], v.dtype), v.shape))
            for k, v in want]
  return jax.tree.unflatten(treedef, leaves)


def _init_state(config, params, noise_keys, expected_batch_size):
  """The stacked TrainState, one model (and noise key) per target."""
  dcfg = config.dpsgd
  # The optimizer's structure does not depend on sigma; sigma is an argument of the step.
  init = lambda p, k: TrainState(jnp.zeros((), jnp.int32), p, _optimizer(dcfg, 1.0, expected_batch_size, k).init(p))
  return jax.jit(jax.vmap(init))(params, noise_keys)


class _SpeakerBatches:
  """Speaker-level sampling: Poisson-sampled speakers, capped utterances, packed by speaker.

  Every step is a function of (seed, step), so a resumed run reproduces it. Each sampled
  speaker's utterances go to one physical batch with a batch-local group id, so its
  gradient sum is complete where it is clipped (`grouped.clipped_group_sum`).
  """

  def __init__(self, speaker_ids, expected_speakers: float, max_utterances: int, physical_batch_size: int,
               seed: int):
    if not (isinstance(max_utterances, int) and 1 <= max_utterances <= physical_batch_size):
      raise ValueError(f"config.dpsgd.max_utterances_per_speaker must be an int in [1, physical_batch_size="
                       f"{physical_batch_size}] (each speaker's utterances fill one physical batch), got "
                       f"{max_utterances!r}")
    if not expected_speakers > 0:
      raise ValueError(f"config.dpsgd.expected_speakers must be > 0, got {expected_speakers}")
    _, speaker_of = np.unique(np.asarray(speaker_ids).astype(str), return_inverse=True)
    order = np.argsort(speaker_of, kind="stable")
    counts = np.bincount(speaker_of)
    self.utterances = np.split(order, np.cumsum(counts)[:-1])  # Per speaker, sorted utterance indices.
    self.num_speakers = len(counts)
    self.q = min(1.0, expected_speakers / self.num_speakers)
    self.cap, self.size, self.seed = max_utterances, physical_batch_size, seed
    self.sampler = sampling.PoissonSampler(self.num_speakers, self.q, seed=seed)

  def batches(self, step: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Step `step`'s physical batches: (utterance indices [<= P], batch-local speaker ids, same length).

    An empty sample still gives one empty batch, so the step (and its noise) runs alike.
    """
    speakers = self.sampler.indices(step)
    subset_rng = np.random.default_rng((self.seed, step, 1))  # Not the sampler's (seed, step) stream.
    out, idx, gid = [], [], []
    for s in speakers:
      utts = self.utterances[s]
      if len(utts) > self.cap:
        utts = np.sort(subset_rng.choice(utts, self.cap, replace=False))
      if len(idx) + len(utts) > self.size:
        out.append((np.asarray(idx, np.int64), np.asarray(gid, np.int32)))
        idx, gid = [], []
      gid += [gid[-1] + 1 if gid else 0] * len(utts)
      idx += list(utts)
    if idx or not out:
      out.append((np.asarray(idx, np.int64), np.asarray(gid, np.int32)))
    return out


_STEPS: dict = {}  # (model, dpsgd + train config, batch size, unit) -> the jitted pair; a resume reuses it.


def _jitted_steps(config, model, expected_batch_size, unit):
  key = (model, config.dpsgd.to_json_best_effort(sort_keys=True),
         config.train.to_json_best_effort(sort_keys=True), float(expected_batch_size), unit)
  if key not in _STEPS:
    if len(_STEPS) >= 4:
      _STEPS.pop(next(iter(_STEPS)))
    _STEPS[key] = _build_jitted_steps(config, model, expected_batch_size, unit)
  return _STEPS[key]


def _build_jitted_steps(config, model, expected_batch_size, unit):
  """`accumulate(grads, params, batch, key)` (sum of clipped per-unit gradients, per model)
  and `apply_step(state, grads, sigmas)` (noise + Adam, per model), both jitted and vmapped.

  For unit "speaker", `batch["group"]` holds each row's batch-local speaker id (-1: padding).
  """
  dcfg = config.dpsgd
  spec = evaluate_lib.spec_augment_config(config.train)

  def clipped_sum(params, batch, key):
    per_example = lambda p, b: evaluate_lib.per_example_loss(model, p, b, key, train=True, spec_augment=spec)
    fn = ghost.ghost_clipped_grad(per_example, l2_clip_norm=dcfg.l2_clip_norm)
    return fn(params, batch, example_weights=batch["weights"])

  def speaker_clipped_sum(params, batch, key):
    def per_example(p, b):  # One utterance (leading axis 1): its own SpecAugment and dropout key.
      return evaluate_lib.per_example_loss(model, p, b, jax.random.fold_in(key, b["row"][0]), train=True,
                                           spec_augment=spec)
    return grouped.clipped_group_sum(per_example, params, batch, batch["group"], dcfg.physical_batch_size,
                                     dcfg.l2_clip_norm, batch["weights"])

  fn = speaker_clipped_sum if unit == "speaker" else clipped_sum
  accumulate = jax.jit(jax.vmap(lambda acc, p, b, k: jax.tree.map(jnp.add, acc, fn(p, b, k)),
                                in_axes=(0, 0, None, None)), donate_argnums=(0,))

  def apply(state, grads, sigma):
    opt = _optimizer(dcfg, sigma, expected_batch_size, jax.random.key(0))  # The noise key lives in opt_state.
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    return TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state)

  return accumulate, jax.jit(jax.vmap(apply), donate_argnums=(0,))


def train_dpsgd(config: ml_collections.ConfigDict, workdir: str, model, sensitive: pipeline.SpeechSplit,
                targets: Sequence[float], *, delta: float, rand: DpRandomness, name: str,
                progress: bool = True, unit: str = UNIT, init_params=None) -> DpsgdResult:
  """Trains one DP-SGD model per target epsilon (resuming from `workdir/checkpoints`).

  Args:
    config: the sweep config (`config.dpsgd`, `config.train` for SpecAugment and buckets).
      Unit "utterance" uses `dpsgd.expected_batch_size`; unit "speaker" uses
      `dpsgd.expected_speakers` and `dpsgd.max_utterances_per_speaker` (<=
      `dpsgd.physical_batch_size`).
    workdir: checkpoints, metrics.jsonl and TensorBoard events of this run (one per unit).
    model: the transducer (flax module).
    sensitive: the utterances to protect; unit "speaker" needs its `speaker_id` metadata.
    targets: one target epsilon per model (at `delta`, add/remove one `unit`, RDP).
    delta: the target delta.
    rand: where the DP noise, the Poisson samples and the speakers' utterance subsets come from.
    name: the scenario, which keeps the DP streams of different runs apart (the speaker-level
      run of a scenario gets its own streams, `<name>/speaker`: two models released with the
      same noise would let their difference cancel it).
    progress: show a progress bar.
    unit: the privacy unit, "utterance" or "speaker" (see the module docstring).
    init_params: ONE model's parameters (e.g. the public pretrained model) that every model
      starts from; None: a fresh initialization from config.seed. Ignored on resume.

  Returns:
    DpsgdResult; `preempted` is True when a signal stopped it (rerun to resume).

  Raises:
    ValueError: an unknown `unit`, missing speaker metadata or config fields, or
      `init_params` that do not fit the model.
  """
  if unit not in UNITS:
    raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
  dcfg = config.dpsgd
  n = len(sensitive)
  # Either unit's sample of step t is a function of (seed, t). A resumed run with secret
  # randomness draws a new seed, so its remaining steps use a different stream: as private,
  # since each step's Poisson sample is independent of everything released before.
  if unit == "speaker":
    missing = [f for f in ("expected_speakers", "max_utterances_per_speaker") if f not in dcfg]
    if missing:
      raise ValueError(f"speaker-level DP-SGD needs config.dpsgd.{' and config.dpsgd.'.join(missing)}")
    if "speaker_id" not in sensitive.metadata:
      raise ValueError(f"speaker-level DP-SGD needs the sensitive split's speaker_id metadata; it has "
                       f"{sorted(sensitive.metadata)}")
    noise_keys, sampler_seed = dp_streams(rand, f"{name}/speaker", len(targets))
    speaker_batches = _SpeakerBatches(sensitive.metadata["speaker_id"], dcfg.expected_speakers,
                                      dcfg.max_utterances_per_speaker, dcfg.physical_batch_size, sampler_seed)
    q, num_units = speaker_batches.q, speaker_batches.num_speakers
  else:
    noise_keys, sampler_seed = dp_streams(rand, name, len(targets))
    q, num_units = min(1.0, dcfg.expected_batch_size / n), n
    sampler = sampling.PoissonSampler(n, q, seed=sampler_seed)
  os.makedirs(workdir, exist_ok=True)
  sigmas = [accounting.calibrate_noise_multiplier(t, delta, q, dcfg.num_steps) for t in targets]
  init_key, aug_root = _seed_keys(config.seed)
  params = _stacked_params(model, init_key, len(targets), sensitive.features[0].shape[1], init_params)
  # On resume the loop replaces this state, noise keys included, with the checkpoint's (still secret) one.
  state = _init_state(config, params, noise_keys, q * num_units)
  accumulate, apply_step = _jitted_steps(config, model, q * num_units, unit)
  buckets = pipeline.frame_buckets(sensitive.feature_lengths, config.train.num_buckets)
  widths = pipeline.bucket_label_widths(sensitive, buckets)
  ledgers = _Ledgers(targets, sigmas, delta, q, unit)
  sigma_arr = jnp.asarray(sigmas, jnp.float32)
  size = dcfg.physical_batch_size

  def physical(step):
    """(utterance indices, batch-local speaker ids or None) of each physical batch of `step`."""
    if unit == "speaker":
      return speaker_batches.batches(step)
    return [(idx[idx >= 0], None) for idx, _ in sampling.physical_batches(sampler.indices(step), size)]

  def step_fn(state, step):
    ledgers.catch_up(step)  # A resumed run starts at the checkpoint's step.
    ledgers.check_step()
    grads = jax.tree.map(jnp.zeros_like, state.params)
    step_key = jax.random.fold_in(aug_root, step)
    for b, (idx, group) in enumerate(physical(step)):
      batch = pipeline.make_batch(sensitive, idx, size, buckets, widths)
      batch = {k: v for k, v in batch.items() if k != "index"}
      if group is not None:  # Padding rows (weight 0) get group -1: in no speaker's sum.
        batch["group"] = np.pad(group, (0, size - len(group)), constant_values=-1)
        batch["row"] = np.arange(size, dtype=np.int32)
      grads = accumulate(grads, state.params, batch, jax.random.fold_in(step_key, b))
    state = apply_step(state, grads, sigma_arr)
    ledgers.record_step()
    return state, ledgers.row()  # Accounted epsilons only: the loss is not private.

  writer = metrics_lib.create_writer(workdir)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=dcfg.checkpoint_every)
  if ckpt.latest_step() is None:  # Data-independent facts only.
    writer.write_hparams({"unit": unit, "accountant": "rdp", "delta": delta, "sampling_probability": q,
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
                     int(np.asarray(jax.device_get(out.state.step))[0]), out.train_seconds, out.preempted, unit)
