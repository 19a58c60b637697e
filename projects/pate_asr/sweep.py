"""The PATE-ASR experiment: PATE students against DP-SGD at the same privacy unit, every
private model fine-tuned from a public model.

Data roles (`partition`, `data`): a public labeled corpus of other speakers pretrains the
public model; the in-domain corpus gives the sensitive speakers (teachers, DP-SGD, the
non-private model), the public unlabeled speakers (the students' queries) and dev/test.
Speakers are disjoint across roles.

The sweep is an explicit list of stages. Each reads saved inputs and writes one artifact
under `workdir/` (`<scenario>/` for the per-scenario ones), and a rerun skips a finished
stage (`libs.train.io.run_stage`; training stages also resume from their checkpoints):
  public/                 the public model (pretrained on the public labeled corpus): the
                          epsilon = 0 row;
  <scenario>/nonprivate/  fine-tuned on all sensitive data: the epsilon = inf row;
  <scenario>/teachers/    K speaker-disjoint teachers fine-tuned from the public model, one
                          vmapped ensemble;
  <scenario>/labels       every aggregator's answers for the fixed query set (the first
                          max(query_utterances) public utterances of a data-independent
                          order), kept under <scenario>/private/labels/;
  <scenario>/privacy/     one record per (aggregator, target) from `privacy.account_labels`
                          over the first query_utterances[target] utterances: every query
                          charged, the data-independent epsilon always, a data-dependent one
                          only through its smooth-sensitivity release;
  <scenario>/students/    one student per label set, fine-tuned from the public model on the
                          released labels, then self-trained on the other public utterances
                          with its own pseudo-labels (post-processing: no privacy cost);
  <scenario>/dpsgd_<unit>/  DP-SGD per target at the speaker and the utterance level;
  results.json, the table, figures/wer_vs_epsilon.png.

The trained parameters of the public model, the non-private model, the final (self-trained)
students and the DP-SGD models are kept as `params.msgpack` in their stage's directory
(`load_params`; stacked ones have a leading axis of members: the students in the order of
`students/done.json`'s index, DP-SGD in the order of `config.pate.target_epsilons`), for the
attacks that study them (`projects/pate_asr/inversion.py`). A workdir from before they were
kept gets them from each finished stage's final checkpoint on a rerun, without training.

What is private (never in results.json or the table): vote histograms, raw data-dependent
costs, smooth sensitivities, and the teachers' own WERs and agreement, under
`<scenario>/private/`; and the training logs and checkpoints of the models trained on
sensitive data without DP (`<scenario>/nonprivate/`, `<scenario>/teachers/`: their losses are
functions of the sensitive data). They are for the developer; do not publish them.

DP randomness (aggregation noise, smooth-sensitivity release noise, DP-SGD noise and
samples) comes from `DpRandomness`: an operating-system secret unless
`config.insecure_reproducible_noise`, never from the published config.seed.

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
import orbax.checkpoint as ocp

from libs.data import pipeline
from libs.dp.randomness import INSECURE, DpRandomness
from libs.models import asr as asr_lib
from libs.speech import tokenizer as tokenizer_lib
from libs.speech import trainer
from libs.speech import wer as wer_lib
from libs.train import io as io_lib
from libs.train import rng as rng_lib
from projects.pate_asr import aggregation
from projects.pate_asr import data as data_lib
from projects.pate_asr import dpsgd_train
from projects.pate_asr import ensemble
from projects.pate_asr import partition
from projects.pate_asr import privacy
from projects.pate_asr import validation

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

METHOD_LABELS = {"pate_lnmax": "PATE-LNMax", "pate_gnmax": "PATE-GNMax",
                 "pate_confident_gnmax": "PATE-Confident-GNMax", "pate_noisy_average": "PATE-NoisyAvg",
                 "pate_noiseless": "PATE-noiseless (eps=inf)", "dpsgd_speaker": "DP-SGD (speaker)",
                 "dpsgd_utterance": "DP-SGD (utterance)", "nonprivate": "non-private",
                 "public_only": "public only"}


PARAMS_FILE = "params.msgpack"


class Preempted(Exception):
  """A stage was stopped by a signal after checkpointing."""


def params_path(stage_dir: str) -> str:
  return os.path.join(stage_dir, PARAMS_FILE)


def save_params(stage_dir: str, params) -> str:
  """Writes a stage's trained parameters to `stage_dir/params.msgpack` (atomically, process 0)."""
  return io_lib.save_pytree(params_path(stage_dir), params)


