"""The PATE-ASR experiment: PATE (LNMax, GNMax, Confident-GNMax, noisy averaging) against
DP-SGD at the same (epsilon, delta), with the non-private model as the floor.

Stages, for each scenario (each writes its outputs under `workdir/<scenario>/` and is
skipped on a rerun once finished):
  1. floor/      non-private model on the sensitive data;
  2. teachers/   K teachers on speaker-disjoint parts of the sensitive data, trained as
                 one vmapped ensemble;
  3. labels/     for each aggregator, the noisy ensemble decode of every public utterance
                 (see `aggregation`), with the vote histogram of every query;
  4. accounting  for each (aggregator, target epsilon): utterances are released in a fixed
                 order while the budget allows; the budget is checked BEFORE each
                 utterance, on the data-dependent (default; Papernot et al. 2018) or the
                 data-independent RDP (`config.pate.budget`);
  5. students/   one student per (aggregator, target) on its released labels, trained as
                 one vmapped ensemble;
  6. dpsgd/      DP-SGD, one model per finite target, noise calibrated to it;
  7. results.json, the table, figures/wer_vs_epsilon.png.

DP randomness (the aggregators' noise, the smooth-sensitivity release noise, DP-SGD's
noise and Poisson samples) comes from `DpRandomness`: a secret from the operating system
unless `config.insecure_reproducible_noise`, never from config.seed, which results.json
publishes. Every record with a DP epsilon says which (`"randomness"`), and a workdir keeps
the kind it was started with (`dp_randomness.json`), since its outputs are reused on a rerun.

Example:
  >>> results = run(sweep_configs.get_config("quick"), "workdirs/pate_quick")
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
import matplotlib
import ml_collections
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant

from libs.accounting import pate as pate_accounting
from libs.data import pipeline
from libs.dp.randomness import INSECURE, DpRandomness
from libs.models import asr as asr_lib
from libs.speech import wer as wer_lib
from libs.speech.tokenizer import CharTokenizer
from libs.train import io as io_lib
from libs.train import rng as rng_lib
from projects.pate_asr import aggregation
from projects.pate_asr import data as data_lib
from projects.pate_asr import dpsgd_train
from projects.pate_asr import ensemble
from projects.pate_asr import partition
from projects.pate_asr import validation

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

METHOD_LABELS = {"lnmax": "PATE-LNMax", "gnmax": "PATE-GNMax", "confident_gnmax": "PATE-Confident-GNMax",
                 "noisy_average": "PATE-NoisyAvg", "noiseless": "PATE-noiseless (eps=inf)", "dpsgd": "DP-SGD",
                 "nonprivate": "non-private"}


class Preempted(Exception):
  """A stage was stopped by a signal after checkpointing."""


def aggregator_config(pcfg, method: str) -> aggregation.AggregatorConfig:
  return {
      "plurality": lambda: aggregation.AggregatorConfig("plurality"),
      "lnmax": lambda: aggregation.AggregatorConfig("lnmax", scale=pcfg.lnmax_scale),
      "gnmax": lambda: aggregation.AggregatorConfig("gnmax", sigma=pcfg.gnmax_sigma),
      "confident_gnmax": lambda: aggregation.AggregatorConfig(
          "confident_gnmax", sigma=pcfg.confident_sigma, threshold=pcfg.confident_threshold,
          sigma_threshold=pcfg.confident_sigma_threshold),
      "noisy_average": lambda: aggregation.AggregatorConfig("noisy_average", sigma=pcfg.noisy_average_sigma),
  }[method]()


def _epsilon(orders, rdp, delta) -> float:
  if not np.all(np.isfinite(rdp)):
    return math.inf
  return float(rdp_privacy_accountant.compute_epsilon(orders, rdp, delta)[0])


def epsilon_floor(cfg: aggregation.AggregatorConfig, *, num_teachers: int, vocab_size: int,
                  orders: np.ndarray, delta: float) -> float:
  """The data-dependent epsilon of one query answered with every teacher in agreement.

  No label can be released under a smaller target. With few teachers it is large: the
  Theorem-6 bound on GNMax holds only at Renyi orders below mu1 ~ gap / 2 + 1 (Papernot et
  al. 2018, Prop. 10), so 8 unanimous teachers at sigma = 1 cost epsilon 6.0 at delta = 1e-5.
  With 16 or more at sigma = 1 it is 0: the answer is all but certain, its divergence at
  low orders is below delta^2, and the conversion bounds it through total variation by
  (0, delta).
  """
  votes = np.zeros((1, vocab_size), np.int64)
  votes[0, 1] = num_teachers
  one = aggregation.Labels([np.zeros(0, np.int32)], np.array([True]), [votes], [np.array([True])])
  costs = aggregation.query_costs(one, cfg, num_teachers=num_teachers, orders=orders)
  return _epsilon(orders, costs.dependent[0], delta)


def released_prefix(costs: np.ndarray, orders: np.ndarray, target: float, delta: float) -> tuple[int, np.ndarray]:
  """How many utterances (in order) fit in the budget, and their total RDP.

  The check happens before each utterance: the first one whose answers would pass the
  target is not released, and labeling stops there.
  """
  total = np.zeros(len(orders))
  for i, c in enumerate(costs):
    if _epsilon(orders, total + c, delta) > target:
      return i, total
    total = total + c
  return len(costs), total


def _label_split(public: pipeline.SpeechSplit, labels: aggregation.Labels, indices, tokenizer) -> pipeline.SpeechSplit:
  """The public utterances in `indices` with the teachers' labels as transcripts."""
  sub = public.subset(indices)
  sub.labels = [labels.tokens[i] for i in indices]
  sub.transcripts = [tokenizer.decode(labels.tokens[i]) for i in indices]
  sub.__dict__.pop("label_lengths", None)  # Recomputed from the new labels.
  return sub


