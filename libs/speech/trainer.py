"""End-to-end ASR training on the one resumable loop, shared by every project that trains
a recognizer (PATE-ASR's public model, non-private baseline, teachers and students; the
fairness project's base model and its fine-tunes). Models, losses, decoding and
evaluation are the shared `libs.models.asr` and `libs.speech.evaluate`.

Example:
  >>> model = asr_lib.build_model(config.model, tokenizer.vocab_size)
  >>> result = train(config, workdir, model, train_split, dev_split, tokenizer)
  >>> evaluate_lib.evaluate(evaluate_lib.make_decode_fn(model), result.state.params, test_split,
  ...                       tokenizer, batch_size=64, mesh=mesh)
"""

from __future__ import annotations

import dataclasses
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
from libs.speech.tokenizer import Tokenizer
from libs.train import checkpoint as ckpt_lib
from libs.train import loop as loop_lib
from libs.train import mesh as mesh_lib
from libs.train import metrics as metrics_lib
from libs.train import optimizers
from libs.train import rng as rng_lib
from libs.train import steps as steps_lib
from libs.train.state import TrainState

# Compiled (init, step) pairs by (model, train config, mesh): stages that train the same
# model with the same train section in one process (fine-tuning variants, a resume after a
# signal) compile once. Only the config-built optimizer and loss are cached, never a caller's.
_STEPS: dict = {}
_MAX_STEPS = 8


def _cached_steps(model, tcfg: ml_collections.ConfigDict, mesh):
  key = (model, tcfg.to_json_best_effort(sort_keys=True), mesh)
  if key not in _STEPS:
    if len(_STEPS) >= _MAX_STEPS:
      _STEPS.pop(next(iter(_STEPS)))
    optimizer = optimizers.make_optimizer(tcfg)
    loss_fn = evaluate_lib.make_loss_fn(model, evaluate_lib.spec_augment_config(tcfg))
    _STEPS[key] = _build_steps(optimizer, loss_fn, mesh)
  return _STEPS[key]


def _build_steps(optimizer, loss_fn, mesh):
  create = jax.jit(lambda p: TrainState.create(p, optimizer))
  return create, steps_lib.jit_data_parallel(steps_lib.make_train_step(loss_fn, optimizer), mesh)


@dataclasses.dataclass
class TrainResult:
  state: TrainState
  train_seconds: float
  steps: int
  preempted: bool
  dev: evaluate_lib.EvalResult | None