def load_params(stage_dir: str):
  """A stage's saved parameters (nested dicts of NumPy arrays).

  Raises:
    FileNotFoundError: naming the file, when the stage has not saved them (not run, or not
      finished: rerun the sweep on the workdir).
  """
  return io_lib.load_pytree(params_path(stage_dir))


def _final_checkpoint_params(checkpoint_dir: str, num_steps: int):
  """The parameters of a training run's checkpoint at its last step, or None if it has none."""
  if not os.path.isdir(checkpoint_dir):
    return None
  manager = ocp.CheckpointManager(os.path.abspath(checkpoint_dir), item_handlers=ocp.StandardCheckpointHandler())
  try:
    if num_steps not in manager.all_steps():
      return None
    return manager.restore(num_steps, args=ocp.args.StandardRestore())["state"]["params"]
  finally:
    manager.close()


def _backfill_params(stage_dir: str, checkpoint_dir: str, num_steps: int) -> None:
  """Saves a finished stage's parameters from its final checkpoint when a workdir from before
  parameters were kept lacks them (nothing is trained)."""
  if os.path.exists(params_path(stage_dir)) or io_lib.read_done(stage_dir) is None:
    return
  params = _final_checkpoint_params(checkpoint_dir, num_steps)
  if params is not None:
    save_params(stage_dir, params)


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


def analysis_config(pcfg) -> privacy.AnalysisConfig:
  return privacy.AnalysisConfig.from_pate_config(pcfg)


def aggregation_key(rand: DpRandomness, scenario: str) -> jax.Array:
  """The key of the aggregators' noise in `scenario` (folded with each method's index).

  From `rand`, never from the published config.seed: whoever can regenerate the noise can
  remove it from the released labels. Per scenario: their sensitive data overlap.
  """
  return rand.key(f"pate_aggregation/{scenario}")


def release_rng(rand: DpRandomness, scenario: str, method: str, target: float) -> np.random.Generator:
  """The generator of one smooth-sensitivity release: independent noise for every published
  value (shared noise would publish the exact differences between them)."""
  return np.random.default_rng(release_seed(rand, scenario, method, target))


def release_seed(rand: DpRandomness, scenario: str, method: str, target: float) -> int:
  return rand.seed(f"smooth_sensitivity/{scenario}/{method}/{target:g}")


def check_workdir_randomness(workdir: str, rand: DpRandomness) -> None:
  """Refuses to mix kinds of DP randomness in one workdir (its DP outputs are reused on a rerun)."""
  path = os.path.join(workdir, "dp_randomness.json")
  recorded = io_lib.read_json(path)
  if recorded is None:  # Workdirs of the earlier layout (labels/, dpsgd/) drew noise from the seed.
    started = any(os.path.isdir(os.path.join(workdir, s, d)) for s in partition.SCENARIOS
                  for d in ("labels", "dpsgd", "private", "dpsgd_speaker", "dpsgd_utterance"))
    recorded = {"randomness": INSECURE if started else rand.describe()}
    os.makedirs(workdir, exist_ok=True)
    io_lib.write_json(path, recorded)
  if recorded["randomness"] != rand.describe():
    raise ValueError(f"config.insecure_reproducible_noise: the workdir {workdir} holds DP outputs made with "
                     f"{recorded['randomness']} randomness, this run would use {rand.describe()}; use a fresh "
                     f"workdir (or the setting it was started with)")