def aggregation_key(rand: DpRandomness, scenario: str) -> jax.Array:
  """The key of the aggregators' noise in `scenario` (folded with each method's index).

  From `rand`, never from the published config.seed: whoever can regenerate the noise can
  remove it from the released labels. Per scenario: their sensitive data overlap.
  """
  return rand.key(f"pate_aggregation/{scenario}")


def release_seed(rand: DpRandomness, scenario: str, method: str, target: float) -> int:
  """The seed of one smooth-sensitivity release: independent noise for every released value
  (shared noise would publish the exact differences between them)."""
  return rand.seed(f"smooth_sensitivity/{scenario}/{method}/{target:g}")


def check_workdir_randomness(workdir: str, rand: DpRandomness) -> None:
  """Refuses to mix kinds of DP randomness in one workdir.

  A rerun reuses the labels, the DP-SGD checkpoint (with its noise keys) and the releases,
  so the records' "randomness" is right only if every run of the workdir used the same kind.
  DP outputs of workdirs started before the marker existed drew their noise from config.seed.
  """
  path = os.path.join(workdir, "dp_randomness.json")
  recorded = io_lib.read_json(path)
  if recorded is None:
    started = any(os.path.isdir(os.path.join(workdir, s, d)) for s in ("matched", "mismatched")
                  for d in ("labels", "dpsgd"))
    recorded = {"randomness": INSECURE if started else rand.describe()}
    os.makedirs(workdir, exist_ok=True)
    io_lib.write_json(path, recorded)
  if recorded["randomness"] != rand.describe():
    raise ValueError(f"config.insecure_reproducible_noise: the workdir {workdir} holds DP outputs made with "
                     f"{recorded['randomness']} randomness, this run would use {rand.describe()}; use a fresh "
                     f"workdir (or the setting it was started with)")


@dataclasses.dataclass(frozen=True)
class _Scenario:
  """What every stage of one scenario shares."""
  config: ml_collections.ConfigDict
  workdir: str
  scenario: str
  splits: data_lib.Splits
  tokenizer: CharTokenizer
  rand: DpRandomness
  streams: rng_lib.Streams  # Non-DP streams only: DP ones come from `rand`.
  model: object
  progress: bool

  @property
  def pcfg(self):
    return self.config.pate


