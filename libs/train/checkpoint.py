"""Checkpoints with orbax, resume on rerun, and a save on SIGTERM/SIGINT.

Example:
  >>> ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=200)
  >>> state = ckpt.restore_or(state)          # resumes when the workdir has a checkpoint
  >>> with PreemptionGuard() as guard:
  ...   for step in range(int(state.step), num_steps):
  ...     state, _ = train_step(state, batch)
  ...     ckpt.maybe_save(state, force=guard.stop_requested)
  ...     if guard.stop_requested: break
  >>> ckpt.close()
"""

from __future__ import annotations

import os
import signal
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatch(ValueError):
  """A workdir's checkpoint has a different structure than the state being resumed."""


class Checkpointer:
  """An orbax `CheckpointManager` over one pytree (the whole training state)."""

  def __init__(self, directory: str, *, save_every: int, max_to_keep: int = 2):
    if save_every < 1:
      raise ValueError(f"save_every must be >= 1, got {save_every}")
    self.directory = os.path.abspath(directory)
    self.save_every = save_every
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore_or(self, state: Any) -> Any:
    """The latest checkpoint restored into `state`'s structure and shardings, or `state`."""
    step = self._manager.latest_step()
    if step is None:
      return state
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except ValueError as e:
      # Orbax lists every mismatching leaf (hundreds of lines); keep the first few.
      detail = "\n".join(str(e).splitlines()[:8])
      raise CheckpointMismatch(
          f"the checkpoint at {self.directory} (step {step}) does not fit this run's state: it was "
          f"written by a different model or config (or code version). Use a new --workdir, or "
          f"delete {self.directory} to start over. Orbax says:\n{detail}") from None

  def maybe_save(self, state: Any, *, force: bool = False) -> bool:
    # Stacked ensembles carry one (equal) step per member.
    step = int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])
    if not force and step % self.save_every:
      return False
    if self._manager.latest_step() == step:
      return False
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


class PreemptionGuard:
  """Turns SIGTERM/SIGINT into a flag so the loop can checkpoint and exit cleanly.

  A second signal while the flag is set restores the default handler's behaviour.
  """

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self._signals = signals
    self._previous = {}
    self.stop_requested = False
    self.received = None

  def _handle(self, signum, frame):
    del frame
    if self.stop_requested:  # Second signal: give up on a clean stop.
      previous = self._previous.get(signum, signal.SIG_DFL)
      signal.signal(signum, previous)
      signal.raise_signal(signum)
    self.stop_requested = True
    self.received = signal.Signals(signum).name

  def __enter__(self):
    for s in self._signals:
      self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    return False


class Preempted(Exception):
  """Raised after a clean stop on a signal; the state was checkpointed."""
