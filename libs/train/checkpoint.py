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
    # The handler is named up front so that a fresh manager can read a saved tree's metadata
    # (`restore_or(..., saved_shapes_for=...)`) before anything is restored.
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore_or(self, state: Any, *, saved_shapes_for: tuple[str, ...] = ()) -> Any:
    """The latest checkpoint restored into `state`'s structure and shardings, or `state`.

    Args:
      state: the target pytree (its values are returned when there is no checkpoint).
      saved_shapes_for: keys of a dict `state` whose subtrees take the shapes and dtypes
        the checkpoint holds (host NumPy arrays whose size changes during a run, such as
        SCAFFOLD's control variates of the devices seen so far) instead of the target's.
    """
    step = self._manager.latest_step()
    if step is None:
      return state
    if saved_shapes_for:
      saved = self._manager.item_metadata(step).tree
      state = dict(state)
      for key in saved_shapes_for:
        if key not in saved:
          raise CheckpointMismatch(f"the checkpoint at {self.directory} (step {step}) has no {key!r}: it was "
                                   "written by a different model or config (or code version)")
        state[key] = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), saved[key])
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

  def maybe_save(self, state: Any, *, force: bool = False, step: int | None = None) -> bool:
    """Saves `state` at `step` (default: its `.step`) every `save_every` steps, or when forced."""
    if step is None:  # Stacked ensembles carry one (equal) step per member.
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
  On several processes (multi-host), reading `stop_requested` is a collective: it is true
  on every process as soon as one of them got a signal, so all stop (and save) at the same
  step instead of the others waiting forever in the next step's all-reduce. Every process
  must therefore read it at the same points of the loop (the loops here read it once a step).
  """

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self._signals = signals
    self._previous = {}
    self._stop = False
    self._received = None

  @property
  def stop_requested(self) -> bool:
    if jax.process_count() == 1:
      return self._stop
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return bool(np.any(multihost_utils.process_allgather(np.int32(self._stop))))

  @property
  def received(self) -> str | None:
    """The name of the signal this process got (None if none did)."""
    return self._received

  def _handle(self, signum, frame):
    del frame
    if self._stop:  # Second signal: give up on a clean stop.
      previous = self._previous.get(signum, signal.SIG_DFL)
      signal.signal(signum, previous)
      signal.raise_signal(signum)
    self._stop = True
    self._received = signal.Signals(signum).name

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