@dataclasses.dataclass(frozen=True)
class _Point:
  """One (aggregator, target epsilon): the labeled utterances it releases and its record
  (without "wer", which the students give)."""
  method: str
  target: float
  used: np.ndarray
  record: dict


def _prepare_roles(config, splits: data_lib.Splits, scenario: str, streams: rng_lib.Streams):
  """The sensitive/public roles of `splits.train` and the teachers' speaker-disjoint parts."""
  pcfg = config.pate
  roles = partition.split_roles(splits.train, scenario=scenario, public_fraction=pcfg.public_fraction,
                                seed=config.seed, public_accents=tuple(pcfg.public_accents))
  parts = partition.speaker_partition(roles.sensitive, pcfg.num_teachers, seed=config.seed)
  if pcfg.max_public_utterances and len(roles.public) > pcfg.max_public_utterances:
    keep = streams.numpy("pate/public_subsample").choice(len(roles.public), pcfg.max_public_utterances,
                                                         replace=False)
    roles.public = roles.public.subset(np.sort(keep))
  return roles, parts


def _train_stage(ctx: _Scenario, section: str, name: str, member_splits, shared_init: bool = False):
  """Trains (or resumes) the ensemble `name` under `ctx.workdir/name`; raises Preempted if stopped."""
  result = ensemble.train_ensemble(ctx.config[section], os.path.join(ctx.workdir, name), ctx.model, member_splits,
                                   seed=ctx.streams.seed(f"ensemble/{name}"), desc=f"{ctx.scenario}/{name}",
                                   progress=ctx.progress, shared_init=shared_init)
  if result.preempted:
    raise Preempted(name)
  return result


def _wers(ctx: _Scenario, params, split) -> list:
  return [r.wer for r in ensemble.evaluate_ensemble(ctx.model, params, split, ctx.tokenizer,
                                                    batch_size=ctx.config.eval.batch_size)]


def _floor_stage(ctx: _Scenario, roles) -> dict:
  """1. The non-private floor on the sensitive data."""
  def floor():
    t = time.perf_counter()
    r = _train_stage(ctx, "train", "floor", [roles.sensitive])
    return {"test_wer": _wers(ctx, r.params, ctx.splits.test)[0], "train_seconds": time.perf_counter() - t}

  floor_out = io_lib.run_stage(os.path.join(ctx.workdir, "floor"), floor)
  print(f"[{ctx.scenario}] non-private floor: test WER {100 * floor_out['test_wer']:.2f}%")
  return floor_out


def _teacher_stage(ctx: _Scenario, roles, parts):
  """2. The teachers, one per part of the sensitive data (always loaded: the labels need them)."""
  t = time.perf_counter()
  teachers = _train_stage(ctx, "teachers", "teachers", [roles.sensitive.subset(p) for p in parts],
                          shared_init=ctx.pcfg.shared_teacher_init)
  info = io_lib.run_stage(os.path.join(ctx.workdir, "teachers"), lambda: {
      "dev_wer": _wers(ctx, teachers.params, ctx.splits.dev),
      "train_seconds": time.perf_counter() - t, "utterances": [int(len(p)) for p in parts]})
  print(f"[{ctx.scenario}] teachers: dev WER mean {100 * np.mean(info['dev_wer']):.1f}% "
        f"(best {100 * min(info['dev_wer']):.1f}%, worst {100 * max(info['dev_wer']):.1f}%)")
  return teachers


