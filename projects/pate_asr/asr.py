"""End-to-end ASR training shared by every model this project trains (non-private
baseline, PATE teachers and student). Models, losses, decoding and evaluation are the
shared `libs.models.asr` and `libs.speech.evaluate`.

Example:
  >>> model = asr_lib.build_model(config.model, tokenizer.vocab_size)
  >>> result = train(config, workdir, model, train_split, dev_split, tokenizer)
  >>> evaluate_lib.evaluate(evaluate_lib.make_decode_fn(model), result.state.params, test_split,
  ...                       tokenizer, batch_size=64, mesh=mesh)
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import optax
import tqdm

from libs.data import pipeline
from libs.models import asr as asr_lib
from libs.speech import evaluate as evaluate_lib
from libs.speech.tokenizer import CharTokenizer
from libs.train import checkpoint as ckpt_lib
from libs.train import mesh as mesh_lib
from libs.train import metrics as metrics_lib
from libs.train import optimizers
from libs.train import steps as steps_lib
from libs.train.state import TrainState


@dataclasses.dataclass
class TrainResult:
  state: TrainState
  train_seconds: float
  steps: int
  preempted: bool
  dev: evaluate_lib.EvalResult | None


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
  optimizer = optimizer or optimizers.make_optimizer(tcfg)
  loss_fn = loss_fn or evaluate_lib.make_loss_fn(model, evaluate_lib.spec_augment_config(tcfg))
  params = asr_lib.init_params(model, init_key, train_split.features[0].shape[1])
  state = jax.jit(lambda p: TrainState.create(p, optimizer))(params)
  state = mesh_lib.replicate(state, mesh)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=tcfg.checkpoint_every)
  state = ckpt.restore_or(state)
  start = int(jax.device_get(state.step))
  batcher = pipeline.Batcher(train_split, tcfg.batch_size, seed=config.seed, num_buckets=tcfg.num_buckets)
  step_fn = steps_lib.jit_data_parallel(steps_lib.make_train_step(loss_fn, optimizer), mesh)
  decode_fn = evaluate_lib.make_decode_fn(model)
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
        dev = evaluate_lib.evaluate(decode_fn, state.params, dev_split, tokenizer,
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
