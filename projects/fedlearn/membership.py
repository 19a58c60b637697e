"""Membership inference against the NLU intent model: theory (the DP bound) vs practice.

`python -m projects.fedlearn.main --config=projects/fedlearn/configs/membership.py --workdir=DIR`

A universe of N distinct generated utterances (duplicates removed: a duplicate of a training
utterance would be a "member" whatever the model did). Each of M models (one vmapped
ensemble) trains on a random half of it, so every utterance is a member of about half of the
models and every model is attacked with the others as its shadow models (Carlini et al.
2022's protocol). Three training settings share the split: non-private (Adam on the mean
loss of Poisson-sampled batches) and DP-SGD (per-example clipping, Gaussian noise, Adam as
post-processing; example-level, RDP, delta 1e-5) at each target epsilon. Attacks:
`loss` (loss threshold) and `lira` (online LiRA on logit-scaled confidences); per setting
the AUC, TPR at 0.1% and 1% FPR, and next to them the largest TPR at 1% FPR that the
setting's (epsilon, delta) allows (`libs.audit.membership.dp_tpr_bound`) and the tighter bound of
the run's whole privacy profile from the PLD accountant (`profile_tpr_bound`).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import tqdm

from libs import accounting
from libs.config.checks import require
from libs.audit import membership as mia
from libs.dp import clipping
from libs.dp import noise as noise_lib
from libs.dp.randomness import DpRandomness
from libs.train import io as io_lib
from libs.train import plots
from libs.train import rng as rng_lib
from projects.fedlearn import data as fd
from projects.fedlearn import tasks

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position

ATTACKS = ("loss", "lira")


def universe(num_examples: int, seed: int) -> tuple[np.ndarray, np.ndarray, fd.FederatedData]:
  """`num_examples` distinct (tokens, intent) examples from the generated device population."""
  devices = 200
  while True:
    pop = fd.generate_population(devices, seed=seed)
    x, y = pop.pooled()
    _, first = np.unique(x, axis=0, return_index=True)
    if len(first) >= num_examples or devices > 100_000:
      break
    devices *= 2
  if len(first) < num_examples:
    raise ValueError(f"the generator gives only {len(first)} distinct utterances, asked for {num_examples}")
  keep = np.sort(first)[:num_examples]
  return x[keep], y[keep], pop


def _membership(num_models: int, num_examples: int, seed: int) -> np.ndarray:
  """bool [models, examples]: every example is in exactly half of the models (balanced, as in
  Carlini et al. 2022), so with any model left out as the target each example still has shadow
  models trained with it and without it. A model holds about half of the universe."""
  rng = np.random.default_rng(seed)
  member = np.zeros((num_models, num_examples), bool)
  for e in range(num_examples):
    member[rng.permutation(num_models)[: num_models // 2], e] = True
  return member


def _batches(member: np.ndarray, q: float, physical: int, rng: np.random.Generator):
  """Each model's Poisson batch over ITS half, as padded [models, physical] indices and weights."""
  drawn = member & (rng.random(member.shape) < q)
  counts = drawn.sum(1)
  if counts.max() > physical:
    raise RuntimeError(f"a Poisson batch of {counts.max()} examples exceeds the physical batch {physical}; "
                       "raise membership.physical_batch_size (truncating would void the DP analysis)")
  idx = np.zeros((member.shape[0], physical), np.int32)
  w = np.zeros((member.shape[0], physical), np.float32)
  for m in range(member.shape[0]):
    rows = np.flatnonzero(drawn[m])
    idx[m, : rows.size], w[m, : rows.size] = rows, 1.0
  return idx, w