def _label_public(ctx: _Scenario, teachers, public, label_dir: str) -> dict:
  """3. The noisy ensemble labels of the public data, one pass per aggregator (kept on disk)."""
  pcfg = ctx.pcfg
  label_key = aggregation_key(ctx.rand, ctx.scenario)
  all_labels = {}
  for m, method in enumerate(("plurality",) + tuple(pcfg.methods)):
    path = os.path.join(label_dir, f"{method}.npz")
    if os.path.exists(path):
      all_labels[method] = aggregation.Labels.load(path)
      continue
    labeler = aggregation.make_labeler(ctx.model, aggregator_config(pcfg, method),
                                       max_symbols_per_frame=pcfg.max_symbols_per_frame,
                                       decode=pcfg.get("decode", "label_sync"))
    labels = aggregation.label_split(labeler, teachers.params, public, jax.random.fold_in(label_key, m),
                                     batch_size=pcfg.label_batch_size, progress=ctx.progress,
                                     desc=f"{ctx.scenario}/labels/{method}")
    labels.save(path)
    all_labels[method] = labels
  return all_labels


class _Releases:
  """The smooth-sensitivity releases of a scenario, kept so that a rerun republishes the same
  noisy estimates: fresh noise on the same value would be a second release (and averaging
  them would shrink the noise)."""

  def __init__(self, label_dir: str):
    self.path = os.path.join(label_dir, "smooth_sensitivity_releases.json")
    self.values = io_lib.read_json(self.path) or {}


def _account_method(ctx: _Scenario, method: str, labels, public, orders, order, releases: _Releases) -> list[_Point]:
  """4. The released prefix of `method` at each of its targets (noiseless: epsilon = inf only)."""
  pcfg = ctx.pcfg
  cfg = aggregator_config(pcfg, method)
  costs = aggregation.query_costs(labels, cfg, num_teachers=pcfg.num_teachers, orders=orders)
  targets = [math.inf] if method == "plurality" else list(pcfg.target_epsilons)
  floor_eps = (math.inf if method == "plurality" else
               epsilon_floor(cfg, num_teachers=pcfg.num_teachers, vocab_size=ctx.model.config.vocab_size,
                             orders=orders, delta=pcfg.delta))
  below = [t for t in targets if t < floor_eps]
  if below and pcfg.budget == "data_dependent":
    print(f"[{ctx.scenario}] {method}: target epsilon {', '.join(f'{t:g}' for t in below)} is below {floor_eps:.2f}, "
          f"the cost of one answer on which all {pcfg.num_teachers} teachers agree (delta {pcfg.delta:g}): nothing "
          f"can be labeled there. More teachers or a larger delta lower this floor.")
  return [_account(ctx, method, target, labels, costs, public, orders, order, floor_eps, releases)
          for target in targets]


def _account(ctx: _Scenario, method: str, target: float, labels, costs, public, orders, order, floor_eps: float,
             releases: _Releases) -> _Point:
  """4. One (aggregator, target): utterances released in `order` while the budget allows."""
  pcfg, data_dependent = ctx.pcfg, ctx.pcfg.budget == "data_dependent"
  if math.isinf(target):
    count = len(order)
  else:
    basis = costs.dependent if data_dependent else costs.independent
    count, _ = released_prefix(basis[order], orders, target, pcfg.delta)
  released = order[:count]
  used = released[labels.labeled[released]]
  eps_ind = _epsilon(orders, costs.independent[released].sum(0), pcfg.delta) if count else 0.0
  eps_dep = _epsilon(orders, costs.dependent[released].sum(0), pcfg.delta) if count else 0.0
  refs = [public.transcripts[i] for i in used]
  hyps = [ctx.tokenizer.decode(labels.tokens[i]) for i in used]
  record = {
      "method": "pate_" + method if method != "plurality" else "pate_noiseless",
      "scenario": ctx.scenario, "target_epsilon": target, "delta": pcfg.delta,
      "epsilon": eps_dep if data_dependent else eps_ind,
      "epsilon_data_dependent": eps_dep, "epsilon_data_independent": eps_ind,
      "accountant": ("none" if method == "plurality" else
                     f"pate-rdp-{'data-dependent' if data_dependent else 'data-independent'}"),
      "unit": "speaker (one teacher per speaker-disjoint part; implies utterance)",
      "queries_answered": int(sum(int(labels.answered[i].sum()) for i in released)),
      "queries_total": int(sum(len(labels.votes[i]) for i in released)),
      "utterances_released": int(count), "utterances_labeled": int(len(used)),
      "public_utterances": len(public),
      "label_wer": wer_lib.word_error_rate(refs, hyps) if used.size else None,
      "epsilon_floor": floor_eps,
  }
  if method != "plurality":
    record["randomness"] = ctx.rand.describe()
  if method in ("gnmax", "confident_gnmax") and count and data_dependent:
    key = (f"{method} target={target:g} released={count} "
           f"ss=({pcfg.ss_order:g}, {pcfg.ss_beta:g}, {pcfg.ss_sigma:g})")
    if key not in releases.values:
      releases.values[key] = _release(pcfg, labels, released, costs, orders, method,
                                      rng=release_seed(ctx.rand, ctx.scenario, method, target))
      io_lib.write_json(releases.path, releases.values)
    record["released_epsilon"] = releases.values[key]
  return _Point(method, target, used, record)


