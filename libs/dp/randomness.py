"""Secret randomness for DP noise and DP sampling.

A DP guarantee holds only if the adversary cannot predict the noise or the sample. The
config seed is published (it is in every `results.json`), so DP noise keys and sampler
seeds must not be derived from it: by default they come from the operating system's
randomness (`secrets`), fresh on every start of a run. A resumed run draws new secret
randomness for the steps it has left, which is as private as the original stream (each
step's noise and sample are independent of everything released before).

Tests and debugging need reproducible noise: `DpRandomness(reproducible_seed=s)` derives
everything from `s` and says so in `describe()`, which every result that reports an
epsilon records next to it (the guarantee is void against anyone who knows `s`).

Example:
  >>> rand = DpRandomness.from_config(config.seed, config.dp.insecure_reproducible_noise)
  >>> noise_key = rand.key("noise")          # a jax PRNG key, never derived from config.seed
  >>> sampler = PoissonSampler(n, q, seed=rand.seed("sampling"))
  >>> results["privacy"]["randomness"] = rand.describe()
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets

import jax
import numpy as np

SECRET = "os-secret"
INSECURE = "reproducible-insecure"


def _derive(base: int, purpose: str) -> int:
  """A 63-bit seed from (base, purpose) that differs between purposes."""
  digest = hashlib.sha256(f"{base}:{purpose}".encode()).digest()
  return int.from_bytes(digest[:8], "little") >> 1


@dataclasses.dataclass(frozen=True)
class DpRandomness:
  """Where a run's DP noise and DP sampling randomness comes from.

  Attributes:
    reproducible_seed: None (default): a fresh secret from the operating system. An int:
      derive everything from it, reproducibly and INSECURELY (tests, debugging).
  """
  reproducible_seed: int | None = None
  _secret: int = dataclasses.field(default_factory=lambda: secrets.randbits(63), repr=False, compare=False)

  @classmethod
  def from_config(cls, seed: int, insecure_reproducible: bool) -> "DpRandomness":
    """Secret randomness unless the config explicitly asks for reproducible (insecure) noise."""
    if not isinstance(insecure_reproducible, bool):
      raise ValueError(f"insecure_reproducible_noise must be a bool, got {insecure_reproducible!r}")
    return cls(int(seed)) if insecure_reproducible else cls()

  @property
  def secure(self) -> bool:
    return self.reproducible_seed is None

  def seed(self, purpose: str) -> int:
    """A 63-bit integer seed for one purpose ("sampling", "noise", ...)."""
    base = self._secret if self.secure else self.reproducible_seed
    return _derive(base, purpose)

  def key(self, purpose: str) -> jax.Array:
    """A `jax.random.key` for one purpose, with all 64 bits of the default (threefry) key secret.

    Not `jax.random.key(seed)`: without x64 it keeps only the low 32 bits of the seed, which
    would leave 2^32 possible noise streams (searchable).
    """
    digest = hashlib.sha256(f"{self.seed(purpose)}:key".encode()).digest()
    return jax.random.wrap_key_data(np.frombuffer(digest[:8], np.uint32).copy(), impl="threefry2x32")

  def describe(self) -> str:
    """What results record: "os-secret" or "reproducible-insecure"."""
    return SECRET if self.secure else INSECURE
