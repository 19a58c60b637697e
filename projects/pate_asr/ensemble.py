"""Training and evaluating M models at once: parameters stacked on a leading axis and one
jitted, vmapped step (not a Python loop of M trainings). Used for the PATE teachers (one
speaker-disjoint data part each) and for the students (one labeled public set each).

Each member has its own data, batch order and PRNG stream; at every step the members'
batches are padded to a common shape. With several devices, members are sharded over
the mesh's data axis when their number divides the device count.

Example:
  >>> result = train_ensemble(config.teachers, workdir + "/teachers", model, parts, seed=0)
  >>> per_member = evaluate_ensemble(model, result.params, dev_split, tokenizer, batch_size=64)
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from libs.data import pipeline
from libs.models import asr as asr_lib
from libs.speech import evaluate as evaluate_lib
from libs.speech import wer as wer_lib
from libs.speech.tokenizer import Tokenizer
from libs.train import checkpoint as ckpt_lib
from libs.train import loop as loop_lib
from libs.train import mesh as mesh_lib
from libs.train import metrics as metrics_lib
from libs.train import optimizers
from libs.train import rng as rng_lib
from libs.train import steps as steps_lib
from libs.train.state import TrainState


@dataclasses.dataclass
class EnsembleResult:
  params: object  # Stacked parameters, leading axis = member.
  steps: int
  train_seconds: float
  preempted: bool


def init_stacked(model, key: jax.Array, num_members: int, num_mels: int = 80):
  return jax.jit(jax.vmap(asr_lib.init_fn(model, num_mels)))(jax.random.split(key, num_members))


def _pad(batch: dict, frames: int, labels: int) -> dict:
  out = dict(batch)
  f = batch["features"]
  if f.shape[1] < frames:
    out["features"] = np.pad(f, ((0, 0), (0, frames - f.shape[1]), (0, 0)))
  l = batch["labels"]
  if l.shape[1] < labels:
    out["labels"] = np.pad(l, ((0, 0), (0, labels - l.shape[1])))
  return out


def stack_batches(batches: Sequence[dict]) -> dict:
  """Pads member batches to a common shape and stacks them: [M, B, ...]."""
  frames = max(b["features"].shape[1] for b in batches)
  labels = max(b["labels"].shape[1] for b in batches)
  padded = [_pad(b, frames, labels) for b in batches]
  return {k: np.stack([b[k] for b in padded]) for k in padded[0]}


def _at_least(split: pipeline.SpeechSplit, size: int) -> pipeline.SpeechSplit:
  """Repeats a small split's utterances so that it fills one batch."""
  if len(split) >= size:
    return split
  return split.subset(np.resize(np.arange(len(split)), size))


def _member_sharding(mesh, num_members):
  if mesh.size > 1 and num_members % mesh.size == 0:
    return mesh_lib.data_sharding(mesh)
  return mesh_lib.replicated(mesh)


