"""End-to-end ASR training and evaluation shared by every model this project trains
(non-private baseline, PATE teachers and student, DP-SGD).

Example:
  >>> model = build_model(config.model, tokenizer.vocab_size)
  >>> result = train(config, workdir, model, train_split, dev_split)
  >>> evaluate(model, result.state.params, test_split, tokenizer, batch_size=64, mesh=mesh)
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from libs.data import pipeline
from libs.models import ctc as ctc_lib
from libs.models import encoders
from libs.models import transducer as transducer_lib
from libs.speech import features as features_lib
from libs.speech import losses
from libs.speech import wer as wer_lib
from libs.speech.tokenizer import CharTokenizer
from libs.train import checkpoint as ckpt_lib
from libs.train import mesh as mesh_lib
from libs.train import metrics as metrics_lib
from libs.train import steps as steps_lib
from libs.train.state import TrainState

MODEL_NAMES = ("transducer", "ctc")


def encoder_config(model_cfg: ml_collections.ConfigDict) -> encoders.EncoderConfig:
  return encoders.EncoderConfig(
      kind=model_cfg.encoder, subsampling_channels=model_cfg.subsampling_channels, dim=model_cfg.dim,
      num_layers=model_cfg.num_layers, bidirectional=model_cfg.bidirectional,
      num_heads=model_cfg.num_heads, conv_kernel=model_cfg.conv_kernel, dropout=model_cfg.dropout)


def build_model(model_cfg: ml_collections.ConfigDict, vocab_size: int):
  """The flax module named by `model_cfg.name` (dispatch by an explicit dict)."""
  builders = {
      "transducer": lambda: transducer_lib.Transducer(transducer_lib.TransducerConfig(
          vocab_size=vocab_size, encoder=encoder_config(model_cfg), embed_dim=model_cfg.embed_dim,
          predictor_dim=model_cfg.predictor_dim, joint_dim=model_cfg.joint_dim)),
      "ctc": lambda: ctc_lib.CTCModel(ctc_lib.CTCConfig(vocab_size=vocab_size,
                                                        encoder=encoder_config(model_cfg))),
  }
  if model_cfg.name not in builders:
    raise ValueError(f"config.model.name must be one of {sorted(builders)}, got {model_cfg.name!r}")
  return builders[model_cfg.name]()


def init_fn(model, num_mels: int = 80):
  """`key -> params` for `model`, pure, to be jitted (and vmapped for an ensemble).

  Calling `model.init` eagerly dispatches and compiles every primitive on its own (hundreds
  of compilations, ~14 s for a vmapped transducer on 2 CPU cores); under `jax.jit` it is one.
  """
  feats = jnp.zeros((1, 64, num_mels))
  lens = jnp.array([64])
  labels = jnp.zeros((1, 4), jnp.int32)

  def init(key):
    if isinstance(model, transducer_lib.Transducer):
      return model.init({"params": key}, feats, lens, labels, jnp.array([4]))["params"]
    return model.init({"params": key}, feats, lens)["params"]

  return init


def init_params(model, key: jax.Array, num_mels: int = 80):
  return jax.jit(init_fn(model, num_mels))(key)


def per_example_nll(model, params, batch: dict, key: jax.Array | None, *, train: bool,
                    spec_augment: features_lib.SpecAugmentConfig | None = None) -> jax.Array:
  """Negative log-likelihood of each utterance of the batch, [B], in nats."""
  feats = batch["features"]
  rngs = {}
  if key is not None:
    aug_key, drop_key = jax.random.split(key)
    rngs = {"dropout": drop_key}
    if spec_augment is not None:
      feats = features_lib.spec_augment(aug_key, feats, batch["feature_lengths"], spec_augment)
  variables = {"params": params}
  if isinstance(model, transducer_lib.Transducer):
    logits, enc_lens = model.apply(variables, feats, batch["feature_lengths"], batch["labels"],
                                   batch["label_lengths"], train=train, rngs=rngs)
    return losses.rnnt_loss(logits, enc_lens, batch["labels"], batch["label_lengths"])
  logits, enc_lens = model.apply(variables, feats, batch["feature_lengths"], train=train, rngs=rngs)
  return losses.ctc_loss(logits, enc_lens, batch["labels"], batch["label_lengths"])


def make_loss_fn(model, spec_augment: features_lib.SpecAugmentConfig | None):
  """Mean NLL over the real (weight 1) utterances of a batch."""

  def loss_fn(params, batch, key):
    nll = per_example_nll(model, params, batch, key, train=True, spec_augment=spec_augment)
    weights = batch["weights"]
    loss = jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    return loss, {"nll_per_token": jnp.sum(nll * weights) / jnp.maximum(
        jnp.sum(batch["label_lengths"] * weights), 1.0)}

  return loss_fn


def make_decode_fn(model):
  """Jitted greedy decoding: (params, features, lengths) -> (ids [B, L], counts [B])."""
  if isinstance(model, transducer_lib.Transducer):
    def decode(params, feats, lens):
      return model.apply({"params": params}, feats, lens, method=transducer_lib.Transducer.greedy_decode)
  else:
    def decode(params, feats, lens):
      logits, enc_lens = model.apply({"params": params}, feats, lens)
      return ctc_lib.greedy_decode(logits, enc_lens, model.config.blank_id)
  return jax.jit(decode)


@dataclasses.dataclass
class EvalResult:
  wer: float
  hypotheses: list[str]
  errors: list[wer_lib.EditCounts]

  def group_wer(self, groups: np.ndarray) -> dict[str, float]:
    """Pooled WER of each group (e.g. accent) of utterances."""
    return {str(g): wer_lib.pooled_wer([e for e, gi in zip(self.errors, groups) if gi == g])
            for g in sorted(set(groups.tolist()))}


def transcribe(decode_fn, params, split: pipeline.SpeechSplit, tokenizer: CharTokenizer, *,
               batch_size: int, mesh=None, buckets=None) -> list[str]:
  hyps: list[str | None] = [None] * len(split)
  for batch in pipeline.eval_batches(split, batch_size, buckets):
    feats, lens = batch["features"], batch["feature_lengths"]
    if mesh is not None:
      feats, lens = mesh_lib.shard_batch((feats, lens), mesh)
    ids, counts = jax.device_get(decode_fn(params, feats, lens))
    for row, i in enumerate(batch["index"]):
      if i >= 0:
        hyps[i] = tokenizer.decode(ids[row, : counts[row]]).strip()
  return hyps  # type: ignore[return-value]


def evaluate(decode_fn, params, split, tokenizer, *, batch_size, mesh=None, buckets=None) -> EvalResult:
  hyps = transcribe(decode_fn, params, split, tokenizer, batch_size=batch_size, mesh=mesh, buckets=buckets)
  refs = split.transcripts
  return EvalResult(wer_lib.word_error_rate(refs, hyps), hyps, wer_lib.utterance_errors(refs, hyps))


def make_optimizer(train_cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  warmup = max(min(train_cfg.warmup_steps, train_cfg.num_steps - 1), 1)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, train_cfg.learning_rate, warmup, max(train_cfg.num_steps, warmup + 1),
      end_value=train_cfg.learning_rate * train_cfg.final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip_norm),
                     optax.adamw(schedule, weight_decay=train_cfg.weight_decay))


def spec_augment_config(train_cfg) -> features_lib.SpecAugmentConfig | None:
  if not train_cfg.spec_augment:
    return None
  return features_lib.SpecAugmentConfig(
      num_freq_masks=train_cfg.freq_masks, max_freq_width=train_cfg.freq_mask_width,
      num_time_masks=train_cfg.time_masks, max_time_width=train_cfg.time_mask_width)


@dataclasses.dataclass
class TrainResult:
  state: TrainState
  train_seconds: float
  steps: int
  preempted: bool
  dev: EvalResult | None


def train(config: ml_collections.ConfigDict, workdir: str, model, train_split: pipeline.SpeechSplit,
          dev_split: pipeline.SpeechSplit | None, tokenizer: CharTokenizer, *,
          optimizer: optax.GradientTransformation | None = None,
          loss_fn: Callable | None = None, desc: str = "train") -> TrainResult:
  """Trains `model` on `train_split`, resuming from `workdir/checkpoints` when present.

  Writes metrics (TensorBoard + metrics.jsonl) to `workdir`, shows a progress bar,
  evaluates dev WER every `config.train.eval_every` steps, checkpoints every
  `config.train.checkpoint_every` steps and on SIGTERM/SIGINT (then returns with
  `preempted=True`).
  """
  tcfg = config.train
  mesh = mesh_lib.make_mesh(jax.devices()[: config.get("num_devices") or None])
  mesh_lib.check_batch_size(tcfg.batch_size, mesh, "config.train.batch_size")
  root = jax.random.key(config.seed)
  init_key, train_key = jax.random.split(root)
  optimizer = optimizer or make_optimizer(tcfg)
  loss_fn = loss_fn or make_loss_fn(model, spec_augment_config(tcfg))
  params = init_params(model, init_key, train_split.features[0].shape[1])
  state = jax.jit(lambda p: TrainState.create(p, optimizer))(params)
  state = mesh_lib.replicate(state, mesh)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=tcfg.checkpoint_every)
  state = ckpt.restore_or(state)
  start = int(jax.device_get(state.step))
  batcher = pipeline.Batcher(train_split, tcfg.batch_size, seed=config.seed, num_buckets=tcfg.num_buckets)
  step_fn = steps_lib.jit_data_parallel(steps_lib.make_train_step(loss_fn, optimizer), mesh)
  decode_fn = make_decode_fn(model)
  writer = metrics_lib.create_writer(workdir)
  if start == 0:
    writer.write_hparams(dict(_flatten(config.to_dict())))
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  dev = None
  # Training time carries over a resume: continue from the last value logged before `start`.
  elapsed = max([r["train/elapsed_seconds"] for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
                 if "train/elapsed_seconds" in r and r["step"] <= start] or [0.0])
  preempted = False
  with ckpt_lib.PreemptionGuard() as guard, tqdm.tqdm(
      total=tcfg.num_steps, initial=start, desc=desc, unit="step", dynamic_ncols=True,
      disable=not config.get("progress", True)) as bar:
    t_last, utts = time.perf_counter(), 0
    for step in range(start, tcfg.num_steps):
      batch = batcher.batch(step)
      state, m = step_fn(state, mesh_lib.shard_batch(batch, mesh), train_key)
      utts += int(batch["weights"].sum())
      bar.update(1)
      done = step + 1
      if done % tcfg.log_every == 0 or done == tcfg.num_steps:
        m = jax.device_get(m)
        now = time.perf_counter()
        elapsed += now - t_last
        scalars = {f"train/{k}": float(v) for k, v in m.items()}
        scalars["train/utterances_per_s"] = utts / max(now - t_last, 1e-9)
        scalars["train/elapsed_seconds"] = elapsed
        writer.write_scalars(done, scalars)
        bar.set_postfix(loss=f"{scalars['train/loss']:.3f}", utt_s=f"{scalars['train/utterances_per_s']:.0f}")
        t_last, utts = time.perf_counter(), 0
      if dev_split is not None and (done % tcfg.eval_every == 0 or done == tcfg.num_steps):
        dev = evaluate(decode_fn, state.params, dev_split, tokenizer,
                       batch_size=config.eval.batch_size, mesh=mesh, buckets=batcher.buckets)
        writer.write_scalars(done, {"dev/wer": dev.wer})
        bar.write(f"[{desc}] step {done}: dev WER {100 * dev.wer:.2f}%")
        t_last = time.perf_counter()  # Evaluation time is not training throughput.
      stop = guard.stop_requested  # Read once: a signal may land while saving.
      ckpt.maybe_save(state, force=stop or done == tcfg.num_steps)
      if stop:
        bar.write(f"[{desc}] received {guard.received}: checkpointed step {done}, stopping")
        preempted = True
        break
  ckpt.close()
  writer.write_scalars(int(jax.device_get(state.step)), {"model/num_params": num_params})
  writer.flush()
  return TrainResult(state, elapsed, int(jax.device_get(state.step)), preempted, dev)


def _flatten(d: dict, prefix: str = ""):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _flatten(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v