def train_models(task: tasks.Task, x: np.ndarray, y: np.ndarray, member: np.ndarray, cfg, *,
                 noise_multiplier: float | None, expected_batch_size: float, rand: DpRandomness,
                 init_key: jax.Array, name: str, progress: bool = True):
  """Trains one model per row of `member` (one vmapped ensemble); DP-SGD when `noise_multiplier` is given.

  Args:
    x, y: the examples, shared by all models ([N, L], [N]) or one set per model ([M, N, L], [M, N]).
    member: bool [M, N]: the examples each model may sample (Poisson, rate cfg.sampling_probability).
    cfg: steps, sampling_probability, physical_batch_size, learning_rate, l2_clip_norm.
    expected_batch_size: DP-SGD's divisor of the noisy sum: a public constant, never the realised
      batch size or a count of a model's private examples.
    rand: secret randomness of DP noise and sampling (`name` separates the streams).

  Returns:
    The stacked params [M, ...].
  """
  num_models = member.shape[0]
  per_model = np.ndim(y) == 2
  xs, ys = jnp.asarray(x), jnp.asarray(y)
  params = jax.jit(jax.vmap(task.init))(jax.random.split(init_key, num_models))
  adam = optax.adam(cfg.learning_rate)
  if noise_multiplier is None:
    opt = adam

    def grads_of(p, xb, yb, w):
      def mean_loss(p):
        return jnp.sum(w * task.example_losses(p, xb, yb)) / jnp.maximum(w.sum(), 1.0)
      return jax.grad(mean_loss)(p)

    opt_state = jax.vmap(opt.init)(params)
  else:
    grad_fn = clipping.clipped_grad(lambda p, xb, yb: task.example_losses(p, xb, yb).sum(),
                                    l2_clip_norm=cfg.l2_clip_norm)

    def make_opt(key):
      return noise_lib.dpsgd(cfg.learning_rate, l2_clip_norm=cfg.l2_clip_norm, noise_multiplier=noise_multiplier,
                             expected_batch_size=expected_batch_size, key=key, optimizer=adam)

    opt = make_opt(jax.random.key(0))  # Its update reads the per-model noise key from the state.

    def grads_of(p, xb, yb, w):
      return grad_fn(p, xb, yb, example_weights=w)

    keys = jax.random.split(rand.key(f"membership/{name}/noise"), num_models)
    opt_state = jax.jit(jax.vmap(lambda p, k: make_opt(k).init(p)))(params, keys)

  @jax.jit
  def step(params, opt_state, idx, w):
    def one(p, s, xm, ym, i, wi):
      updates, s = opt.update(grads_of(p, xm[i], ym[i], wi), s, p)
      return optax.apply_updates(p, updates), s
    data_axis = 0 if per_model else None
    return jax.vmap(one, (0, 0, data_axis, data_axis, 0, 0))(params, opt_state, xs, ys, idx, w)

  rng = np.random.default_rng(rand.seed(f"membership/{name}/sampling"))
  for _ in tqdm.trange(cfg.steps, desc=name, leave=False, disable=not progress):
    idx, w = _batches(member, cfg.sampling_probability, cfg.physical_batch_size, rng)
    params, opt_state = step(params, opt_state, jnp.asarray(idx), jnp.asarray(w))
  return params