def _train_students(ctx: _Scenario, public, all_labels: dict, points: list[_Point]) -> list[float]:
  """5. Students, one per distinct label set (same method and released utterances): the test
  WER of each point (1.0 where nothing was labeled: no student can be trained)."""
  distinct = {}
  for p in points:
    if len(p.used) > 0:
      distinct.setdefault((p.method, tuple(p.used.tolist())), len(distinct))
  if not distinct:
    return [1.0 for _ in points]

  def students():
    members = [_label_split(public, all_labels[m], np.asarray(used), ctx.tokenizer) for m, used in distinct]
    r = _train_stage(ctx, "students", "students", members)
    return {"test_wer": _wers(ctx, r.params, ctx.splits.test)}

  student_out = io_lib.run_stage(os.path.join(ctx.workdir, "students"), students)
  return [student_out["test_wer"][distinct[(p.method, tuple(p.used.tolist()))]] if len(p.used) > 0 else 1.0
          for p in points]


def _dpsgd_stage(ctx: _Scenario, sensitive) -> dict:
  """6. DP-SGD at each finite target, noise calibrated to it."""
  def dpsgd():
    targets = [float(t) for t in ctx.pcfg.target_epsilons]
    r = dpsgd_train.train_dpsgd(ctx.config, os.path.join(ctx.workdir, "dpsgd"), ctx.model, sensitive, targets,
                                delta=ctx.pcfg.delta, rand=ctx.rand, name=ctx.scenario, progress=ctx.progress)
    if r.preempted:
      raise Preempted("dpsgd")
    return {"test_wer": _wers(ctx, r.params, ctx.splits.test), "noise_multipliers": r.noise_multipliers,
            "epsilons": r.epsilons, "sampling_probability": r.sampling_probability, "steps": r.steps,
            "train_seconds": r.train_seconds}

  return io_lib.run_stage(os.path.join(ctx.workdir, "dpsgd"), dpsgd)


def _records(ctx: _Scenario, points: list[_Point], student_wers: list[float], dp_out: dict,
             floor_out: dict) -> list[dict]:
  """The scenario's records: PATE points, DP-SGD per finite target, and the non-private floor
  (which stands for DP-SGD at epsilon = inf)."""
  pcfg = ctx.pcfg
  records = [{**p.record, "wer": w} for p, w in zip(points, student_wers)]
  for target, w, sigma, eps in zip(pcfg.target_epsilons, dp_out["test_wer"], dp_out["noise_multipliers"],
                                   dp_out["epsilons"]):
    records.append({"method": "dpsgd", "scenario": ctx.scenario, "target_epsilon": float(target), "epsilon": eps,
                    "delta": pcfg.delta, "wer": w, "unit": "utterance", "accountant": "rdp (Poisson subsampled Gaussian)",
                    "queries_answered": None, "queries_total": None, "noise_multiplier": sigma,
                    "sampling_probability": dp_out["sampling_probability"], "steps": dp_out["steps"],
                    "randomness": ctx.rand.describe()})
  records.append({"method": "nonprivate", "scenario": ctx.scenario, "target_epsilon": math.inf, "epsilon": math.inf,
                  "delta": 0.0, "wer": floor_out["test_wer"], "unit": "none", "accountant": "none",
                  "queries_answered": None, "queries_total": None})
  return records