def train_ensemble(tcfg: ml_collections.ConfigDict, workdir: str, model,
                   member_splits: Sequence[pipeline.SpeechSplit], *, seed: int, desc: str,
                   progress: bool = True, shared_init: bool = False, init_params=None,
                   init_stacked_params=None) -> EnsembleResult:
  """Trains one model per split, all in one vmapped step; resumes from `workdir`.

  Args:
    tcfg: training section (batch_size, num_steps, learning rate schedule, SpecAugment,
      num_buckets, log_every, checkpoint_every).
    workdir: this ensemble's directory (checkpoints/ with the training seconds so far,
      metrics.jsonl).
    model: the flax module every member instantiates.
    member_splits: the data of each member (none may be empty).
    seed: the root of this ensemble's `libs.train.rng.Streams`: "init", "train" (dropout and
      SpecAugment) and "batch_order/<member>".
    desc: progress-bar label.
    shared_init: start every member from the same parameters (PATE teachers: their
      transducer alignments, hence their per-frame votes, then agree more often).
    init_params: one model's parameters (e.g. the public pretrained model) that every
      member starts from (fine-tuning); None: a fresh initialization ("init" stream).
    init_stacked_params: per-member starting parameters [M, ...] (e.g. students continuing
      with self-training); overrides `init_params`.
  """
  if any(len(s) == 0 for s in member_splits):
    raise ValueError("every ensemble member needs at least one utterance")
  num = len(member_splits)
  os.makedirs(workdir, exist_ok=True)
  mesh = mesh_lib.make_mesh()
  sharding = _member_sharding(mesh, num)
  optimizer = optimizers.make_optimizer(tcfg)
  loss_fn = evaluate_lib.make_loss_fn(model, evaluate_lib.spec_augment_config(tcfg))
  streams = rng_lib.Streams(seed)
  init_key, train_key = streams.key("init"), streams.key("train")
  if init_stacked_params is not None:
    params = init_stacked_params
  elif init_params is not None:
    params = jax.tree.map(lambda p: jnp.repeat(jnp.asarray(p)[None], num, axis=0), init_params)
  else:
    params = init_stacked(model, init_key, 1 if shared_init else num, member_splits[0].features[0].shape[1])
    if shared_init:
      params = jax.tree.map(lambda p: jnp.repeat(p, num, axis=0), params)
  state = jax.jit(jax.vmap(lambda p: TrainState.create(p, optimizer)))(params)
  state = jax.device_put(state, sharding)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=tcfg.checkpoint_every)
  splits = [_at_least(s, tcfg.batch_size) for s in member_splits]
  lengths = np.concatenate([s.feature_lengths for s in splits])
  buckets = pipeline.frame_buckets(lengths, tcfg.num_buckets)
  batchers = [pipeline.Batcher(s, tcfg.batch_size, seed=streams.seed(f"batch_order/{m}"),
                                buckets=buckets)
              for m, s in enumerate(splits)]
  member_keys = jax.random.split(train_key, num)
  step = jax.jit(jax.vmap(steps_lib.make_train_step(loss_fn, optimizer)),
                 in_shardings=(sharding, sharding, sharding), out_shardings=(sharding, sharding),
                 donate_argnums=(0,))

  def train_step(state, i):
    batch = stack_batches([b.batch(i) for b in batchers])
    state, m = step(state, jax.device_put(batch, sharding), member_keys)
    done = i + 1
    if done % tcfg.log_every and done != tcfg.num_steps:
      return state, None
    loss = np.asarray(jax.device_get(m["loss"]))
    return state, {"train/loss_mean": float(loss.mean()), "train/loss_max": float(loss.max())}

  out = loop_lib.train_loop(state, train_step, num_steps=tcfg.num_steps, checkpointer=ckpt,
                            writer=metrics_lib.create_writer(workdir), desc=desc, progress=progress,
                            postfix=lambda row: {"loss": f"{row['train/loss_mean']:.2f}"},
                            seconds_key="train/elapsed_seconds")
  ckpt.close()
  return EnsembleResult(out.state.params, out.step, out.train_seconds, out.preempted)


@functools.lru_cache(maxsize=8)
def make_ensemble_decode(model):
  """Jitted greedy decoding of every member: (stacked params, feats, lens) -> ids [M, B, L], counts [M, B]."""
  decode = lambda params, feats, lens: model.apply(
      {"params": params}, feats, lens, method=type(model).greedy_decode)
  return jax.jit(jax.vmap(decode, in_axes=(0, None, None)))


def transcribe_ensemble(model, stacked_params, split: pipeline.SpeechSplit, tokenizer: Tokenizer, *,
                        batch_size: int, num_buckets: int = 3) -> list[list[str]]:
  """Greedy transcripts of `split` by every member: [M][len(split)] strings.

  Batches are padded to a few frame buckets, so the decode compiles once per bucket, not
  once per batch shape."""
  decode = make_ensemble_decode(model)
  num = jax.tree.leaves(stacked_params)[0].shape[0]
  hyps = [[None] * len(split) for _ in range(num)]
  buckets = pipeline.frame_buckets(split.feature_lengths, num_buckets)
  for batch in pipeline.eval_batches(split, batch_size, buckets):
    ids, counts = jax.device_get(decode(stacked_params, batch["features"], batch["feature_lengths"]))
    for row, i in enumerate(batch["index"]):
      if i >= 0:
        for m in range(num):
          hyps[m][i] = tokenizer.decode(ids[m, row, : counts[m, row]]).strip()
  return hyps


def evaluate_ensemble(model, stacked_params, split: pipeline.SpeechSplit, tokenizer: Tokenizer, *,
                      batch_size: int) -> list[evaluate_lib.EvalResult]:
  """Greedy-decodes `split` with every member; one EvalResult per member."""
  hyps = transcribe_ensemble(model, stacked_params, split, tokenizer, batch_size=batch_size)
  refs = split.transcripts
  return [evaluate_lib.EvalResult(wer_lib.word_error_rate(refs, h), h, wer_lib.utterance_errors(refs, h))
          for h in hyps]