def train_ensemble(task: tasks.Task, x: np.ndarray, y: np.ndarray, member: np.ndarray, cfg, *,
                   noise_multiplier: float | None, rand: DpRandomness, init_key: jax.Array, name: str):
  """Trains one model per row of `member` on its half; returns every model's log-probabilities of
  every example, float64 [models, examples, classes]."""
  expected = cfg.sampling_probability * (member.shape[1] // 2)  # Public: models hold about n / 2.
  params = train_models(task, x, y, member, cfg, noise_multiplier=noise_multiplier, expected_batch_size=expected,
                        rand=rand, init_key=init_key, name=name)
  xs = jnp.asarray(x)
  log_probs = jax.jit(jax.vmap(lambda p: jax.nn.log_softmax(task.apply(p, xs))))(params)
  return np.asarray(log_probs, np.float64)


def attack(log_probs: np.ndarray, y: np.ndarray, member: np.ndarray, targets: int) -> dict[str, tuple]:
  """Pooled (member scores, non-member scores) of each attack over the first `targets` models."""
  labels = np.broadcast_to(y, member.shape)
  losses = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
  return mia.pooled_attack_scores(losses, mia.logit_confidence(log_probs, labels), member, targets)


def plot(curves: list[tuple[str, np.ndarray, np.ndarray]], bounds: list[tuple[str, np.ndarray, np.ndarray]],
         path: str) -> str:
  fig, ax = plt.subplots(figsize=(5.5, 5))
  grid = np.logspace(-4, 0, 200)
  for (label, fpr, tpr), color in zip(curves, ("C0", "C1", "C2", "C3", "C4")):
    ax.plot(np.maximum(fpr, 1e-4), np.maximum(tpr, 1e-4), label=label, color=color)
  for (label, eps, deltas), color in zip(bounds, ("C1", "C2", "C3", "C4")):
    ax.plot(grid, np.maximum(mia.profile_tpr_bound(grid, eps, deltas), 1e-4), ":", color=color, lw=1.2,
            label=f"largest TPR DP allows, {label}")
  ax.plot(grid, grid, "--", color="black", lw=0.8, label="chance")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlim(1e-4, 1)
  ax.set_ylim(1e-4, 1)
  ax.set_xlabel("false positive rate")
  ax.set_ylabel("true positive rate")
  ax.set_title("Membership inference on the intent model", fontsize=10)
  ax.legend(fontsize=7, loc="lower right")
  return plots.save_figure(fig, path)


def format_table(rows: list[dict]) -> str:
  lines = [f"{'model':<12} {'epsilon':>8} {'attack':<6} {'AUC':>6} {'TPR@0.1%':>9} {'TPR@1%':>7} {'bound@1%':>9} "
           f"{'profile@1%':>10} {'test acc':>8}"]
  for r in rows:
    eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
    lines.append(f"{r['model']:<12} {eps:>8} {r['attack']:<6} {r['auc']:>6.3f} {r['tpr_at_fpr_0.001']:>9.4f} "
                 f"{r['tpr_at_fpr_0.01']:>7.4f} {r['tpr_bound_at_fpr_0.01']:>9.4f} "
                 f"{r['tpr_profile_bound_at_fpr_0.01']:>10.4f} {r['test_accuracy']:>8.3f}")
  lines.append("epsilon: example-level, delta 1e-5, RDP accountant; bound: the largest TPR at 1% FPR that "
               "(epsilon, delta)-DP allows (1 without DP); profile: the same over the run's whole privacy profile "
               "(PLD accountant), which is tighter")
  return "\n".join(lines)


def validate(config) -> None:
  cfg = config.membership

  require(isinstance(cfg.num_models, int) and cfg.num_models >= 4, "membership.num_models", "must be an integer >= 4",
          cfg.num_models)
  require(isinstance(cfg.num_examples, int) and cfg.num_examples >= 8, "membership.num_examples",
          "must be an integer >= 8",
          cfg.num_examples)
  require(0 < cfg.sampling_probability <= 1, "membership.sampling_probability", "must be in (0, 1]",
          cfg.sampling_probability)
  require(isinstance(cfg.steps, int) and cfg.steps >= 1, "membership.steps", "must be an integer >= 1", cfg.steps)
  require(all(e > 0 for e in cfg.target_epsilons), "membership.target_epsilons", "must all be > 0", cfg.target_epsilons)
  require(1 <= cfg.attack_targets <= cfg.num_models, "membership.attack_targets", "must be in [1, num_models]",
          cfg.attack_targets)
  require(cfg.learning_rate > 0 and cfg.l2_clip_norm > 0, "membership.learning_rate/l2_clip_norm", "must be > 0",
          (cfg.learning_rate, cfg.l2_clip_norm))


def run(config, workdir: str) -> dict:
  """Trains the three ensembles (resumable stages), attacks them, writes results.json and the ROC figure."""
  validate(config)
  cfg = config.membership
  rand = DpRandomness.from_config(config.seed, config.insecure_reproducible_noise)
  streams = rng_lib.Streams(config.seed)
  os.makedirs(workdir, exist_ok=True)
  x, y, pop = universe(cfg.num_examples, config.seed)
  task = tasks.make_task("intent", vocab_size=len(pop.vocab), num_intents=len(pop.intent_names),
                         max_len=pop.max_len, hidden_dim=cfg.hidden_dim)
  member = _membership(cfg.num_models, cfg.num_examples, streams.seed("membership/split"))
  q = cfg.sampling_probability
  settings = [("non-private", None, None)]
  for eps in cfg.target_epsilons:
    sigma = accounting.calibrate_noise_multiplier(eps, cfg.delta, q, cfg.steps)
    settings.append((f"dpsgd_eps{eps:g}", eps, sigma))
  rows, curves, bounds = [], [], []
  for name, eps, sigma in settings:
    stage = os.path.join(workdir, "membership", name)

    def train(name=name, sigma=sigma):
      log_probs = train_ensemble(task, x, y, member, cfg, noise_multiplier=sigma, rand=rand,
                                 init_key=streams.key("membership/init"), name=name)
      return {"log_probs": log_probs.tolist()}

    log_probs = np.asarray(io_lib.run_stage(stage, train)["log_probs"])
    correct = (log_probs.argmax(-1) == y[None])
    # Each model's accuracy on the distinct utterances it did not train on (the other half).
    test_accuracy = float(correct[~member].mean())
    spent = None if sigma is None else accounting.dpsgd_epsilon(sigma, q, cfg.steps, cfg.delta)
    profile = None if sigma is None else mia.dpsgd_privacy_profile(sigma, q, cfg.steps, 2 * spent + 2)
    for attack_name, (ins, outs) in attack(log_probs, y, member, cfg.attack_targets).items():
      m = mia.roc_metrics(ins, outs)
      bound = 1.0 if spent is None else float(mia.dp_tpr_bound(0.01, spent, cfg.delta))
      profile_bound = 1.0 if spent is None else float(mia.profile_tpr_bound(0.01, *profile))
      rows.append({"model": name, "epsilon": spent, "attack": attack_name, "auc": m["auc"],
                   "tpr_at_fpr_0.001": m["tpr_at_fpr_0.001"], "tpr_at_fpr_0.01": m["tpr_at_fpr_0.01"],
                   "tpr_bound_at_fpr_0.01": bound, "tpr_profile_bound_at_fpr_0.01": profile_bound,
                   "unit": "example", "delta": cfg.delta, "accountant": "rdp",
                   "noise_multiplier": sigma, "test_accuracy": test_accuracy,
                   "members_attacked": int(ins.size), "non_members_attacked": int(outs.size)})
      if attack_name == "lira":
        curves.append((f"{name} (AUC {m['auc']:.3f})", *m["roc"]))
    if spent is not None:
      bounds.append((f"eps {spent:.3g}", *profile))
  figure = plot(curves, bounds, os.path.join(workdir, "figures", "membership_roc.png"))
  results = {"membership": rows, "randomness": rand.describe(), "num_examples": cfg.num_examples,
             "num_models": cfg.num_models, "config": config.to_dict()}
  io_lib.write_results(workdir, results, sort_keys=True)
  print(format_table(rows))
  print(f"results: {os.path.join(workdir, 'results.json')}\nfigure: {figure}")
  return results
