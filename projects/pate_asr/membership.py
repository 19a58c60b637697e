"""Membership inference against the ASR transducer: theory (the DP bound) vs practice.

`python -m projects.pate_asr.main --config=projects/pate_asr/configs/membership.py --workdir=DIR`

Carlini et al. (2022)'s protocol, as in `projects/fedlearn/membership.py` for the intent
model. A universe of N in-domain training utterances, one per speaker (`universe`: the
speakers are in no other role of this run). Each of M transducers trains on a random half of
it (every utterance in exactly M/2 models), all M as one vmapped ensemble, so every model is
attacked with the others as its shadow models. Every model starts from the sweep's public
model (`sweep.public_stage`: pretrained on the public labeled corpus, other speakers). Three
settings share the split and the schedule (`steps` Poisson-sampled batches, rate q over each
model's utterances, Adam):

* non-private: Adam on the summed per-utterance RNN-T losses / q * |half|;
* DP-SGD at each target epsilon: each utterance's gradient clipped to `l2_clip_norm` (ghost
  clipping, `libs.dp.ghost_clipped_grad`, vmapped over the models, each on its own batch),
  Gaussian noise (`libs.dp.dpsgd`, one secret key per model), Adam as post-processing.

Privacy unit: the utterance. DP-SGD's neighbouring training sets differ in one utterance,
Poisson sampling at rate q over utterances, noise calibrated with the RDP accountant at
`delta`; the same (epsilon, delta) holds for each of the M models. The attack decides
utterance membership, which is what that guarantee bounds; because each universe speaker has
exactly one utterance, it is also speaker membership within the universe (each speaker
contributes one utterance, so here the utterance-level guarantee is a speaker-level one too).

Attacks, scores per utterance (higher: more member-like), pooled over the attacked models:
* `loss`: the loss threshold (Yeom et al. 2018) on the RNN-T loss per token (-NLL / words);
* `lira`: online LiRA (`libs.audit.membership.lira_scores`) on the logit-scaled probability
  of the whole transcript, log(p / (1 - p)) with log p = -NLL (`sequence_logit_confidence`).
Next to each: AUC, TPR at 0.1% and 1% FPR, the largest TPR at 1% FPR that (epsilon, delta)-DP
allows (`dp_tpr_bound`) and the tighter bound of the run's whole privacy profile from the PLD
accountant (`profile_tpr_bound`); and the utility the guarantee costs: each model's test WER
(held-out speakers; mean over the M models).

Scoring uses the deterministic model (no dropout, no SpecAugment); training uses neither either,
so that the non-private models overfit measurably in the CPU budget. What is published: the
attack metrics, epsilons and WERs; the per-utterance losses stay under each stage's `private/`
(a non-private function of the training data: do not publish them).

Example:
  >>> results = run(membership_config.get_config("default"), "workdirs/asr_membership")
  >>> [(r["model"], r["attack"], r["auc"]) for r in results["membership"]]
"""

from __future__ import annotations

import functools
import math
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
import optax

from libs import accounting
from libs.audit import membership as mia
from libs.audit import stats as audit_stats
from libs.config.checks import require
from libs.data import pipeline
from libs.dp import ghost
from libs.dp import noise as noise_lib
from libs.dp.randomness import DpRandomness
from libs.models import asr as asr_lib
from libs.speech import evaluate as evaluate_lib
from libs.train import checkpoint as ckpt_lib
from libs.train import io as io_lib
from libs.train import loop as loop_lib
from libs.train import plots
from libs.train import rng as rng_lib
from libs.train.state import TrainState
from projects.pate_asr import data as data_lib
from projects.pate_asr import ensemble
from projects.pate_asr import sweep
from projects.pate_asr import validation

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position

ATTACKS = ("loss", "lira")
UNIT = "utterance"
ACCOUNTANT = "rdp"


class Preempted(Exception):
  """A training stage was stopped by a signal after checkpointing."""


