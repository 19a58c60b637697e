"""Model inversion against the PATE-ASR sweep's models: what does a transcript plus the model
reveal about the training speaker's voice?

`python -m projects.pate_asr.main --config=projects/pate_asr/configs/inversion.py --workdir=DIR`

The attacker holds a trained transducer and the transcript (and the duration) of a training
utterance, and reconstructs its log-mel features (`libs.audit.inversion`): Adam ascent on
log p(transcript | x) minus a total-variation prior, from a data-independent start, the public
corpus mean (every public labeled utterance resampled to the target's frame count, then
averaged: a function of public data and the duration only). The model reads per-utterance
normalized features, so the attack optimizes x and feeds the model z = normalize(x), with the
prior on z (`inversion_lib.make_inverter`'s transform); the reconstruction reported is z, in
the same space as the original.

Models (from the sweep's workdir, `config.inversion.sweep_workdir`; the sweep saves their
parameters, and when they are missing this runs the sweep there first, which skips its
finished stages): the public model (never saw the sensitive speakers: the reference row),
the non-private model, speaker-level DP-SGD at each target epsilon, and at each target the
PATE student with the lowest test WER. Every row states the sweep's unit (speaker), epsilon,
its kind, delta and accountant.

Targets: `config.inversion.utterances` sensitive (training) speakers, one utterance each,
with `enrollment_utterances` other utterances of each speaker enrolled as its voice.

Metrics over the targets:
* mel-cepstral distortion (MCD, dB, c1..c_D of the orthonormal DCT of each frame, frames
  paired by index) of the reconstruction to the original; on normalized log-mels, so it is
  comparable across rows here, not with TTS figures computed on raw log spectra;
* speaker identification: a speaker-embedding model (`libs.models.speaker`, x-vector-like,
  pairwise loss, as the fairness project trains it) trained on PUBLIC speakers only (the
  public unlabeled in-domain speakers and the public labeled corpus), embeds each
  reconstruction; cosine similarity to the true speaker's enrolled embedding vs the other
  target speakers', top-1 rate among the targets' speakers and the rank score (0.5 chance).
Reference rows (no model): the original utterances (what the speaker model achieves on real
audio: the ceiling) and the start (chance by construction).

What is private: the reconstructions and the originals (`<workdir>/inversion/*/private/`,
functions of sensitive data); `figures/inversion.png` shows one sensitive utterance and its
reconstructions, which is what the study is about (a synthetic corpus here): do not publish
such a figure for real users' data.

Example:
  >>> results = run(inversion_config.get_config("default"), "workdirs/pate_inversion")
  >>> [(r["model"], r["epsilon"], r["mel_distortion"], r["speaker_similarity"]) for r in results["inversion"]]
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np

from libs.audit import inversion as inversion_lib
from libs.config.checks import number, positive_int, require
from libs.data import pipeline
from libs.models import asr as asr_lib
from libs.models import speaker as speaker_lib
from libs.speech import evaluate as evaluate_lib
from libs.speech import features as features_lib
from libs.speech import wer as wer_lib
from libs.train import checkpoint as ckpt_lib
from libs.train import io as io_lib
from libs.train import loop as loop_lib
from libs.train import metrics as metrics_lib
from libs.train import optimizers
from libs.train import rng as rng_lib
from libs.train.state import TrainState
from projects.pate_asr import data as data_lib
from projects.pate_asr import partition
from projects.pate_asr import sweep
from projects.pate_asr.configs import sweep as sweep_configs

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position

STARTS = ("public_mean", "constant")
LABELS = {"public_only": "public only", "nonprivate": "non-private", **sweep.METHOD_LABELS}


class Preempted(Exception):
  """A stage was stopped by a signal after checkpointing."""


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid field of an inversion config."""
  require(config.mode == "inversion", "mode", "must be 'inversion'", config.mode)
  v = config.inversion
  require(isinstance(v.sweep_workdir, str) and bool(v.sweep_workdir), "inversion.sweep_workdir",
          "must name the sweep's workdir", v.sweep_workdir)
  require(v.sweep_variant in sweep_configs.VARIANTS, "inversion.sweep_variant",
          f"must be one of {sweep_configs.VARIANTS}", v.sweep_variant)
  require(v.scenario in partition.SCENARIOS, "inversion.scenario", f"must be one of {partition.SCENARIOS}",
          v.scenario)
  positive_int(config, "inversion.utterances", 2)
  positive_int(config, "inversion.enrollment_utterances")
  positive_int(config, "inversion.steps")
  number(config, "inversion.learning_rate", 0.0, math.inf, low_open=True, high_open=True)
  for field in ("tv_weight", "l2_weight", "tv_eps"):
    number(config, f"inversion.{field}", 0.0, math.inf, high_open=True)
  require(v.start in STARTS, "inversion.start", f"must be one of {STARTS}", v.start)
  positive_int(config, "inversion.mcd_coefficients")
  require(len(v.target_epsilons) >= 1 and all(t > 0 for t in v.target_epsilons), "inversion.target_epsilons",
          "must be positive numbers (targets of the sweep)", tuple(v.target_epsilons))
  for field in ("channels", "embed_dim", "speakers_per_batch", "crop_frames", "num_steps", "warmup_steps",
                "log_every", "checkpoint_every"):
    positive_int(config, f"speaker.{field}")
  positive_int(config, "speaker.utterances_per_speaker", 2)
  number(config, "speaker.learning_rate", 0.0, math.inf, low_open=True, high_open=True)
  number(config, "speaker.weight_decay", 0.0, math.inf, high_open=True)