def run_scenario(config, workdir: str, splits: data_lib.Splits, tokenizer: CharTokenizer, scenario: str,
                 rand: DpRandomness) -> list[dict]:
  pcfg = config.pate
  streams = rng_lib.Streams(config.seed)  # Non-DP streams only: DP ones come from `rand`.
  os.makedirs(workdir, exist_ok=True)
  roles, parts = _prepare_roles(config, splits, scenario, streams)
  ctx = _Scenario(config, workdir, scenario, splits, tokenizer, rand, streams,
                  model=asr_lib.build_model(config.model, tokenizer.vocab_size),
                  progress=config.get("progress", True))
  print(f"[{scenario}] sensitive: {len(roles.sensitive)} utterances of {len(roles.sensitive_speakers)} speakers "
        f"-> {pcfg.num_teachers} teachers; public: {len(roles.public)} utterances of "
        f"{len(roles.public_speakers)} speakers; test: {len(splits.test)}")
  floor_out = _floor_stage(ctx, roles)
  teachers = _teacher_stage(ctx, roles, parts)
  label_dir = os.path.join(workdir, "labels")
  os.makedirs(label_dir, exist_ok=True)
  all_labels = _label_public(ctx, teachers, roles.public, label_dir)
  orders = np.asarray(pcfg.orders if pcfg.orders else pate_accounting.DEFAULT_ORDERS, np.float64)
  # Release order: a permutation of the public utterances, not DP randomness.
  order = streams.numpy("pate/release_order").permutation(len(roles.public))
  releases = _Releases(label_dir)
  points = [p for method in ("plurality",) + tuple(pcfg.methods)
            for p in _account_method(ctx, method, all_labels[method], roles.public, orders, order, releases)]
  student_wers = _train_students(ctx, roles.public, all_labels, points)
  dp_out = _dpsgd_stage(ctx, roles.sensitive)
  return _records(ctx, points, student_wers, dp_out, floor_out)


def _release(pcfg, labels, released, costs, orders, method, *, rng: int) -> dict:
  """GNSS release of the data-dependent cost at `pcfg.ss_order` (Papernot et al. 2018),
  with noise seeded by `rng` (secret: see `release_seed`)."""
  votes = np.concatenate([labels.votes[i] for i in released])
  answered = np.concatenate([labels.answered[i] for i in released])
  cfg_kwargs = dict(sigma=pcfg.gnmax_sigma) if method == "gnmax" else dict(
      sigma=pcfg.confident_sigma, answered_mask=answered, threshold=pcfg.confident_threshold,
      sigma_threshold=pcfg.confident_sigma_threshold)
  ls = pate_accounting.total_local_sensitivity(votes, pcfg.num_teachers, pcfg.ss_order, **cfg_kwargs)
  ss = pate_accounting.smooth_sensitivity(ls, pcfg.ss_beta)
  k = int(np.argmin(np.abs(orders - pcfg.ss_order)))
  rdp_dd = float(costs.dependent[released, k].sum())
  r = pate_accounting.release_data_dependent_epsilon(rdp_dd, ss, pcfg.ss_beta, pcfg.ss_sigma, float(orders[k]),
                                                     pcfg.delta, rng=rng)
  return {"order": r.order, "smooth_sensitivity": ss, "noisy_epsilon_estimate": r.noisy_epsilon,
          "release_epsilon": r.release_epsilon,
          "note": "noisy_epsilon_estimate is a noisy estimate of the data-dependent cost (no worst-case "
                  "guarantee); release_epsilon is the formal cost of publishing it; epsilon_data_independent "
                  "is the worst-case guarantee of the labels."}


def _fmt_eps(x):
  return "inf" if x is None or (isinstance(x, float) and math.isinf(x)) else f"{x:.2f}"