def train(config: ml_collections.ConfigDict, workdir: str, model, train_split: pipeline.SpeechSplit,
          dev_split: pipeline.SpeechSplit | None, tokenizer: Tokenizer, *,
          optimizer: optax.GradientTransformation | None = None,
          loss_fn: Callable | None = None, desc: str = "train", init_params=None) -> TrainResult:
  """Trains `model` on `train_split`, resuming from `workdir/checkpoints` when present.

  Runs `libs.train.loop.train_loop`: writes metrics (TensorBoard + metrics.jsonl) to
  `workdir`, shows a progress bar, evaluates dev WER every `config.train.eval_every` steps,
  checkpoints (with the training seconds so far) every `config.train.checkpoint_every` steps
  and on SIGTERM/SIGINT (then returns with `preempted=True`). `init_params` (e.g. a public
  pretrained model) replaces the random initialization: fine-tuning.
  """
  tcfg = config.train
  mesh = mesh_lib.make_mesh(jax.devices()[: config.get("num_devices") or None])
  mesh_lib.check_batch_size(tcfg.batch_size, mesh, "config.train.batch_size")
  streams = rng_lib.Streams(config.seed)
  init_key, train_key = streams.key("init"), streams.key("train")
  if optimizer is None and loss_fn is None:
    create, step_fn = _cached_steps(model, tcfg, mesh)
  else:
    optimizer = optimizer or optimizers.make_optimizer(tcfg)
    loss_fn = loss_fn or evaluate_lib.make_loss_fn(model, evaluate_lib.spec_augment_config(tcfg))
    create, step_fn = _build_steps(optimizer, loss_fn, mesh)
  params = (init_params if init_params is not None
            else asr_lib.init_params(model, init_key, train_split.features[0].shape[1]))
  state = create(params)
  state = mesh_lib.replicate(state, mesh)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=tcfg.checkpoint_every)
  batcher = pipeline.Batcher(train_split, tcfg.batch_size, seed=streams.seed("batch_order"),
                             num_buckets=tcfg.num_buckets)
  writer = metrics_lib.create_writer(workdir)
  if not ckpt.latest_step():
    writer.write_hparams(dict(_flatten(config.to_dict())))
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  throughput = _Throughput()

  def train_step(state, step):
    throughput.start()
    batch = batcher.batch(step)
    state, m = step_fn(state, mesh_lib.shard_batch(batch, mesh), train_key)
    throughput.count(int(batch["weights"].sum()))
    done = step + 1
    if done % tcfg.log_every and done != tcfg.num_steps:
      return state, None
    row = {f"train/{k}": float(v) for k, v in jax.device_get(m).items()}
    row["train/utterances_per_s"] = throughput.rate()
    return state, row

  decode_fn = evaluate_lib.make_decode_fn(model)
  dev_hook = _DevHook(lambda params: evaluate_lib.evaluate(
      decode_fn, params, dev_split, tokenizer, batch_size=config.eval.batch_size, mesh=mesh,
      buckets=batcher.buckets), throughput, desc)
  hooks = [loop_lib.every(tcfg.eval_every, dev_hook, tcfg.num_steps)] if dev_split is not None else []
  out = loop_lib.train_loop(state, train_step, num_steps=tcfg.num_steps, checkpointer=ckpt, writer=writer,
                            hooks=hooks, desc=desc, progress=config.get("progress", True), postfix=_postfix,
                            seconds_key="train/elapsed_seconds")
  ckpt.close()
  if out.preempted:
    print(f"[{desc}] stopped by a signal: checkpointed step {out.step}, stopping")
  writer.write_scalars(out.step, {"model/num_params": num_params})
  writer.flush()
  return TrainResult(out.state, out.train_seconds, out.step, out.preempted, dev_hook.last)


class _Throughput:
  """Utterances per second over the steps since the last log row, evaluation excluded.

  The clock starts at the first step this process runs (not at set-up or restore).
  """

  def __init__(self):
    self._since, self._utterances = None, 0

  def start(self):
    if self._since is None:
      self._since = time.perf_counter()

  def count(self, utterances: int):
    self._utterances += utterances

  def rate(self) -> float:
    now = time.perf_counter()
    rate = self._utterances / max(now - self._since, 1e-9)
    self._since, self._utterances = now, 0
    return rate

  def restart(self):
    """Drops the time spent so far in this window (evaluation is not training throughput)."""
    self._since = time.perf_counter()


class _DevHook:
  """The loop hook evaluating dev WER; keeps the last result for `TrainResult.dev`."""

  def __init__(self, evaluate: Callable[[Any], evaluate_lib.EvalResult], throughput: _Throughput, desc: str):
    self._evaluate, self._throughput, self._desc = evaluate, throughput, desc
    self.last: evaluate_lib.EvalResult | None = None

  def __call__(self, done: int, state) -> dict:
    self.last = self._evaluate(state.params)
    tqdm.tqdm.write(f"[{self._desc}] step {done}: dev WER {100 * self.last.wer:.2f}%")
    self._throughput.restart()
    return {"dev/wer": self.last.wer}


def _postfix(row: dict) -> dict:
  shown = {}
  if "train/loss" in row:
    shown.update(loss=f"{row['train/loss']:.3f}", utt_s=f"{row['train/utterances_per_s']:.0f}")
  if "dev/wer" in row:
    shown["dev_wer"] = f"{100 * row['dev/wer']:.1f}%"
  return shown


def _flatten(d: dict, prefix: str = ""):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _flatten(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v