# -- the sweep's models --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
  """One attacked model: its parameters' stage (and member of a stacked stage) and its record."""
  name: str  # e.g. "dpsgd_speaker_eps10"
  stage: str  # Relative to the sweep workdir.
  member: int | None
  record: dict


def _required_stages(scenario: str) -> list[str]:
  return ["public", os.path.join(scenario, "nonprivate"), os.path.join(scenario, "dpsgd_speaker"),
          os.path.join(scenario, "students")]


def sweep_outputs(config: ml_collections.ConfigDict) -> dict:
  """The sweep's results.json, running the sweep first when it or a needed params file is missing."""
  v = config.inversion
  path = os.path.join(v.sweep_workdir, io_lib.RESULTS_FILE)
  missing = [s for s in _required_stages(v.scenario) if not os.path.exists(sweep.params_path(
      os.path.join(v.sweep_workdir, s)))]
  if not os.path.exists(path) or missing:
    print(f"inversion: the sweep at {v.sweep_workdir} lacks {'results.json' if not missing else missing}; "
          f"running it (config sweep.py:{v.sweep_variant}; finished stages are skipped)")
    scfg = sweep_configs.get_config(v.sweep_variant)
    scfg.seed, scfg.progress = config.seed, config.progress
    scfg.insecure_reproducible_noise = config.insecure_reproducible_noise
    if sweep.run(scfg, v.sweep_workdir) is None:
      raise Preempted("sweep")
  return io_lib.read_json(path)


