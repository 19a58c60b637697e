"""Named random streams from one root seed (non-DP randomness only).

STYLE.md: one root seed (`config.seed`) at the top of `run`, split by purpose. `Streams(seed)`
gives every purpose ("init", "train", "batch_order", ...) its own JAX key or NumPy generator,
derived from (seed, purpose name) by SHA-256, so:

* the same purpose gives the same stream, in every process and every run (Python's `hash()`
  is salted per process, so it is never used);
* different purposes give independent streams, and adding a purpose never shifts another's
  numbers (unlike `split(key, n)` or magic salts such as `default_rng((seed, 7))`);
* per-step or per-round structure stays with the caller: `fold_in(streams.key("train"), step)`,
  `streams.numpy("selection", round)`, so a resumed run draws the same numbers.

DP noise and DP sampling must NOT come from here: `config.seed` is published in results.json.
They come from `libs.dp.randomness.DpRandomness` (secret by default). The two are kept apart
by construction: this module hashes under its own namespace.

Example:
  >>> streams = Streams(config.seed)
  >>> params = model.init(streams.key("init"), x)
  >>> step_key = jax.random.fold_in(streams.key("train"), step)
  >>> order = streams.numpy("epoch_order", epoch).permutation(n)
  >>> batcher = Batcher(split, 32, seed=streams.seed("batch_order"))
"""

from __future__ import annotations

import hashlib
import json

import jax
import numpy as np

_NAMESPACE = "libs.train.rng.Streams/v1"


def _check_int(name: str, value, minimum: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be an int, got {value!r}")
  if minimum is not None and value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}")
  return int(value)


class Streams:
  """Independent, reproducible random streams named by purpose, all from one root seed.

  Args:
    seed: the root seed (usually `config.seed`); any int.

  Example:
    >>> s = Streams(0)
    >>> k = s.key("init")                 # a jax.random.key
    >>> g = s.numpy("partition")          # a np.random.Generator
    >>> g_r = s.numpy("selection", 3)     # one generator per round
  """

  def __init__(self, seed: int):
    self._seed = _check_int("seed", seed)

  @property
  def root_seed(self) -> int:
    return self._seed

  def __repr__(self) -> str:
    return f"Streams(seed={self._seed})"

  def _digest(self, purpose: str, more: tuple[int, ...] = ()) -> bytes:
    if not isinstance(purpose, str) or not purpose:
      raise ValueError(f"purpose must be a non-empty str, got {purpose!r}")
    if not more:  # The 63-bit seeds and keys: kept to this form so they never change.
      return hashlib.sha256(f"{_NAMESPACE}:{self._seed}:{purpose}".encode()).digest()
    # Unambiguous: ("a:1",) and ("a", 1) differ.
    return hashlib.sha256(json.dumps([_NAMESPACE, self._seed, purpose, list(more)]).encode()).digest()

  def seed(self, purpose: str) -> int:
    """A 63-bit non-negative integer seed for `purpose`, for APIs that take an int seed.

    A stable function of (root seed, purpose): SHA-256, never Python's salted `hash()`.
    """
    return int.from_bytes(self._digest(purpose)[:8], "little") >> 1

  def key(self, purpose: str) -> jax.Array:
    """A `jax.random.key` for `purpose`, using all 63 bits of `seed(purpose)`.

    `jax.random.key(int)` keeps only the low 32 bits of a seed unless jax_enable_x64 is on, so
    the seed goes in as a 31-bit key plus a 32-bit `fold_in`: the same key with or without x64.
    """
    s = self.seed(purpose)
    return jax.random.fold_in(jax.random.key(s & 0x7FFFFFFF), (s >> 31) & 0xFFFFFFFF)

  def numpy(self, purpose: str, *more: int) -> np.random.Generator:
    """A NumPy generator for `purpose`; `more` (non-negative ints, e.g. a round or an epoch)
    selects one of a family of independent generators: `numpy("selection", r)`."""
    more = tuple(_check_int("numpy(...) index", m, 0) for m in more)
    # The whole name goes through SHA-256: `default_rng((s, 0))` equals `default_rng((s,))`, so
    # tuples of ints would make index 0 of a family collide with the family's plain stream.
    return np.random.default_rng(int.from_bytes(self._digest(purpose, more)[:16], "little"))
