"""The one resumable training loop: restore, steps, hooks, metrics, checkpoints, preemption.

`train_loop` runs `step_fn(state, step) -> (state, row)` from the checkpointed step to
`num_steps`. Everything a run needs to continue is in one orbax checkpoint: the state (params,
optimizer state, noise keys, ...), the training seconds spent so far, and optionally a host
object's state (`extra`, anything with `state_dict()` / `load_state_dict()`, such as
SCAFFOLD's control variates, whose size may change from one save to the next). SIGTERM or
Ctrl-C finishes the current step, saves, and returns with `preempted=True`; rerunning resumes
exactly there. Each step's `row` of host scalars plus what the hooks return is written with
`writer.write_scalars(step + 1, row)` (which refuses NaN: `libs.train.metrics.check_finite`).

Hooks are `hook(done, state) -> dict | None`, called after every step; `every(n, fn,
num_steps)` makes the usual one (every n steps and at the last). clu's `periodic_actions`
are not used for these: their first call never triggers and they count from the first call,
so a resumed run would evaluate at other steps than an uninterrupted one.

Example:
  >>> ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=100)
  >>> result = train_loop(state, train_step, num_steps=1000, checkpointer=ckpt, writer=writer,
  ...                     hooks=[every(200, lambda done, s: {"dev/wer": evaluate(s)}, 1000)])
  >>> result.state, result.train_seconds, result.preempted
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
import tqdm

from libs.train.checkpoint import Checkpointer, PreemptionGuard

Hook = Callable[[int, Any], "dict | None"]


@dataclasses.dataclass
class LoopResult:
  """What `train_loop` ends with."""
  state: Any
  step: int             # steps done (num_steps unless preempted)
  train_seconds: float  # time in `step_fn` over every run of this loop (resumes included), hooks excluded
  preempted: bool


def every(n: int, fn: Hook, num_steps: int) -> Hook:
  """A hook calling `fn(done, state)` every `n` steps and after the last (n <= 0: only the last).

  Example:
    >>> hooks = [every(config.eval_every, lambda done, state: {"dev/wer": wer(state)}, num_steps)]
  """
  def hook(done, state):
    if done == num_steps or (n > 0 and done % n == 0):
      return fn(done, state)
    return None
  return hook


def _payload(state, seconds: float, extra) -> dict:
  payload = {"state": state, "train_seconds": np.asarray(seconds, np.float64)}
  if extra is not None:
    payload["extra"] = extra.state_dict()
  return payload


def train_loop(state: Any, step_fn: Callable[[Any, int], tuple[Any, dict | None]], *, num_steps: int,
               checkpointer: Checkpointer, writer=None, hooks: Sequence[Hook] = (), extra: Any = None,
               desc: str = "train", progress: bool = True,
               postfix: Callable[[dict], dict] | None = None, seconds_key: str | None = None) -> LoopResult:
  """Runs (or resumes) `step_fn` up to `num_steps`, checkpointing everything the run needs.

  Args:
    state: the initial state (replaced by the checkpoint's when the directory has one; its
      structure and shardings are the restore target).
    step_fn: `step_fn(state, step) -> (state, row)`, step counting from 0; `row` is a dict of
      host scalars to log at `step + 1` (or None).
    num_steps: where the loop stops.
    checkpointer: where the checkpoints go (saves every `save_every`, at the end and on a
      signal).
    writer: a metric writer (libs.train.metrics.create_writer) or None.
    hooks: called after every step with (steps done, state); their rows are logged too.
    extra: a host object with `state_dict()` (a dict of NumPy arrays) and
      `load_state_dict(d)`, saved and restored with the state.
    desc: the progress bar's label.
    progress: show a tqdm progress bar.
    postfix: row -> dict shown on the progress bar.
    seconds_key: if set, every row `step_fn` returns also logs the training seconds so far
      (`train_seconds`, resumes included) under this name.

  Returns:
    LoopResult(state, steps done, training seconds, preempted).
  """
  restored = checkpointer.restore_or(_payload(state, 0.0, extra),
                                     saved_shapes_for=("extra",) if extra is not None else ())
  start = checkpointer.latest_step() or 0
  state, elapsed = restored["state"], float(restored["train_seconds"])
  if extra is not None and start:
    extra.load_state_dict(restored["extra"])
  done, preempted = start, False
  with PreemptionGuard() as guard, tqdm.tqdm(total=num_steps, initial=start, desc=desc, disable=not progress,
                                             leave=False) as bar:
    for step in range(start, num_steps):
      t0 = time.perf_counter()
      state, row = step_fn(state, step)
      jax.block_until_ready(state)
      elapsed += time.perf_counter() - t0
      done = step + 1
      row = dict(row or {})
      if seconds_key is not None and row:
        row[seconds_key] = elapsed
      for hook in hooks:
        row.update(hook(done, state) or {})
      if writer is not None and row:
        writer.write_scalars(done, row)
      bar.update(1)
      if postfix is not None and row:
        bar.set_postfix(postfix(row))
      stop = guard.stop_requested  # Read once: a signal may land while saving.
      checkpointer.maybe_save(_payload(state, elapsed, extra), step=done, force=stop or done == num_steps)
      if stop:
        preempted = True
        break
  if writer is not None:
    writer.flush()
  return LoopResult(state, done, elapsed, preempted)