@dataclasses.dataclass(frozen=True)
class _Context:
  """What every stage shares."""
  config: ml_collections.ConfigDict
  workdir: str  # The scenario's directory (the run's for the public stage).
  scenario: str
  splits: data_lib.Splits  # In-domain train (all roles), dev, test.
  tokenizer: tokenizer_lib.Tokenizer
  rand: DpRandomness
  streams: rng_lib.Streams  # Non-DP streams only: DP ones come from `rand`.
  model: object

  @property
  def pcfg(self):
    return self.config.pate

  @property
  def progress(self) -> bool:
    return self.config.get("progress", True)

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  def private_path(self, *parts: str) -> str:
    path = os.path.join(self.workdir, "private", *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def _with_train(config, section: str) -> ml_collections.ConfigDict:
  """`config` with `config[section]` as its train section (trainer.train reads config.train)."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.train = config[section]
  return out


def _test_wers(ctx: _Context, stacked_params) -> list[float]:
  return [r.wer for r in ensemble.evaluate_ensemble(ctx.model, stacked_params, ctx.splits.test, ctx.tokenizer,
                                                    batch_size=ctx.config.eval.batch_size)]


def _stack(params):
  return jax.tree.map(lambda p: np.asarray(p)[None], params)


def _train_single(ctx: _Context, section: str, name: str, split, init_params=None, dev=None):
  result = trainer.train(_with_train(ctx.config, section), ctx.path(name), ctx.model, split, dev, ctx.tokenizer,
                     desc=f"{ctx.scenario}/{name}", init_params=init_params)
  if result.preempted:
    raise Preempted(name)
  return jax.device_get(result.state.params)


# -- stages ------------------------------------------------------------------------------


def public_stage(ctx: _Context, public: data_lib.Splits):
  """The public model: trained from scratch on the public labeled corpus."""
  stage = ctx.path("public")
  if os.path.exists(params_path(stage)):
    params = load_params(stage)
  else:  # Trains, or resumes (a finished run's checkpoint returns at once).
    params = _train_single(ctx, "public_train", "public", public.train, dev=public.dev)
    save_params(stage, params)
  out = io_lib.run_stage(stage, lambda: {"test_wer": _test_wers(ctx, _stack(params))[0],
                                         "train_utterances": len(public.train)})
  print(f"public model (public labeled corpus, {len(public.train)} utterances): in-domain test WER "
        f"{100 * out['test_wer']:.2f}%")
  return params, out


def nonprivate_stage(ctx: _Context, roles, public_params) -> dict:
  """The public model fine-tuned on all sensitive data (no privacy)."""
  def run():
    params = _train_single(ctx, "train", "nonprivate", roles.sensitive, init_params=public_params)
    save_params(ctx.path("nonprivate"), params)
    return {"test_wer": _test_wers(ctx, _stack(params))[0]}
  out = io_lib.run_stage(ctx.path("nonprivate"), run)
  _backfill_params(ctx.path("nonprivate"), ctx.path("nonprivate", "checkpoints"), ctx.config.train.num_steps)
  print(f"[{ctx.scenario}] non-private (public model + all sensitive data): test WER {100 * out['test_wer']:.2f}%")
  return out


def teacher_stage(ctx: _Context, roles, parts, public_params):
  """K teachers on speaker-disjoint parts, fine-tuned from the public model (always loaded)."""
  result = ensemble.train_ensemble(ctx.config.teachers, ctx.path("teachers"), ctx.model,
                                   [roles.sensitive.subset(p) for p in parts],
                                   seed=ctx.streams.seed("ensemble/teachers"), desc=f"{ctx.scenario}/teachers",
                                   progress=ctx.progress, init_params=public_params)
  if result.preempted:
    raise Preempted("teachers")

  def diagnostics():  # Private: the teachers' WERs are functions of the sensitive data.
    dev = ctx.splits.dev.subset(np.arange(min(len(ctx.splits.dev), ctx.pcfg.get("teacher_dev_utterances", 200))))
    wers = [r.wer for r in ensemble.evaluate_ensemble(ctx.model, result.params, dev, ctx.tokenizer,
                                                      batch_size=ctx.config.eval.batch_size)]
    io_lib.write_json(ctx.private_path("teachers.json"), {
        "dev_wer": wers, "dev_wer_mean": float(np.mean(wers)), "dev_wer_min": float(min(wers)),
        "dev_wer_max": float(max(wers)), "utterances": [int(len(p)) for p in parts]})
    return {"num_teachers": len(parts), "train_seconds": result.train_seconds}
  io_lib.run_stage(ctx.path("teachers"), diagnostics)
  return result.params


@dataclasses.dataclass(frozen=True)
class _Query:
  """One labeling run, fixed from public config before any teacher votes: an aggregator
  with its noise calibrated so that the formal epsilon of `count` utterances meets `target`."""
  method: str
  target: float
  count: int  # The first `count` utterances of the query set.
  aggregator: aggregation.AggregatorConfig
  analysis: privacy.AnalysisConfig

  @property
  def name(self) -> str:
    return f"{self.method}_{self.target:g}"


def query_plan(pcfg) -> list[_Query]:
  """The noiseless labels (epsilon inf, for reference) and one calibrated run per (method, target).

  The configured noise levels only set the shape of each aggregator's noise (the ratio of
  Confident-GNMax's two sigmas; its threshold is kept): `privacy.calibrate` scales them to the
  least noise whose formal epsilon meets the target. Where the smooth-sensitivity release
  alone would cost more than the target, GNMax and Confident-GNMax publish the formal figure
  without a release.
  """
  analysis = analysis_config(pcfg)
  plan = [_Query("plurality", math.inf, max(pcfg.query_utterances), aggregator_config(pcfg, "plurality"), analysis)]
  for method in pcfg.methods:
    for target, count in zip(pcfg.target_epsilons, pcfg.query_utterances):
      base, chosen = aggregator_config(pcfg, method), analysis
      try:
        cfg = privacy.calibrate(base, analysis, count, float(target))
      except ValueError:
        chosen = dataclasses.replace(analysis, release=False)
        cfg = privacy.calibrate(base, chosen, count, float(target))
      plan.append(_Query(method, float(target), int(count), cfg, chosen))
  return plan


def label_stage(ctx: _Context, teacher_params, queries, plan: list[_Query]) -> dict:
  """Every planned run's answers on its queries (private: the files hold the votes)."""
  pcfg = ctx.pcfg
  label_key = aggregation_key(ctx.rand, ctx.scenario)
  out = {}
  for i, q in enumerate(plan):
    path = ctx.private_path("labels", f"{q.name}.npz")
    if not os.path.exists(path):
      labeler = aggregation.make_labeler(ctx.model, q.aggregator, max_symbols_per_frame=pcfg.max_symbols_per_frame,
                                         decode=pcfg.decode, max_queries_per_utterance=pcfg.max_queries_per_utterance)
      aggregation.label_split(labeler, teacher_params, queries.subset(np.arange(q.count)),
                              jax.random.fold_in(label_key, i), batch_size=pcfg.label_batch_size,
                              progress=ctx.progress, desc=f"{ctx.scenario}/labels/{q.name}").save(path)
    out[q.name] = aggregation.Labels.load(path)
  _write_agreement(ctx, out[plan[0].name])
  return out


def _write_agreement(ctx: _Context, labels: aggregation.Labels) -> None:
  """Private diagnostics: the distribution of the top-vote share of the noiseless queries."""
  made = [v for v in labels.votes if len(v)]
  if not made:
    return
  votes = np.concatenate(made)
  share = votes.max(-1) / np.maximum(votes.sum(-1), 1)
  io_lib.write_json(ctx.private_path("agreement.json"), {
      "queries": int(len(share)), "queries_per_utterance": float(len(share) / len(labels.votes)),
      "unanimous": float(np.mean(share >= 1.0)), "at_least_75pct": float(np.mean(share >= 0.75)),
      "share_quantiles_10_50_90": [float(q) for q in np.quantile(share, [0.1, 0.5, 0.9])]})


def privacy_stage(ctx: _Context, all_labels: dict, queries, plan: list[_Query]) -> list[dict]:
  """One public record per planned run; private intermediates to private/privacy/."""
  def run():
    points = []
    for q in plan:
      labels = all_labels[q.name]
      record, private = privacy.account_labels(labels, q.aggregator, q.analysis, target_epsilon=q.target,
                                               rng=release_rng(ctx.rand, ctx.scenario, q.method, q.target))
      privacy.check_public(record)
      io_lib.write_json(ctx.private_path("privacy", f"{q.name}.json"), private)
      used = np.nonzero(labels.labeled)[0]
      refs = [queries.transcripts[i] for i in used]
      hyps = [ctx.tokenizer.decode(labels.tokens[i]) for i in used]
      noise = {k: v for k, v in dataclasses.asdict(q.aggregator).items() if k != "name" and v}
      # The label WER compares released labels with the public utterances' true transcripts,
      # which a real deployment would not have: an evaluation-only figure.
      points.append({"record": {**record, "scenario": ctx.scenario, "noise": noise,
                                "randomness": ctx.rand.describe() if q.method != "plurality" else "none"},
                     "labels": q.name, "used": used.tolist(),
                     "label_wer": wer_lib.word_error_rate(refs, hyps) if len(used) else None})
    return points

  return io_lib.run_stage(ctx.path("privacy"), run)


def _labeled_split(queries, labels: aggregation.Labels, used, tokenizer) -> pipeline.SpeechSplit:
  sub = queries.subset(used)
  sub.labels = [labels.tokens[i] for i in used]
  sub.transcripts = [tokenizer.decode(labels.tokens[i]) for i in used]
  sub.__dict__.pop("label_lengths", None)  # Recomputed from the new labels.
  return sub


def _pseudo_labeled(split, hyps: list[str], tokenizer) -> pipeline.SpeechSplit:
  keep = [i for i, h in enumerate(hyps) if h]
  sub = split.subset(keep)
  sub.transcripts = [hyps[i] for i in keep]
  sub.labels = [np.asarray(tokenizer.encode(h), np.int32) for h in sub.transcripts]
  sub.__dict__.pop("label_lengths", None)
  return sub


def _with_public(labeled: pipeline.SpeechSplit, public_labeled: pipeline.SpeechSplit | None) -> pipeline.SpeechSplit:
  """The released labels mixed with the public labeled corpus (free: public data), the labels
  repeated (up to 8 times, at most to a third of the mix) so that the in-domain utterances are
  not drowned out, while a handful of noisy labels cannot dominate."""
  if public_labeled is None:
    return labeled
  reps = max(1, min(8, len(public_labeled) // (2 * len(labeled))))
  return _concat(labeled.subset(np.tile(np.arange(len(labeled)), reps)), public_labeled)


def student_stage(ctx: _Context, points: list[dict], all_labels: dict, queries, rest, public_params,
                  public_labeled: pipeline.SpeechSplit | None = None) -> dict:
  """Students: fine-tuned from the public model on released labels (with the public labeled
  corpus mixed in when given), then self-trained on the rest of the public unlabeled
  utterances with their own pseudo-labels."""
  distinct = {}
  for p in points:
    if p["used"]:
      distinct.setdefault((p["labels"], tuple(p["used"])), len(distinct))
  if not distinct:  # Nothing released (noise-dependent): recorded as done, so reruns skip it too.
    return io_lib.run_stage(ctx.path("students"), lambda: {"test_wer": [], "test_wer_self_trained": [], "index": {}})

  def run():
    labeled = [_labeled_split(queries, all_labels[m], np.asarray(u), ctx.tokenizer) for m, u in distinct]
    common = dict(seed=ctx.streams.seed("ensemble/students"), progress=ctx.progress)
    first = ensemble.train_ensemble(ctx.config.students, ctx.path("students"), ctx.model,
                                    [_with_public(l, public_labeled) for l in labeled],
                                    desc=f"{ctx.scenario}/students", init_params=public_params, **common)
    if first.preempted:
      raise Preempted("students")
    wers = _test_wers(ctx, first.params)
    second_cfg = ml_collections.ConfigDict(ctx.config.students.to_dict())
    second_cfg.num_steps = ctx.config.students.self_training_steps
    hyps = ensemble.transcribe_ensemble(ctx.model, first.params, rest, ctx.tokenizer,
                                        batch_size=ctx.config.eval.batch_size)
    mixed = [_with_public(_concat(l, _pseudo_labeled(rest, h, ctx.tokenizer)), public_labeled)
             for l, h in zip(labeled, hyps)]
    second = ensemble.train_ensemble(second_cfg, ctx.path("students_self_trained"), ctx.model, mixed,
                                     desc=f"{ctx.scenario}/self-training", init_stacked_params=first.params,
                                     **common)
    if second.preempted:
      raise Preempted("students_self_trained")
    save_params(ctx.path("students"), second.params)
    return {"test_wer": wers, "test_wer_self_trained": _test_wers(ctx, second.params),
            "index": {f"{m}|{','.join(map(str, u))}": k for (m, u), k in distinct.items()}}

  out = io_lib.run_stage(ctx.path("students"), run)
  _backfill_params(ctx.path("students"), ctx.path("students_self_trained", "checkpoints"),
                   ctx.config.students.self_training_steps)
  return out


def _concat(a: pipeline.SpeechSplit, b: pipeline.SpeechSplit) -> pipeline.SpeechSplit:
  meta = {k: np.concatenate([a.metadata[k], b.metadata[k]]) for k in a.metadata if k in b.metadata}
  return pipeline.SpeechSplit(list(a.features) + list(b.features), list(a.labels) + list(b.labels),
                              list(a.transcripts) + list(b.transcripts), list(a.utterance_ids) + list(b.utterance_ids), meta)


def dpsgd_stage(ctx: _Context, roles, public_params, unit: str) -> dict:
  """DP-SGD at each target, at the speaker or utterance level, fine-tuned from the public model."""
  name = f"dpsgd_{unit}"

  def run():
    targets = [float(t) for t in ctx.pcfg.target_epsilons]
    r = dpsgd_train.train_dpsgd(ctx.config, ctx.path(name), ctx.model, roles.sensitive, targets,
                                delta=ctx.pcfg.delta, rand=ctx.rand, name=f"{ctx.scenario}/{unit}",
                                progress=ctx.progress, unit=unit, init_params=public_params)
    if r.preempted:
      raise Preempted(name)
    save_params(ctx.path(name), r.params)
    return {"test_wer": _test_wers(ctx, r.params), "noise_multipliers": r.noise_multipliers,
            "epsilons": r.epsilons, "sampling_probability": r.sampling_probability, "steps": r.steps}

  out = io_lib.run_stage(ctx.path(name), run)
  _backfill_params(ctx.path(name), ctx.path(name, "checkpoints"), ctx.config.dpsgd.num_steps)
  return out


# -- the scenario and the run ------------------------------------------------------------


def _records(ctx: _Context, points, students, dpsgd: dict, nonprivate: dict, public_out: dict) -> list[dict]:
  pcfg = ctx.pcfg
  records = []
  for p in points:
    key = f"{p['labels']}|{','.join(map(str, p['used']))}"
    k = students["index"].get(key) if p["used"] else None
    # Nothing released, nothing learned from the sensitive data: the student is the public model.
    wer = public_out["test_wer"] if k is None else students["test_wer_self_trained"][k]
    wer_labels_only = public_out["test_wer"] if k is None else students["test_wer"][k]
    records.append({**p["record"], "wer": wer, "wer_before_self_training": wer_labels_only,
                    "student": "public model (no labels released)" if k is None else "fine-tuned on the labels",
                    "label_wer": p["label_wer"]})
  for unit, out in dpsgd.items():
    for target, w, sigma, eps in zip(pcfg.target_epsilons, out["test_wer"], out["noise_multipliers"],
                                     out["epsilons"]):
      records.append({"method": f"dpsgd_{unit}", "scenario": ctx.scenario, "unit": unit,
                      "target_epsilon": float(target), "epsilon": eps, "epsilon_kind": "formal",
                      "epsilon_data_independent": eps, "delta": pcfg.delta,
                      "accountant": f"rdp (Poisson-subsampled Gaussian over {unit}s)", "wer": w,
                      "noise_multiplier": sigma, "sampling_probability": out["sampling_probability"],
                      "steps": out["steps"], "randomness": ctx.rand.describe()})
  for method, eps, wer in (("public_only", 0.0, public_out["test_wer"]), ("nonprivate", math.inf, nonprivate["test_wer"])):
    records.append({"method": method, "scenario": ctx.scenario, "unit": "speaker", "target_epsilon": eps,
                    "epsilon": eps, "epsilon_kind": "formal" if eps == 0 else "none",
                    "epsilon_data_independent": eps, "delta": 0.0, "accountant": "none", "wer": wer})
  return records


def run_scenario(config, workdir: str, splits: data_lib.Splits, public: data_lib.Splits, tokenizer, scenario: str,
                 rand: DpRandomness, model, public_params, public_out: dict) -> tuple[list[dict], dict]:
  pcfg = config.pate
  streams = rng_lib.Streams(config.seed)
  os.makedirs(workdir, exist_ok=True)
  ctx = _Context(config, workdir, scenario, splits, tokenizer, rand, streams, model)
  roles = partition.split_roles(splits.train, scenario=scenario, public_fraction=pcfg.public_fraction,
                                seed=config.seed, public_accents=tuple(pcfg.public_accents))
  parts = partition.speaker_partition(roles.sensitive, pcfg.num_teachers, seed=config.seed)
  # The query set is fixed before any teacher votes: a data-independent order of the public
  # unlabeled utterances; the rest is the students' self-training pool.
  order = streams.numpy("pate/query_order").permutation(len(roles.public))
  num_queries = max(pcfg.query_utterances)
  if num_queries >= len(roles.public):
    raise ValueError(f"config.pate.query_utterances asks for {num_queries} public utterances, the {scenario} "
                     f"scenario has {len(roles.public)} (some must remain for self-training)")
  queries, rest = roles.public.subset(order[:num_queries]), roles.public.subset(order[num_queries:])
  print(f"[{scenario}] sensitive: {len(roles.sensitive)} utterances of {len(roles.sensitive_speakers)} speakers "
        f"-> {pcfg.num_teachers} teachers; public unlabeled: {len(roles.public)} utterances of "
        f"{len(roles.public_speakers)} speakers ({num_queries} queried); test: {len(splits.test)}")
  nonprivate = nonprivate_stage(ctx, roles, public_params)
  teachers = teacher_stage(ctx, roles, parts, public_params)
  plan = query_plan(pcfg)
  all_labels = label_stage(ctx, teachers, queries, plan)
  points = privacy_stage(ctx, all_labels, queries, plan)
  students = student_stage(ctx, points, all_labels, queries, rest, public_params,
                           public.train if config.students.get("mix_public_labeled", False) else None)
  dpsgd = {unit: dpsgd_stage(ctx, roles, public_params, unit) for unit in config.dpsgd.units}
  return _records(ctx, points, students, dpsgd, nonprivate, public_out), nonprivate


def _fmt_eps(x):
  return "inf" if x is None or (isinstance(x, float) and math.isinf(x)) else f"{x:.2f}"


def table(records: list[dict]) -> str:
  """Published figures only: epsilon (and its kind), the data-independent bound, WER."""
  rows = ["method                       scenario    unit       target  epsilon  kind                      "
          "eps (data-indep.)  delta    WER     vs DP-SGD (speaker)"]
  base = {(r["scenario"], r["target_epsilon"]): r["wer"] for r in records if r["method"] == "dpsgd_speaker"}
  for r in records:
    b = base.get((r["scenario"], r["target_epsilon"]))
    rel = ("" if b is None or not r["method"].startswith("pate_") or b == 0 else
           f"{100 * (b - r['wer']) / b:+.1f}%")
    over = " (over target)" if r.get("within_target") is False else ""
    rows.append(f"{METHOD_LABELS.get(r['method'], r['method']):28s} {r['scenario']:10s}  {r['unit']:9s}  "
                f"{_fmt_eps(r['target_epsilon']):>6s}  {_fmt_eps(r['epsilon']):>7s}  "
                f"{r['epsilon_kind'] + over:24s}  {_fmt_eps(r['epsilon_data_independent']):>17s}  "
                f"{r['delta']:.0e}  {100 * r['wer']:6.2f}%  {rel:>8s}")
  return "\n".join(rows)


def plot(records: list[dict], path: str) -> None:
  scenarios = sorted({r["scenario"] for r in records})
  fig, axes = plt.subplots(1, len(scenarios), figsize=(7 * len(scenarios), 4.8), squeeze=False)
  for ax, scenario in zip(axes[0], scenarios):
    rs = [r for r in records if r["scenario"] == scenario]
    for method in ("dpsgd_speaker", "dpsgd_utterance", "pate_lnmax", "pate_gnmax", "pate_confident_gnmax",
                   "pate_noisy_average"):
      pts = sorted((r["epsilon"], r["wer"]) for r in rs if r["method"] == method and math.isfinite(r["epsilon"]))
      if pts:
        ax.plot([x for x, _ in pts], [100 * w for _, w in pts], "o-" if method.startswith("pate") else "s--",
                label=METHOD_LABELS[method])
    for method, style in (("public_only", ":"), ("nonprivate", "--")):
      wer = [r["wer"] for r in rs if r["method"] == method]
      if wer:
        ax.axhline(100 * wer[0], color="k", ls=style, label=METHOD_LABELS[method])
    ax.set_xscale("log")
    ax.set(xlabel="published epsilon (delta fixed; PATE: speaker level)", ylabel="test WER (%)",
           title=f"{scenario} scenario")
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
  tokenizer = data_lib.make_tokenizer(config)
  splits = data_lib.load_splits(config, tokenizer)
  public = data_lib.load_public(config, tokenizer)
  model = asr_lib.build_model(config.model, tokenizer.vocab_size)
  ctx = _Context(config, workdir, "public", splits, tokenizer, rand, rng_lib.Streams(config.seed), model)
  records, nonprivate = [], {}
  try:
    public_params, public_out = public_stage(ctx, public)
    for scenario in config.pate.scenarios:
      scenario_records, nonprivate[scenario] = run_scenario(
          config, os.path.join(workdir, scenario), splits, public, tokenizer, scenario, rand, model, public_params,
          public_out)
      records += scenario_records
  except Preempted as e:
    print(f"stopped by a signal during stage {e}; rerun the same command to resume")
    return None
  plot(records, os.path.join(workdir, "figures", "wer_vs_epsilon.png"))
  results = {"public_only_wer": public_out["test_wer"],
             "nonprivate_wer": nonprivate[config.pate.scenarios[0]]["test_wer"],
             "records": records, "config": config.to_dict(), "wall_seconds_this_run": time.perf_counter() - start}
  io_lib.write_results(workdir, results, sort_keys=True)
  print("\n" + table(records))
  print("\nepsilon: the published guarantee at delta for the unit shown. kind 'formal': a worst-case bound "
        "(RDP accountant); 'data_dependent_released': the data-dependent epsilon released with smooth "
        "sensitivity (its release cost included). Private diagnostics (teacher WERs, vote agreement) are under "
        "<workdir>/<scenario>/private/ and are not differentially private: do not publish them.")
  print(f"results: {os.path.join(workdir, 'results.json')}\nfigure: {os.path.join(workdir, 'figures', 'wer_vs_epsilon.png')}")
  return results