def universe(train: pipeline.SpeechSplit, num_utterances: int, seed: int) -> pipeline.SpeechSplit:
  """`num_utterances` utterances of `train`, one per speaker while there are speakers left.

  Speakers in a seeded random order, one random utterance each; only when `num_utterances`
  exceeds the speakers (the tiny test corpus) a second round takes a second utterance each.
  """
  speakers = np.asarray(train.metadata["speaker_id"])
  rng = rng_lib.Streams(seed).numpy("membership/universe")
  by_speaker = [rng.permutation(np.flatnonzero(speakers == s)) for s in rng.permutation(np.unique(speakers))]
  rounds = max(len(u) for u in by_speaker)
  chosen = [u[r] for r in range(rounds) for u in by_speaker if r < len(u)]
  if len(chosen) < num_utterances:
    raise ValueError(f"config.membership.universe_utterances={num_utterances}: the training split has only "
                     f"{len(chosen)} utterances")
  return train.subset(np.asarray(chosen[:num_utterances]))


def _optimizer(mcfg, noise_multiplier: float | None, expected_batch_size: float, key):
  warmup = max(min(mcfg.warmup_steps, mcfg.steps - 1), 1)
  schedule = optax.warmup_cosine_decay_schedule(0.0, mcfg.learning_rate, warmup, max(mcfg.steps, warmup + 1),
                                                end_value=0.1 * mcfg.learning_rate)
  adam = optax.adam(schedule)
  if noise_multiplier is None:
    # The same divisor as DP-SGD's (a public constant), without clipping or noise.
    return optax.chain(optax.scale(1.0 / expected_batch_size), adam)
  return noise_lib.dpsgd(schedule, l2_clip_norm=mcfg.l2_clip_norm, noise_multiplier=noise_multiplier,
                         expected_batch_size=expected_batch_size, key=key, optimizer=adam)


@functools.lru_cache(maxsize=8)
def _accumulate_fn(model, l2_clip_norm: float | None):
  """The jitted, vmapped gradient accumulation; cached, since it does not depend on the noise: the
  DP settings of a run (one per target epsilon) share one compilation."""
  def per_example(params, batch):  # The training objective (NLL, plus the amortized encoder's compute penalty).
    return evaluate_lib.per_example_loss(model, params, batch, None, train=False)

  if l2_clip_norm is None:
    def grad_sum(params, batch):
      return jax.grad(lambda p: jnp.sum(jnp.where(batch["weights"] > 0, per_example(p, batch), 0.0)))(params)
  else:
    clipped = ghost.ghost_clipped_grad(per_example, l2_clip_norm=l2_clip_norm)

    def grad_sum(params, batch):
      return clipped(params, batch, example_weights=batch["weights"])

  return jax.jit(jax.vmap(lambda acc, p, b: jax.tree.map(jnp.add, acc, grad_sum(p, b))), donate_argnums=(0,))


def make_steps(model, mcfg, noise_multiplier: float | None, expected_batch_size: float):
  """`accumulate(grads, params, batch)` and `apply(state, grads)`, jitted and vmapped over models.

  `batch` is [models, physical, ...]: every model its own utterances (padding rows weight 0).
  `accumulate` adds each model's summed per-utterance gradients, each clipped to
  `l2_clip_norm` when `noise_multiplier` is given; `apply` adds the noise (DP-SGD) and steps Adam.
  """
  accumulate = _accumulate_fn(model, None if noise_multiplier is None else float(mcfg.l2_clip_norm))
  opt = _optimizer(mcfg, noise_multiplier, expected_batch_size, jax.random.key(0))  # Keys live in the state.

  def apply(state, grads):
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    return TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state)

  return accumulate, jax.jit(jax.vmap(apply), donate_argnums=(0,))


def init_state(mcfg, params, noise_multiplier: float | None, expected_batch_size: float, noise_keys=None):
  """The stacked TrainState: `params` [models, ...] and, for DP-SGD, one noise key per model."""
  if noise_multiplier is None:
    opt = _optimizer(mcfg, None, expected_batch_size, None)
    return jax.jit(jax.vmap(lambda p: TrainState(jnp.zeros((), jnp.int32), p, opt.init(p))))(params)

  def one(p, k):
    return TrainState(jnp.zeros((), jnp.int32), p, _optimizer(mcfg, noise_multiplier, expected_batch_size, k).init(p))
  return jax.jit(jax.vmap(one))(params, noise_keys)