def select_targets(results: dict, sweep_workdir: str, scenario: str, target_epsilons) -> list[Target]:
  """The public and non-private models, DP-SGD (speaker) and the best PATE student per target.

  The best PATE student at a target is the PATE record (any aggregator) with the lowest test
  WER there; its member in the stacked students follows the sweep's bookkeeping
  (`<scenario>/privacy/done.json` names each run's released labels, `students/done.json`
  indexes the students by them). A run that released no labels has the public model as its
  student (as the sweep records).
  """
  records = [r for r in results["records"] if r["scenario"] == scenario]
  sweep_targets = [float(t) for t in results["config"]["pate"]["target_epsilons"]]

  def record(method, target=None):
    found = [r for r in records if r["method"] == method and (target is None or r["target_epsilon"] == target)]
    if not found:
      raise ValueError(f"the sweep at {sweep_workdir} has no {method} record"
                       + ("" if target is None else f" at target epsilon {target:g}"))
    return found[0]

  out = [Target("public_only", "public", None, record("public_only")),
         Target("nonprivate", os.path.join(scenario, "nonprivate"), None, record("nonprivate"))]
  points = io_lib.read_json(os.path.join(sweep_workdir, scenario, "privacy", io_lib.DONE_FILE)) or []
  students = io_lib.read_json(os.path.join(sweep_workdir, scenario, "students", io_lib.DONE_FILE)) or {}
  for t in (float(t) for t in target_epsilons):
    if t not in sweep_targets:
      raise ValueError(f"config.inversion.target_epsilons: {t:g} is not a target of the sweep at {sweep_workdir} "
                       f"({sweep_targets})")
    out.append(Target(f"dpsgd_speaker_eps{t:g}", os.path.join(scenario, "dpsgd_speaker"), sweep_targets.index(t),
                      record("dpsgd_speaker", t)))
    pate = [r for r in records if r["method"].startswith("pate_") and r["method"] != "pate_noiseless"
            and r["target_epsilon"] == t]
    if not pate:
      raise ValueError(f"the sweep at {sweep_workdir} has no PATE record at target epsilon {t:g}")
    best = min(pate, key=lambda r: r["wer"])
    labels = f"{best['method'].removeprefix('pate_')}_{t:g}"
    point = [p for p in points if p["labels"] == labels]
    key = f"{labels}|{','.join(map(str, point[0]['used']))}" if point and point[0]["used"] else None
    member = None if key is None else students.get("index", {}).get(key)
    if member is None:  # Nothing released: the sweep's student is the public model.
      out.append(Target(f"{best['method']}_eps{t:g}", "public", None, best))
    else:
      out.append(Target(f"{best['method']}_eps{t:g}", os.path.join(scenario, "students"), int(member), best))
  return out


def load_target_params(sweep_workdir: str, target: Target):
  params = sweep.load_params(os.path.join(sweep_workdir, target.stage))
  return params if target.member is None else jax.tree.map(lambda p: np.asarray(p)[target.member], params)


# -- data: targets, enrollment, the start ----------------------------------------------------------


@dataclasses.dataclass
class AttackData:
  targets: pipeline.SpeechSplit  # One utterance per chosen sensitive speaker.
  enrollment: pipeline.SpeechSplit  # `enrollment_utterances` other utterances of each, speaker-major.
  speakers: np.ndarray  # [targets] speaker ids, in target order.


def choose_targets(sensitive: pipeline.SpeechSplit, num: int, enrollment: int, seed: int) -> AttackData:
  """`num` sensitive speakers with > `enrollment` utterances (seeded), one target utterance each
  and `enrollment` others as their enrolled voice."""
  ids = np.asarray(sensitive.metadata["speaker_id"])
  rng = rng_lib.Streams(seed).numpy("inversion/targets")
  eligible = [s for s in np.unique(ids) if np.sum(ids == s) > enrollment]
  if len(eligible) < num:
    raise ValueError(f"config.inversion.utterances={num}: only {len(eligible)} sensitive speakers have more than "
                     f"config.inversion.enrollment_utterances={enrollment} utterances")
  speakers = rng.permutation(np.asarray(eligible))[:num]
  target_idx, enroll_idx = [], []
  for s in speakers:
    own = rng.permutation(np.flatnonzero(ids == s))
    target_idx.append(own[0])
    enroll_idx.extend(own[1: 1 + enrollment])
  return AttackData(sensitive.subset(np.asarray(target_idx)), sensitive.subset(np.asarray(enroll_idx)), speakers)


def resample(x: np.ndarray, frames: int) -> np.ndarray:
  """[L, F] -> [frames, F] by linear interpolation along time."""
  pos = np.linspace(0, len(x) - 1, frames)
  return np.stack([np.interp(pos, np.arange(len(x)), x[:, f]) for f in range(x.shape[1])], axis=1)


