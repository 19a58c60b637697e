"""Workdir files: atomic JSON writes, finished-stage markers and `results.json`.

Every host of a multi-host run computes the same payloads, and the workdir is shared (as
orbax checkpoints require), so only process 0 writes; every process reads. A write goes
to a temporary file first and is renamed over the target, so a run killed mid-write never
leaves a broken file that a rerun would trip on.

Example:
  >>> write_json("/tmp/w/summary.json", {"wer": np.float32(0.25)})   # numpy scalars are fine
  >>> teachers = run_stage("/tmp/w/teachers", train_teachers)        # skipped once done.json exists
  >>> write_results("/tmp/w", {"test_wer": 0.3, "config": config.to_dict()})
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import flax.serialization
import jax
import numpy as np

DONE_FILE = "done.json"
RESULTS_FILE = "results.json"


def is_primary() -> bool:
  """Whether this process writes the workdir's files (process 0; always true on one host)."""
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_index() == 0


def _default(o: Any) -> Any:
  # numpy / jax scalars become Python numbers; anything else (dtypes, paths) its string.
  return o.item() if hasattr(o, "item") else str(o)


def write_json(path: str, payload: Any, *, sort_keys: bool = False) -> str:
  """Writes `payload` as JSON to `path` atomically (temporary file + `os.replace`).

  Only process 0 writes; others return at once. Numpy and JAX scalars are written as
  numbers, other non-JSON values as their `str`.

  Args:
    path: the file to (over)write; its directory is created.
    payload: a JSON-serialisable tree (see above for scalars).
    sort_keys: sort dict keys (default: keep insertion order, which is what a reader sees).

  Returns:
    `path`.

  Example:
    >>> write_json(os.path.join(workdir, "dp_randomness.json"), {"randomness": "secret"})
  """
  if not is_primary():
    return path
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=1, sort_keys=sort_keys, default=_default)
    f.flush()
    os.fsync(f.fileno())  # The rename must not land before the bytes do.
  os.replace(tmp, path)
  return path


def read_json(path: str) -> Any | None:
  """The JSON in `path`, or None when it does not exist.

  Raises:
    ValueError: naming the file, when it is not valid JSON (written by something else).

  Example:
    >>> releases = read_json(release_path) or {}
  """
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON ({e}); delete it to recompute what it records") from None


def save_pytree(path: str, tree: Any) -> str:
  """Writes a pytree of arrays (trained parameters) to `path` as msgpack, atomically, on process 0.

  Example:
    >>> save_pytree("/tmp/w/teacher/params.msgpack", params)
    >>> params = load_pytree("/tmp/w/teacher/params.msgpack")   # nested dicts of NumPy arrays
  """
  if is_primary():
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
      f.write(flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, jax.device_get(tree))))
    os.replace(tmp, path)
  return path


def load_pytree(path: str) -> Any:
  """What `save_pytree` wrote (nested dicts of NumPy arrays); FileNotFoundError names the file."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: the stage that writes it has not finished (rerun the "
                            "command on this workdir; finished stages are skipped)")
  with open(path, "rb") as f:
    return flax.serialization.msgpack_restore(f.read())


def done_path(stage_dir: str) -> str:
  return os.path.join(stage_dir, DONE_FILE)


def read_done(stage_dir: str) -> Any | None:
  """What a finished stage recorded in `stage_dir/done.json`, or None if it has not finished."""
  return read_json(done_path(stage_dir))


def write_done(stage_dir: str, payload: Any) -> str:
  """Marks the stage in `stage_dir` finished, recording `payload` (its outputs' summary)."""
  return write_json(done_path(stage_dir), payload)


def run_stage(stage_dir: str, fn: Callable[[], Any]) -> Any:
  """`fn()`'s result, computed once: a rerun returns what `stage_dir/done.json` recorded.

  `fn` must return a JSON-serialisable summary; the marker is written only after it
  returns, so an interrupted stage reruns (resuming from its own checkpoints).

  Example:
    >>> floor = run_stage(os.path.join(workdir, "floor"), lambda: {"wer": train_floor()})
  """
  recorded = read_done(stage_dir)
  if recorded is not None:
    return recorded
  out = fn()
  write_done(stage_dir, out)
  return out


def write_results(workdir: str, results: dict, *, sort_keys: bool = False) -> str:
  """Writes `workdir/results.json` (final metrics, privacy spent, config) and returns its path."""
  return write_json(os.path.join(workdir, RESULTS_FILE), results, sort_keys=sort_keys)