def poisson_batches(member: np.ndarray, q: float, physical: int, rng: np.random.Generator) -> list[list[np.ndarray]]:
  """Each model's Poisson sample of ITS utterances, cut into physical batches.

  Returns [batch][model] index arrays (at most `physical` each); as many physical batches as
  the largest sample needs, at least one (an empty sample still steps: its noise is released).
  """
  drawn = member & (rng.random(member.shape) < q)
  rows = [np.flatnonzero(d) for d in drawn]
  count = max(1, max(-(-len(r) // physical) for r in rows))
  return [[r[b * physical: (b + 1) * physical] for r in rows] for b in range(count)]


def train_setting(config, workdir: str, model, split: pipeline.SpeechSplit, member: np.ndarray, public_params, *,
                  noise_multiplier: float | None, sampler_seed: int, noise_keys, desc: str):
  """Trains one model per row of `member` from `public_params`; resumes from `workdir/checkpoints`.

  Returns (stacked params, steps done, training seconds, preempted).
  """
  mcfg = config.membership
  num_models = member.shape[0]
  expected = mcfg.sampling_probability * (len(split) / 2)  # Public: every model holds about half.
  params = jax.tree.map(lambda p: jnp.repeat(jnp.asarray(p)[None], num_models, axis=0), public_params)
  state = init_state(mcfg, params, noise_multiplier, expected, noise_keys)
  accumulate, apply = make_steps(model, mcfg, noise_multiplier, expected)
  buckets = pipeline.frame_buckets(split.feature_lengths, config.train.num_buckets)
  widths = pipeline.bucket_label_widths(split, buckets)
  size = mcfg.physical_batch_size

  def step_fn(state, step):
    rng = np.random.default_rng((sampler_seed, step))  # A function of (seed, step): resumes reproduce it.
    grads = jax.tree.map(jnp.zeros_like, state.params)
    for per_model in poisson_batches(member, mcfg.sampling_probability, size, rng):
      batch = ensemble.stack_batches([pipeline.make_batch(split, idx, size, buckets, widths) for idx in per_model])
      grads = accumulate(grads, state.params, {k: v for k, v in batch.items() if k != "index"})
    return apply(state, grads), None  # Nothing logged: the loss is a non-private function of the data.

  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=mcfg.checkpoint_every)
  try:
    out = loop_lib.train_loop(state, step_fn, num_steps=mcfg.steps, checkpointer=ckpt, desc=desc,
                              progress=config.progress)
  finally:
    ckpt.close()
  return out.state.params, out.step, out.train_seconds, out.preempted


@functools.lru_cache(maxsize=8)
def _nll_fn(model):
  """Every model's per-utterance loss on one batch, jitted once per model (cached across settings)."""
  return jax.jit(jax.vmap(lambda p, b: evaluate_lib.per_example_nll(model, p, b, None, train=False),
                          in_axes=(0, None)))


def utterance_nll(model, stacked_params, split: pipeline.SpeechSplit, batch_size: int) -> np.ndarray:
  """[models, utterances] RNN-T negative log-likelihood (nats) of every model on every utterance."""
  nll_fn = _nll_fn(model)
  num = jax.tree.leaves(stacked_params)[0].shape[0]
  out = np.full((num, len(split)), np.nan)
  buckets = pipeline.frame_buckets(split.feature_lengths, 3)
  for batch in pipeline.eval_batches(split, batch_size, buckets):
    nll = np.asarray(nll_fn(stacked_params, {k: v for k, v in batch.items() if k != "index"}), np.float64)
    rows = batch["index"] >= 0
    out[:, batch["index"][rows]] = nll[:, rows]
  if not np.isfinite(out).all():
    raise FloatingPointError(f"{int((~np.isfinite(out)).sum())} per-utterance losses are not finite")
  return out


def attack(nll: np.ndarray, label_lengths: np.ndarray, member: np.ndarray, targets: int) -> dict[str, tuple]:
  """Pooled (member scores, non-member scores) of each attack over the first `targets` models."""
  per_token = nll / np.maximum(label_lengths, 1)[None]
  return mia.pooled_attack_scores(per_token, mia.sequence_logit_confidence(-nll), member, targets)


def plot(curves, bounds, path: str, resolution: float) -> str:
  """Log-log ROC curves with the DP bounds dotted, from `resolution` (1 / non-members attacked:
  no smaller FPR can be measured, so the axis starts there)."""
  fig, ax = plt.subplots(figsize=(5.5, 5))
  grid = np.logspace(math.log10(resolution), 0, 200)
  colors = ("C0", "C1", "C2", "C3", "C4")
  for (label, fpr, tpr), color in zip(curves, colors):
    ax.plot(np.maximum(fpr, resolution), np.maximum(tpr, 1e-4), label=label, color=color)
  for (label, eps, deltas), color in zip(bounds, colors[1:]):
    ax.plot(grid, np.maximum(mia.profile_tpr_bound(grid, eps, deltas), 1e-4), ":", color=color, lw=1.2,
            label=f"largest TPR DP allows, {label}")
  ax.plot(grid, grid, "--", color="black", lw=0.8, label="chance")
  ax.set(xscale="log", yscale="log", xlim=(resolution, 1), ylim=(1e-4, 1), xlabel="false positive rate",
         ylabel="true positive rate")
  ax.set_title("Membership inference (LiRA) on the ASR transducer", fontsize=10)
  ax.legend(fontsize=7, loc="lower right")
  return plots.save_figure(fig, path)


def format_table(rows: list[dict], delta: float) -> str:
  lines = [f"{'model':<12} {'epsilon':>8} {'attack':<6} {'AUC':>6} {'TPR@0.1%':>9} {'profile@0.1%':>12} "
           f"{'TPR@1%':>7} {'bound@1%':>9} {'profile@1%':>10} {'test WER':>8}"]
  for r in rows:
    eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
    lines.append(f"{r['model']:<12} {eps:>8} {r['attack']:<6} {r['auc']:>6.3f} {r['tpr_at_fpr_0.001']:>9.4f} "
                 f"{r['tpr_profile_bound_at_fpr_0.001']:>12.4f} {r['tpr_at_fpr_0.01']:>7.4f} "
                 f"{r['tpr_bound_at_fpr_0.01']:>9.4f} {r['tpr_profile_bound_at_fpr_0.01']:>10.4f} "
                 f"{100 * r['test_wer']:>7.2f}%")
  lines.append(f"epsilon: utterance-level DP-SGD, delta {delta:g}, RDP accountant; bound: the largest TPR at 1% FPR "
               "that (epsilon, delta)-DP allows (1 without DP); profile: the same at 0.1% / 1% FPR over the run's "
               "whole privacy profile (PLD accountant), which is tighter; test WER: mean over the models, held-out "
               "speakers")
  return "\n".join(lines)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid field of a membership config."""
  validation.validate(config)
  noise = config.get("insecure_reproducible_noise")
  require(isinstance(noise, bool), "insecure_reproducible_noise", "must be a bool", noise)
  require(config.model.name == "transducer", "model.name", "must be 'transducer'", config.model.name)
  m = config.membership
  require(isinstance(m.num_models, int) and m.num_models >= 4 and m.num_models % 2 == 0, "membership.num_models",
          "must be an even integer >= 4 (every utterance in exactly half of the models)", m.num_models)
  require(isinstance(m.universe_utterances, int) and m.universe_utterances >= 4, "membership.universe_utterances",
          "must be an integer >= 4", m.universe_utterances)
  require(isinstance(m.attack_targets, int) and 1 <= m.attack_targets <= m.num_models, "membership.attack_targets",
          "must be an integer in [1, num_models]", m.attack_targets)
  for field in ("steps", "physical_batch_size", "checkpoint_every", "eval_batch_size"):
    require(isinstance(m[field], int) and m[field] >= 1, f"membership.{field}", "must be an integer >= 1", m[field])
  require(isinstance(m.warmup_steps, int) and m.warmup_steps >= 0, "membership.warmup_steps",
          "must be an integer >= 0", m.warmup_steps)
  require(isinstance(m.test_utterances, int) and m.test_utterances >= 0, "membership.test_utterances",
          "must be an integer >= 0 (0: the whole test split)", m.test_utterances)
  require(0 < m.sampling_probability <= 1, "membership.sampling_probability", "must be in (0, 1]",
          m.sampling_probability)
  require(m.learning_rate > 0, "membership.learning_rate", "must be > 0", m.learning_rate)
  require(0 < m.l2_clip_norm < math.inf, "membership.l2_clip_norm", "must be > 0 and finite", m.l2_clip_norm)
  require(len(m.target_epsilons) > 0 and all(e > 0 for e in m.target_epsilons), "membership.target_epsilons",
          "must be positive numbers", tuple(m.target_epsilons))
  require(0 < m.delta < 1, "membership.delta", "must be in (0, 1)", m.delta)
  require(isinstance(m.public_workdir, str), "membership.public_workdir", "must be a path ('' for this workdir)",
          m.public_workdir)


def _public_model(config, workdir: str, splits, tokenizer, rand, model):
  """The sweep's public stage (pretrained once; a rerun or a sweep workdir reuses it)."""
  public = data_lib.load_public(config, tokenizer)
  home = config.membership.public_workdir or workdir
  ctx = sweep._Context(config, home, "public", splits, tokenizer, rand,  # pylint: disable=protected-access
                       rng_lib.Streams(config.seed), model)
  return sweep.public_stage(ctx, public)


def _nll_path(stage: str) -> str:
  """Where a stage keeps its [models, utterances] losses: private (non-DP functions of the data)."""
  path = os.path.join(stage, "private", "utterance_nll.npy")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  return path


def _settings(mcfg) -> list[tuple[str, float | None, float | None]]:
  """(name, target epsilon, noise multiplier) of each training setting, non-private first."""
  settings = [("non-private", None, None)]
  for eps in mcfg.target_epsilons:
    sigma = accounting.calibrate_noise_multiplier(float(eps), mcfg.delta, mcfg.sampling_probability, mcfg.steps)
    settings.append((f"dpsgd_eps{float(eps):g}", float(eps), sigma))
  return settings


def run(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """Pretrains (or reuses) the public model, trains the ensembles (resumable stages), attacks them,
  writes results.json and figures/membership_roc.png and prints the table; None if preempted."""
  validate(config)
  start = time.perf_counter()
  mcfg = config.membership
  rand = DpRandomness.from_config(config.seed, config.insecure_reproducible_noise)
  streams = rng_lib.Streams(config.seed)
  os.makedirs(workdir, exist_ok=True)
  tokenizer = data_lib.make_tokenizer(config)
  splits = data_lib.load_splits(config, tokenizer)
  model = asr_lib.build_model(config.model, tokenizer.vocab_size)
  try:
    public_params, public_out = _public_model(config, workdir, splits, tokenizer, rand, model)
  except sweep.Preempted:
    print("stopped by a signal during the public model; rerun the same command to resume")
    return None
  split = universe(splits.train, mcfg.universe_utterances, config.seed)
  member = mia.balanced_membership(mcfg.num_models, len(split), streams.numpy("membership/split"))
  test = splits.test
  if mcfg.test_utterances and mcfg.test_utterances < len(test):
    test = test.subset(np.sort(streams.numpy("membership/test").permutation(len(test))[: mcfg.test_utterances]))
  q = mcfg.sampling_probability
  rows, curves, bounds = [], [], []
  for name, target, sigma in _settings(mcfg):
    stage = os.path.join(workdir, "membership", name)

    def train(name=name, sigma=sigma):
      if sigma is None:  # Not DP: the samples are reproducible from config.seed.
        keys, seed = None, streams.seed("membership/non-private/sampling")
      else:  # DP noise and samples: secret (DpRandomness), one noise key per model.
        keys = jax.random.split(rand.key(f"membership/{name}/noise"), mcfg.num_models)
        seed = rand.seed(f"membership/{name}/sampling")
      params, steps, seconds, preempted = train_setting(
          config, stage, model, split, member, public_params, noise_multiplier=sigma, sampler_seed=seed,
          noise_keys=keys, desc=f"membership/{name}")
      if preempted:
        raise Preempted(name)
      np.save(_nll_path(stage), utterance_nll(model, params, split, mcfg.eval_batch_size))
      wers = [r.wer for r in ensemble.evaluate_ensemble(model, params, test, tokenizer,
                                                        batch_size=mcfg.eval_batch_size)]
      return {"test_wer": wers, "steps": steps, "train_seconds": seconds}

    try:
      out = io_lib.run_stage(stage, train)
    except Preempted as e:
      print(f"stopped by a signal during membership/{e}; rerun the same command to resume")
      return None
    nll = np.load(_nll_path(stage))
    print(f"membership/{name}: {mcfg.num_models} models, {out['steps']} steps in {out['train_seconds']:.0f} s; "
          f"test WER {100 * np.mean(out['test_wer']):.2f}% (mean over the models)")
    spent = None if sigma is None else accounting.dpsgd_epsilon(sigma, q, mcfg.steps, mcfg.delta)
    profile = None if sigma is None else mia.dpsgd_privacy_profile(sigma, q, mcfg.steps, 2 * spent + 2)
    for attack_name, (ins, outs) in attack(nll, split.label_lengths, member, mcfg.attack_targets).items():
      m = mia.roc_metrics(ins, outs)
      # The TPR's sampling error at its threshold (the threshold itself is fitted too: approximate).
      ci = audit_stats.clopper_pearson(int(round(m["tpr_at_fpr_0.01"] * ins.size)), int(ins.size))
      rows.append({
          "model": name, "epsilon": spent, "target_epsilon": target, "attack": attack_name, "auc": m["auc"],
          "tpr_at_fpr_0.001": m["tpr_at_fpr_0.001"], "tpr_at_fpr_0.01": m["tpr_at_fpr_0.01"],
          "tpr_bound_at_fpr_0.001": 1.0 if spent is None else float(mia.dp_tpr_bound(0.001, spent, mcfg.delta)),
          "tpr_bound_at_fpr_0.01": 1.0 if spent is None else float(mia.dp_tpr_bound(0.01, spent, mcfg.delta)),
          "tpr_profile_bound_at_fpr_0.01": 1.0 if spent is None else float(mia.profile_tpr_bound(0.01, *profile)),
          "tpr_profile_bound_at_fpr_0.001": 1.0 if spent is None else float(mia.profile_tpr_bound(0.001, *profile)),
          "tpr_at_fpr_0.01_ci95": list(ci),
          "unit": UNIT, "delta": None if spent is None else mcfg.delta,
          "accountant": None if spent is None else ACCOUNTANT, "profile_accountant": None if spent is None else "pld",
          "noise_multiplier": sigma, "sampling_probability": q, "steps": out["steps"],
          "test_wer": float(np.mean(out["test_wer"])), "test_wer_min": float(np.min(out["test_wer"])),
          "test_wer_max": float(np.max(out["test_wer"])), "members_attacked": int(ins.size),
          "non_members_attacked": int(outs.size)})
      if attack_name == "lira":
        curves.append((f"{name} (AUC {m['auc']:.3f})", *m["roc"]))
    if spent is not None:
      bounds.append((f"eps {spent:.3g}", *profile))
  resolution = 1.0 / min(r["non_members_attacked"] for r in rows)
  figure = plot(curves, bounds, os.path.join(workdir, "figures", "membership_roc.png"), resolution)
  results = {"membership": rows, "unit": UNIT, "delta": mcfg.delta, "accountant": ACCOUNTANT,
             "randomness": rand.describe(), "public_model_test_wer": public_out["test_wer"],
             "universe_utterances": len(split), "num_models": mcfg.num_models,
             "test_utterances": len(test), "config": config.to_dict(),
             "wall_seconds_this_run": time.perf_counter() - start}
  io_lib.write_results(workdir, results, sort_keys=True)
  print(format_table(rows, mcfg.delta))
  print(f"public model (the starting point; trained without the universe): test WER "
        f"{100 * public_out['test_wer']:.2f}%; DP noise and samples: {rand.describe()}")
  print(f"results: {os.path.join(workdir, 'results.json')}\nfigure: {figure}")
  return results