def public_mean(public: pipeline.SpeechSplit, frames: int = 128) -> np.ndarray:
  """[frames, F] the mean of every public utterance's features resampled to `frames`."""
  return np.mean([resample(f, frames) for f in public.features], axis=0)


def starts(kind: str, template: np.ndarray, lengths: np.ndarray, frames: int) -> np.ndarray:
  """[B, frames, F] data-independent starts (given only each target's duration)."""
  out = np.zeros((len(lengths), frames, template.shape[1]), np.float32)
  for b, n in enumerate(lengths):
    out[b, :n] = resample(template, int(n)) if kind == "public_mean" else 0.0
  return out


def padded(split: pipeline.SpeechSplit) -> dict:
  """Features [B, T, F] (T a multiple of 16), lengths, labels [B, U], label lengths."""
  frames = -(-int(split.feature_lengths.max()) // 16) * 16
  width = int(max(1, split.label_lengths.max()))
  feats = np.zeros((len(split), frames, split.features[0].shape[1]), np.float32)
  labels = np.zeros((len(split), width), np.int32)
  for i, (f, l) in enumerate(zip(split.features, split.labels)):
    feats[i, : len(f)] = f
    labels[i, : len(l)] = l
  return {"features": feats, "feature_lengths": split.feature_lengths, "labels": labels,
          "label_lengths": split.label_lengths.astype(np.int32)}


# -- the speaker model (public speakers only) ------------------------------------------------------


def _speaker_batch(split: pipeline.SpeechSplit, by_speaker: list[np.ndarray], scfg, seed: int, step: int) -> dict:
  """P speakers x M random crops, a function of (seed, step)."""
  rng = np.random.default_rng((seed, step))
  p, m, crop = scfg.speakers_per_batch, scfg.utterances_per_speaker, scfg.crop_frames
  feats = np.zeros((p * m, crop, split.features[0].shape[1]), np.float32)
  lengths = np.zeros((p * m,), np.int32)
  row = 0
  for s in rng.choice(len(by_speaker), p, replace=False):
    for u in rng.choice(by_speaker[s], m, replace=False):
      f = split.features[u]
      start = int(rng.integers(0, max(len(f) - crop, 0) + 1))
      piece = f[start: start + crop]
      feats[row, : len(piece)] = piece
      lengths[row] = len(piece)
      row += 1
  return {"features": feats, "lengths": lengths, "labels": np.repeat(np.arange(p, dtype=np.int32), m)}


def train_speaker_model(config, stage_dir: str, split: pipeline.SpeechSplit):
  """The speaker encoder trained with the pairwise loss on `split`'s speakers; resumable, and
  kept as `stage_dir/params.msgpack` once finished."""
  if os.path.exists(sweep.params_path(stage_dir)):
    return sweep.load_params(stage_dir)
  s = config.speaker
  ids = np.asarray(split.metadata["speaker_id"])
  by_speaker = [np.flatnonzero(ids == k) for k in np.unique(ids)]
  by_speaker = [u for u in by_speaker if len(u) >= s.utterances_per_speaker]
  if len(by_speaker) < s.speakers_per_batch:
    raise ValueError(f"config.speaker.speakers_per_batch={s.speakers_per_batch}: the public speakers with >= "
                     f"{s.utterances_per_speaker} utterances number {len(by_speaker)}")
  streams = rng_lib.Streams(config.seed)
  encoder = speaker_lib.SpeakerEncoder(speaker_lib.SpeakerConfig(channels=s.channels, embed_dim=s.embed_dim))
  num_mels = split.features[0].shape[1]
  dummy = jnp.zeros((2, s.crop_frames, num_mels))
  params = {"encoder": jax.jit(lambda k: encoder.init({"params": k}, dummy, jnp.array([s.crop_frames] * 2),
                                                      train=False)["params"])(streams.key("inversion/speaker_init")),
            "loss": speaker_lib.init_loss_params()}
  optimizer = optimizers.make_optimizer(ml_collections.ConfigDict(dict(
      learning_rate=s.learning_rate, warmup_steps=s.warmup_steps, num_steps=s.num_steps, final_lr_fraction=0.05,
      grad_clip_norm=5.0, weight_decay=s.weight_decay)))

  def loss_fn(params, batch):
    emb = encoder.apply({"params": params["encoder"]}, batch["features"], batch["lengths"], train=False)
    return speaker_lib.pairwise_loss(emb, batch["labels"], *speaker_lib.scale_and_bias(params["loss"]))

  @jax.jit
  def step(state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    return state.apply_gradients(grads, optimizer), loss

  seed = streams.seed("inversion/speaker_batches")

  def loop_step(state, i):
    state, loss = step(state, _speaker_batch(split, by_speaker, s, seed, i))
    done = i + 1
    return state, ({"speaker/loss": float(loss)} if done % s.log_every == 0 or done == s.num_steps else None)

  ckpt = ckpt_lib.Checkpointer(os.path.join(stage_dir, "checkpoints"), save_every=s.checkpoint_every)
  writer = metrics_lib.create_writer(stage_dir)
  try:
    out = loop_lib.train_loop(TrainState.create(params, optimizer), loop_step, num_steps=s.num_steps,
                              checkpointer=ckpt, writer=writer, desc="speaker model (public speakers)",
                              progress=config.progress, postfix=lambda r: {"loss": f"{r['speaker/loss']:.3f}"})
  finally:
    ckpt.close()
    writer.close()
  if out.preempted:
    raise Preempted("speaker")
  sweep.save_params(stage_dir, out.state.params)
  return jax.device_get(out.state.params)


def make_embedder(config):
  """(params, features [B, T, F], lengths [B]) -> unit speaker embeddings [B, E], jitted."""
  s = config.speaker
  encoder = speaker_lib.SpeakerEncoder(speaker_lib.SpeakerConfig(channels=s.channels, embed_dim=s.embed_dim))
  return jax.jit(lambda params, feats, lens: speaker_lib.l2_normalize(
      encoder.apply({"params": params["encoder"]}, feats, lens, train=False)))


def enrolled(embed, params, data: AttackData, batch_size: int) -> np.ndarray:
  """[speakers, E]: each target speaker's mean enrollment embedding, renormalized."""
  emb = embed_split(embed, params, data.enrollment, batch_size)
  ids = np.asarray(data.enrollment.metadata["speaker_id"])
  means = np.stack([emb[ids == s].mean(0) for s in data.speakers])
  return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def embed_split(embed, params, split: pipeline.SpeechSplit, batch_size: int) -> np.ndarray:
  """[utterances, E] unit speaker embeddings of every utterance of `split`, in split order."""
  rows = []
  for batch in pipeline.eval_batches(split, batch_size):
    emb = np.asarray(embed(params, batch["features"], batch["feature_lengths"]))
    keep = batch["index"] >= 0
    rows.append((batch["index"][keep], emb[keep]))
  out = np.zeros((len(split), rows[0][1].shape[1]), np.float32)
  for idx, emb in rows:
    out[idx] = emb
  return out


# -- the attack ----------------------------------------------------------------------------------


def transcript_log_prob(model):
  """log p(transcript | z) of one utterance's features z [T, F] under a transducer."""
  def log_prob(params, z, aux):
    batch = {"features": z[None], "feature_lengths": aux["length"][None], "labels": aux["labels"][None],
             "label_lengths": aux["num_labels"][None]}
    return -evaluate_lib.per_example_nll(model, params, batch, None, train=False)[0]
  return log_prob


def normalize(x, mask):
  """The pipeline's per-utterance, per-bin normalization of one [T, F] input (valid frames `mask`)."""
  return features_lib.normalize_utterance(x[None], jnp.sum(mask)[None])[0]


def inversion_config(v) -> inversion_lib.InversionConfig:
  return inversion_lib.InversionConfig(steps=v.steps, learning_rate=v.learning_rate, tv_weight=v.tv_weight,
                                       l2_weight=v.l2_weight, tv_eps=v.tv_eps)


def identification(embed, speaker_params, feats, lengths, enrolled_emb) -> dict:
  emb = np.asarray(embed(speaker_params, feats, lengths))
  sim = inversion_lib.cosine_similarity(emb, enrolled_emb)
  return inversion_lib.identification_metrics(sim, np.arange(len(enrolled_emb)))


def reconstruction_wer(model, params, feats, lengths, transcripts, tokenizer) -> float:
  """WER of the attacked model's own greedy transcripts of its reconstructions (did the attack
  reach the transcript?)."""
  ids, counts = jax.device_get(evaluate_lib.make_decode_fn(model)(params, feats, lengths))
  hyps = [tokenizer.decode(ids[i, : counts[i]]) for i in range(len(transcripts))]
  return wer_lib.word_error_rate(list(transcripts), hyps)


def _row(target: Target, mcd: np.ndarray, ident: dict, extra: dict) -> dict:
  r = target.record
  non_private = target.name == "nonprivate"
  return {"model": target.name, "method": r["method"], "label": LABELS.get(r["method"], r["method"]),
          "epsilon": None if non_private else r["epsilon"], "target_epsilon": None if non_private else
          r["target_epsilon"], "epsilon_kind": r["epsilon_kind"], "epsilon_data_independent":
          None if non_private else r["epsilon_data_independent"], "unit": r["unit"], "delta": r["delta"],
          "accountant": r["accountant"], "test_wer": r["wer"], "mel_distortion": float(np.mean(mcd)),
          "mel_distortion_std": float(np.std(mcd)), "speaker_similarity": ident["similarity_true"],
          "speaker_similarity_other": ident["similarity_other"], "identification_top1": ident["top1"],
          "identification_rank_score": ident["rank_score"], "identification_mean_rank": ident["mean_rank"],
          "chance_top1": ident["chance_top1"], "utterances": ident["queries"], **extra}


def _fmt_eps(x) -> str:
  if x is None:
    return "-"
  return "inf" if math.isinf(x) else f"{x:.2f}"


def format_table(rows: list[dict], references: list[dict]) -> str:
  head = (f"{'model':34s} {'epsilon':>7s} {'kind':24s} {'delta':>6s}  {'MCD dB':>13s}  {'sim true':>8s} "
          f"{'sim other':>9s} {'top-1':>6s} {'rank':>5s}  {'logp':>7s} {'rec WER':>7s} {'test WER':>8s} "
          f"{'moved dB':>8s}")
  lines = [head]
  for r in rows:
    kind = r["epsilon_kind"] if r["epsilon"] is not None else "none (not private)"
    lines.append(f"{r['label'] + ' ' + (r['model'].split('_eps')[-1] if '_eps' in r['model'] else ''):34s} "
                 f"{_fmt_eps(r['epsilon']):>7s} {kind[:24]:24s} {r['delta']:6.0e}  "
                 f"{r['mel_distortion']:6.2f} +- {r['mel_distortion_std']:4.2f}  {r['speaker_similarity']:8.3f} "
                 f"{r['speaker_similarity_other']:9.3f} {100 * r['identification_top1']:5.1f}% "
                 f"{r['identification_rank_score']:5.3f}  {r['log_prob_final']:7.2f} "
                 f"{100 * r['reconstruction_wer']:6.1f}% {100 * r['test_wer']:7.2f}% "
                 f"{r['mel_distortion_to_start']:8.2f}")
  for r in references:
    lines.append(f"{'[reference] ' + r['model']:34s} {'':>7s} {'':24s} {'':6s}  "
                 f"{r['mel_distortion']:6.2f} +- {r['mel_distortion_std']:4.2f}  {r['speaker_similarity']:8.3f} "
                 f"{r['speaker_similarity_other']:9.3f} {100 * r['identification_top1']:5.1f}% "
                 f"{r['identification_rank_score']:5.3f}")
  return "\n".join(lines)


def plot(original: np.ndarray, panels: list[tuple[str, np.ndarray]], transcript: str, path: str) -> str:
  """The original utterance's log-mel and each reconstruction (time on x, mel bin on y)."""
  items = [("original (training speaker)", original)] + panels
  cols = 4
  rows = -(-len(items) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
  for ax, (title, x) in zip(axes.ravel(), items):
    ax.imshow(x.T, origin="lower", aspect="auto", cmap="magma", vmin=-3, vmax=3)
    ax.set_title(title, fontsize=8)
    ax.set(xlabel="frame", ylabel="mel bin")
  for ax in axes.ravel()[len(items):]:
    ax.axis("off")
  fig.suptitle(f"model inversion from the transcript {transcript!r} (normalized log-mel)", fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def run(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """Loads (or makes) the sweep's models, trains the public speaker model, inverts every model
  on the targets, writes results.json and figures/inversion.png, prints the table."""
  validate(config)
  start = time.perf_counter()
  v = config.inversion
  try:
    results = sweep_outputs(config)
  except (Preempted, sweep.Preempted):
    print("stopped by a signal during the sweep; rerun the same command to resume")
    return None
  sweep_seconds = time.perf_counter() - start  # Not part of this config's budget.
  scfg = ml_collections.ConfigDict(results["config"])
  targets = select_targets(results, v.sweep_workdir, v.scenario, v.target_epsilons)
  tokenizer = data_lib.make_tokenizer(scfg)
  splits = data_lib.load_splits(scfg, tokenizer)
  public = data_lib.load_public(scfg, tokenizer)
  roles = partition.split_roles(splits.train, scenario=v.scenario, public_fraction=scfg.pate.public_fraction,
                                seed=scfg.seed, public_accents=tuple(scfg.pate.public_accents))
  model = asr_lib.build_model(scfg.model, tokenizer.vocab_size)
  data = choose_targets(roles.sensitive, v.utterances, v.enrollment_utterances, config.seed)
  print(f"inversion: {len(data.targets)} utterances of {len(data.speakers)} sensitive speakers; speaker model "
        f"on {len(np.unique(roles.public.metadata['speaker_id']))} public in-domain + "
        f"{len(np.unique(public.train.metadata['speaker_id']))} public-corpus speakers")
  speaker_split = sweep._concat(roles.public, public.train)  # pylint: disable=protected-access
  try:
    speaker_params = train_speaker_model(config, os.path.join(workdir, "speaker"), speaker_split)
  except Preempted:
    print("stopped by a signal during the speaker model; rerun the same command to resume")
    return None
  embed = make_embedder(config)
  enroll = enrolled(embed, speaker_params, data, config.eval_batch_size)

  batch = padded(data.targets)
  lengths = batch["feature_lengths"]
  originals = np.asarray(batch["features"])
  frames = originals.shape[1]
  x0 = starts(v.start, public_mean(public.train), lengths, frames)
  mask = np.arange(frames)[None] < lengths[:, None]
  norm = jax.jit(features_lib.normalize_utterance)
  x0_norm = np.asarray(norm(x0, lengths))
  mcd = lambda x: inversion_lib.mel_cepstral_distortion(x, originals, lengths, num_coefficients=v.mcd_coefficients)
  references = []
  for name, feats in (("original utterance", originals), ("start (public mean)", x0_norm)):
    ident = identification(embed, speaker_params, feats, lengths, enroll)
    m = mcd(feats)
    references.append({"model": name, "mel_distortion": float(np.mean(m)), "mel_distortion_std": float(np.std(m)),
                       "speaker_similarity": ident["similarity_true"],
                       "speaker_similarity_other": ident["similarity_other"], "identification_top1": ident["top1"],
                       "identification_rank_score": ident["rank_score"], "identification_mean_rank":
                       ident["mean_rank"], "chance_top1": ident["chance_top1"]})

  invert = inversion_lib.make_inverter(transcript_log_prob(model), inversion_config(v), normalize)
  aux = {"labels": batch["labels"], "num_labels": batch["label_lengths"], "length": lengths.astype(np.int32)}
  rows, panels = [], []
  for target in targets:
    stage = os.path.join(workdir, "inversion", target.name)
    recon_path = os.path.join(stage, "private", "reconstructions.npy")

    def attack(target=target, recon_path=recon_path):
      params = load_target_params(v.sweep_workdir, target)
      t0 = time.perf_counter()
      result = invert(params, x0, mask, aux)
      x = np.asarray(result.x)
      seconds = time.perf_counter() - t0
      bad = ~np.isfinite(np.asarray(result.objective)).all(axis=1)
      if bad.any() or not np.isfinite(x).all():
        step = int(np.argmax(bad)) if bad.any() else v.steps
        raise FloatingPointError(f"inversion of {target.name}: the objective (log p - priors) or the reconstruction "
                                 f"is not finite from step {step} on")
      os.makedirs(os.path.dirname(recon_path), exist_ok=True)
      np.save(recon_path, x)
      ident = identification(embed, speaker_params, x, lengths, enroll)
      log_prob = np.asarray(result.log_prob)
      per_word = lambda lp: float(np.mean(lp / np.maximum(batch["label_lengths"], 1)))
      return _row(target, mcd(x), ident, {
          "log_prob_start": per_word(log_prob[0]), "log_prob_final": per_word(log_prob[-1]),
          "reconstruction_wer": reconstruction_wer(model, params, x, lengths, data.targets.transcripts, tokenizer),
          "seconds": seconds})

    row = io_lib.run_stage(stage, attack)
    recon = np.load(recon_path)
    # How far the attack moved from its start (the same MCD): ~0 means the prior and the start,
    # not the model, shaped the reconstruction.
    row = {**row, "mel_distortion_to_start": float(np.mean(inversion_lib.mel_cepstral_distortion(
        recon, x0_norm, lengths, num_coefficients=v.mcd_coefficients)))}
    rows.append(row)
    print(f"inversion/{target.name}: MCD {row['mel_distortion']:.2f} dB, similarity to the true speaker "
          f"{row['speaker_similarity']:.3f} (others {row['speaker_similarity_other']:.3f}), top-1 "
          f"{100 * row['identification_top1']:.0f}%, {row['seconds']:.0f} s")
    panels.append((f"{row['label']}" + ("" if row["epsilon"] is None else f", eps {row['epsilon']:.2g}")
                   + f" (MCD {mcd(recon)[0]:.1f} dB)", recon[0]))
  figure = plot(originals[0, : lengths[0]], [("start (public mean)", x0_norm[0, : lengths[0]])]
                + [(t, x[: lengths[0]]) for t, x in panels], data.targets.transcripts[0],
                os.path.join(workdir, "figures", "inversion.png"))
  out = {"inversion": rows, "references": references, "unit": "speaker",
         "sweep_workdir": v.sweep_workdir, "utterances": len(data.targets), "speakers": len(data.speakers),
         "speaker_model_speakers": int(len(np.unique(speaker_split.metadata["speaker_id"]))),
         "config": config.to_dict(), "wall_seconds_this_run": time.perf_counter() - start,
         "wall_seconds_sweep": sweep_seconds}
  io_lib.write_results(workdir, out, sort_keys=True)
  print(format_table(rows, references))
  print("epsilon: the sweep's published guarantee for the unit shown (speaker) at delta; kind as the sweep "
        "records it. MCD: dB over c1..c{} of normalized log-mels (lower: closer to the original). sim: cosine "
        "similarity of the reconstruction's speaker embedding (model trained on public speakers only) to its true "
        "speaker's enrolled voice vs the other {} target speakers'; top-1 and rank score (0.5 = chance) among "
        "them. logp: per word at the end; rec WER: the model's WER on its reconstructions; moved: MCD of the "
        "reconstruction to its start.".format(v.mcd_coefficients, len(data.speakers) - 1))
  print(f"wall time: {out['wall_seconds_this_run'] - sweep_seconds:.0f} s for the attack, {sweep_seconds:.0f} s "
        f"reading or running the sweep")
  print(f"results: {os.path.join(workdir, 'results.json')}\nfigure: {figure}")
  return out
