"""Empirical privacy audits of DP-SGD (`libs.dp`) and of this project's DP-FedAvg.

`python -m projects.fedlearn.main --config=projects/fedlearn/configs/audit.py --workdir=DIR`

Each row trains many vmapped models with and without a canary whose clipped contribution is
a fixed direction (see `libs.audit.dpsgd`), tests membership from the released models, and
turns the test's error rates into an epsilon lower bound with Clopper-Pearson confidence
(`libs.audit.stats`), next to the epsilon the accountant claims for the same run:

  * `dpsgd`: `libs.dp` DP-SGD as shipped (example-level);
  * `dpsgd_broken`: the same, deliberately broken (`breakage`: noise multiplier / 4, or
    clipping disabled) while claiming the same epsilon: the audit must flag it;
  * `dp_fedavg`: `algorithms.make_algorithm(..., dp=DPConfig)` rounds with Poisson device
    selection (`selection.select`), accounted by `privacy.round_event` (device-level). The
    canary is a device whose one example moves its update by `canary_norm * C` along e_0;
    the other devices' updates are orthogonal to it.

A lower bound below the claim does not prove the claim (the audit is a test, not a proof);
one above it, at the stated confidence, proves the implementation or its accounting wrong.
"""

from __future__ import annotations

import dataclasses
import os

import dp_accounting
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from libs import accounting
from libs.config.checks import require
from libs.audit import dpsgd as dpsgd_audit
from libs.audit import stats
from libs.dp.randomness import DpRandomness
from libs.train import io as io_lib
from libs.train import plots
from projects.fedlearn import algorithms
from projects.fedlearn import privacy
from projects.fedlearn import selection

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position

BREAKAGES = {"broken_noise": "noise multiplier / 4", "broken_clip": "clipping disabled"}


def _example_loss(params, x):
  return -(x @ params)  # Per-example losses [N]: each example's gradient is -x.


def fedavg_trials(setup: dpsgd_audit.CanarySetup, num_runs: int, *, rand: DpRandomness,
                  noise_scale: float = 1.0) -> dpsgd_audit.Trials:
  """`num_runs` vmapped DP-FedAvg runs with the canary device and `num_runs` without.

  `setup` is read as: num_examples = registered devices (one example each), sampling_probability
  = the Poisson inclusion probability, steps = rounds, learning_rate = the server learning rate,
  l2_clip_norm = the device-update clip norm. `noise_scale` < 1 breaks the implementation (tests).
  """
  n, q = setup.num_examples, setup.sampling_probability
  per_device = np.ones(n, np.int64)
  m = int(round(q * n))  # Expected devices per round (Poisson with p_i = m / N): a whole number.
  if not np.isclose(m, q * n):
    raise ValueError(f"sampling_probability * num_examples must be a whole number of devices, got {q * n}")
  dp = algorithms.DPConfig(clip_norm=setup.l2_clip_norm, noise_multiplier=setup.noise_multiplier * noise_scale,
                           expected_clients=m)
  alg = algorithms.make_algorithm("fedavg", _example_loss, algorithms.ClientConfig(learning_rate=1.0),
                                  server_learning_rate=setup.learning_rate, dp=dp)
  x = jnp.asarray(setup.dataset())[:, None, :]  # [devices, 1 example, dim]
  clients = algorithms.Clients((x,), jnp.ones((n, 1), jnp.float32), jnp.arange(n, dtype=jnp.int32))
  apply = jax.jit(jax.vmap(alg.apply, in_axes=(0, None, 0, 0)))
  init = jax.jit(jax.vmap(alg.init))
  trajectories = []
  for side, with_canary in (("member", True), ("non_member", False)):
    state = init(jnp.zeros((num_runs, setup.dim), jnp.float32))
    round_keys = jax.random.split(rand.key(f"audit/fedavg/{side}/noise"), num_runs)
    rngs = [np.random.default_rng(rand.seed(f"audit/fedavg/{side}/{r}")) for r in range(num_runs)]
    traj = [np.asarray(state.params[:, 0])]
    for t in range(setup.steps):
      weights = np.zeros((num_runs, n), np.float32)
      for r, rng in enumerate(rngs):
        weights[r, selection.select("poisson", per_device, m, rng).ids] = 1.0
      if not with_canary:
        weights[:, 0] = 0.0  # The population without the canary device.
      keys = jax.vmap(jax.random.fold_in, (0, None))(round_keys, t)
      state, _ = apply(state, clients, jnp.asarray(weights), keys)
      traj.append(np.asarray(state.params[:, 0]))
    trajectories.append(np.stack(traj))
  return dpsgd_audit.Trials(*trajectories)