def table(records: list[dict]) -> str:
  rows = ["method                      scenario    target  epsilon  (dd / di)          delta    WER     rel.red. vs DP-SGD  answered/total queries"]
  dp = {(r["scenario"], r["target_epsilon"]): r["wer"] for r in records if r["method"] == "dpsgd"}
  for r in records:
    base = dp.get((r["scenario"], r["target_epsilon"]))
    rel = "" if base is None or r["method"] in ("dpsgd", "nonprivate") or base == 0 else f"{100 * (base - r['wer']) / base:+.1f}%"
    dd = "" if "epsilon_data_dependent" not in r else f"({_fmt_eps(r['epsilon_data_dependent'])} / {_fmt_eps(r['epsilon_data_independent'])})"
    queries = "" if r["queries_total"] is None else f"{r['queries_answered']}/{r['queries_total']}"
    rows.append(f"{METHOD_LABELS.get(r['method'].removeprefix('pate_'), r['method']):27s} {r['scenario']:10s} "
                f"{_fmt_eps(r['target_epsilon']):>6s}  {_fmt_eps(r['epsilon']):>7s}  {dd:22s} {r['delta']:.0e}  "
                f"{100 * r['wer']:6.2f}%  {rel:>18s}  {queries}")
  return "\n".join(rows)


def plot(records: list[dict], path: str) -> None:
  scenarios = sorted({r["scenario"] for r in records})
  fig, axes = plt.subplots(1, len(scenarios), figsize=(6.5 * len(scenarios), 4.5), squeeze=False)
  for ax, scenario in zip(axes[0], scenarios):
    rs = [r for r in records if r["scenario"] == scenario]
    finite = sorted({r["target_epsilon"] for r in rs if not math.isinf(r["target_epsilon"])})
    inf_x = (max(finite) * 2.5) if finite else 1.0
    for method in ["dpsgd", "pate_lnmax", "pate_gnmax", "pate_confident_gnmax", "pate_noisy_average"]:
      pts = sorted((r["target_epsilon"], r["wer"]) for r in rs if r["method"] == method)
      if method.startswith("pate_"):
        pts += [(math.inf, r["wer"]) for r in rs if r["method"] == "pate_noiseless"]
      if not pts:
        continue
      xs = [inf_x if math.isinf(x) else x for x, _ in pts]
      ax.plot(xs, [100 * w for _, w in pts], "o-", label=METHOD_LABELS[method.removeprefix("pate_")])
    floor = [r["wer"] for r in rs if r["method"] == "nonprivate"]
    if floor:
      ax.axhline(100 * floor[0], color="k", ls="--", label="non-private")
    ax.set_xscale("log")
    ticks = finite + [inf_x]
    ax.set_xticks(ticks, [f"{t:g}" for t in finite] + ["inf"])
    ax.set(xlabel="target epsilon (delta fixed)", ylabel="test WER (%)", title=f"{scenario} scenario")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  validation.validate(config)
  validation.validate_pate(config)
  start = time.perf_counter()
  rand = DpRandomness.from_config(config.seed, config.insecure_reproducible_noise)
  check_workdir_randomness(workdir, rand)  # Before any work.
  tokenizer = CharTokenizer()
  splits = data_lib.load_splits(config, tokenizer)
  records = []
  try:
    for scenario in config.pate.scenarios:
      records += run_scenario(config, os.path.join(workdir, scenario), splits, tokenizer, scenario, rand)
  except Preempted as e:
    print(f"stopped by a signal during stage {e}; rerun the same command to resume")
    return None
  plot(records, os.path.join(workdir, "figures", "wer_vs_epsilon.png"))
  results = {"records": records, "config": config.to_dict(), "wall_seconds_this_run": time.perf_counter() - start}
  io_lib.write_results(workdir, results, sort_keys=True)
  print("\n" + table(records))
  print("\nepsilon: what stopped labeling (config.pate.budget); dd = data-dependent (private value, released "
        "with smooth sensitivity in results.json), di = data-independent (worst-case guarantee).")
  print(f"results: {os.path.join(workdir, 'results.json')}\nfigure: {os.path.join(workdir, 'figures', 'wer_vs_epsilon.png')}")
  return results