def fedavg_claimed_epsilon(setup: dpsgd_audit.CanarySetup) -> float:
  """The device-level epsilon this project's accountant reports for the audited run."""
  n = setup.num_examples
  p = float(selection.inclusion_probabilities("poisson", np.ones(n, np.int64),
                                              int(round(setup.sampling_probability * n))).max())
  event = privacy.round_event("poisson", setup.noise_multiplier, num_devices=n,
                              clients_per_round=int(round(setup.sampling_probability * n)), max_probability=p)
  return accounting.epsilon_of_event(dp_accounting.SelfComposedDpEvent(event, setup.steps), setup.delta)


def _row(variant, claimed, trials, setup, cfg, seed, **extra) -> dict:
  result = stats.audit_epsilon(trials.scores(cfg.observation, setup, True),
                               trials.scores(cfg.observation, setup, False),
                               delta=setup.delta, alpha=cfg.alpha, rng=np.random.default_rng(seed))
  return {"variant": variant, "claimed_epsilon": claimed, "empirical_epsilon_lower": result.epsilon_lower,
          "violates_claim": bool(result.epsilon_lower > claimed), "delta": setup.delta, "accountant": "rdp",
          "confidence": 1 - cfg.alpha, "observation": cfg.observation,
          "statistic": dpsgd_audit.STATISTICS[cfg.observation][result.statistic], "fpr": result.fpr,
          "fnr": result.fnr, "runs_per_side": cfg.runs, "noise_multiplier": setup.noise_multiplier,
          "sampling_probability": setup.sampling_probability, "steps": setup.steps, **extra}


def _setup(section, target_epsilon: float, *, whole_devices: bool = False) -> dpsgd_audit.CanarySetup:
  q = section.sampling_probability
  if whole_devices:  # DP-FedAvg selects m = round(q N) devices in expectation: p_i = m / N exactly.
    q = max(1, round(q * section.num_examples)) / section.num_examples
  sigma = accounting.calibrate_noise_multiplier(target_epsilon, section.delta, q, section.steps)
  return dpsgd_audit.CanarySetup(noise_multiplier=sigma, num_examples=section.num_examples, dim=section.dim,
                                 sampling_probability=q, steps=section.steps,
                                 canary_norm=section.canary_norm, delta=section.delta)


def plot(rows: list[dict], path: str) -> str:
  fig, ax = plt.subplots(figsize=(7, 3.6))
  labels = [r["variant"] + (f"\n({r['breakage']})" if r.get("breakage") else "") for r in rows]
  pos = np.arange(len(rows))
  ax.bar(pos - 0.2, [r["claimed_epsilon"] for r in rows], 0.4, label="claimed (accountant)", color="#4c72b0")
  ax.bar(pos + 0.2, [r["empirical_epsilon_lower"] for r in rows], 0.4, color="#dd8452",
         label=f"empirical lower bound ({100 * rows[0]['confidence']:.0f}% confidence)")
  ax.set_xticks(pos, labels, fontsize=8)
  ax.set_ylabel("epsilon")
  ax.set_title("Privacy audit: a lower bound above the claim means a broken implementation", fontsize=9)
  ax.legend(fontsize=8)
  return plots.save_figure(fig, path)


def format_table(rows: list[dict]) -> str:
  lines = [f"{'variant':<14} {'breakage':<22} {'unit':<8} {'claimed eps':>11} {'empirical lower':>15} "
           f"{'FPR':>6} {'FNR':>6}  statistic  verdict"]
  for r in rows:
    verdict = "VIOLATES CLAIM" if r["violates_claim"] else "consistent"
    lines.append(f"{r['variant']:<14} {r.get('breakage', '-'):<22} {r['unit']:<8} {r['claimed_epsilon']:>11.3f} "
                 f"{r['empirical_epsilon_lower']:>15.3f} {r['fpr']:>6.3f} {r['fnr']:>6.3f}  {r['statistic']:<9}  "
                 f"{verdict}")
  r = rows[0]
  lines.append(f"delta {r['delta']:g}, {100 * r['confidence']:.0f}% Clopper-Pearson confidence, claims by the "
               f"RDP accountant, {r['runs_per_side']} runs with and without the canary each (threshold chosen on "
               "half, bound on the other half)")
  return "\n".join(lines)


def validate(config) -> None:
  """Clear errors for a bad audit config, naming the field."""
  cfg = config.audit

  require(cfg.target_epsilon > 0, "audit.target_epsilon", "must be > 0", cfg.target_epsilon)
  require(isinstance(cfg.runs, int) and cfg.runs >= 8, "audit.runs", "must be an integer >= 8", cfg.runs)
  require(0 < cfg.alpha < 1, "audit.alpha", "must be in (0, 1)", cfg.alpha)
  require(cfg.observation in dpsgd_audit.OBSERVATIONS, "audit.observation",
          f"must be one of {dpsgd_audit.OBSERVATIONS}",
          cfg.observation)
  require(set(cfg.breakages) <= set(BREAKAGES), "audit.breakages", f"must be a subset of {tuple(BREAKAGES)}",
          cfg.breakages)
  if not isinstance(config.insecure_reproducible_noise, bool):
    raise ValueError(f"config.insecure_reproducible_noise must be a bool, got {config.insecure_reproducible_noise!r}")
  for name in ("dpsgd", "fedavg"):
    m = cfg[name]
    require(0 < m.sampling_probability <= 1, f"audit.{name}.sampling_probability", "must be in (0, 1]",
            m.sampling_probability)
    require(isinstance(m.steps, int) and m.steps >= 1, f"audit.{name}.steps", "must be an integer >= 1", m.steps)
    require(isinstance(m.num_examples, int) and m.num_examples >= 2, f"audit.{name}.num_examples",
            "must be an integer >= 2", m.num_examples)
    require(isinstance(m.dim, int) and m.dim >= 2, f"audit.{name}.dim", "must be an integer >= 2", m.dim)
    require(m.canary_norm > 0, f"audit.{name}.canary_norm", "must be > 0", m.canary_norm)
    require(0 < m.delta < 1, f"audit.{name}.delta", "must be in (0, 1)", m.delta)


def run(config, workdir: str) -> dict:
  """Runs every audit row (each a resumable stage) and writes results.json, the figure and the table."""
  validate(config)
  cfg = config.audit
  rand = DpRandomness.from_config(config.seed, config.insecure_reproducible_noise)
  os.makedirs(workdir, exist_ok=True)
  rows = []
  setup = _setup(cfg.dpsgd, cfg.target_epsilon)
  for i, variant in enumerate(("dpsgd",) + tuple(cfg.breakages)):
    name = "dpsgd" if variant == "dpsgd" else "dpsgd_broken"

    def audit_dpsgd(variant=variant, name=name, i=i):
      trials = dpsgd_audit.run_trials(setup, variant, cfg.runs, rand=rand)
      extra = {"breakage": BREAKAGES[variant]} if variant != "dpsgd" else {}
      return _row(name, setup.claimed_epsilon, trials, setup, cfg, config.seed + i, unit="example", **extra)

    rows.append(io_lib.run_stage(os.path.join(workdir, "audit", variant), audit_dpsgd))
    print(f"[audit] {variant}: claimed {rows[-1]['claimed_epsilon']:.3f}, empirical lower bound "
          f"{rows[-1]['empirical_epsilon_lower']:.3f}")
  fed_setup = _setup(cfg.fedavg, cfg.target_epsilon, whole_devices=True)

  def audit_fedavg():
    trials = fedavg_trials(fed_setup, cfg.runs, rand=rand)
    return _row("dp_fedavg", fedavg_claimed_epsilon(fed_setup), trials, fed_setup, cfg, config.seed + 10,
                unit="device")

  rows.append(io_lib.run_stage(os.path.join(workdir, "audit", "dp_fedavg"), audit_fedavg))
  figure = plot(rows, os.path.join(workdir, "figures", "audit.png"))
  results = {"audit": rows, "randomness": rand.describe(), "config": config.to_dict()}
  io_lib.write_results(workdir, results, sort_keys=True)
  print(format_table(rows))
  print(f"results: {os.path.join(workdir, 'results.json')}\nfigure: {figure}")
  return results
