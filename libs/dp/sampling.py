"""Host-side (NumPy) batch samplers for DP-SGD, each with the DpEvent of the sampling it does.

A privacy guarantee from amplification by sampling holds only for the sampling that was
actually run, so every sampler here returns its own `dp_event` and names the neighbouring
relation dp_accounting must analyse it under (`accountant_neighboring_relation`):

* `PoissonSampler`: each example independently with probability q (variable batch size).
  `PoissonSampledDpEvent`, add/remove-one.
* `FixedSizeSampler`: an independent uniform subset of exactly B examples per step.
  `SampledWithoutReplacementDpEvent`, which dp_accounting only analyses under replace-one.
* `ShufflingSampler`: a fresh permutation per epoch cut into fixed-size batches. No
  amplification analysis exists in dp-accounting, so it gets the conservative event: one
  unamplified Gaussian release per epoch started (each example is in at most one batch per
  epoch), valid under zero-out (replace-with-null) adjacency.

`noise_multiplier` is always the DP-SGD sigma: noise std on the SUM of clipped per-example
gradients divided by the clip norm C (as in `libs.dp.noise`). Where the relation is
replace-one the sensitivity of that sum is 2C, and the event carries sigma / 2. It is
checked by `libs.accounting._checks` (the rule every accounting entry point shares): it must
be finite and >= 0; an explicit 0 is a non-private release whose event accounting reports
with epsilon inf; negative, NaN, inf and bool are errors. `poisson_step_event` and
`fixed_size_step_event` build one step's event for callers without a sampler object
(e.g. federated rounds over devices).

Batches are a deterministic function of (seed, step), so a resumed run draws the same
batches. The amplification analyses assume the adversary does not see which examples were
drawn: keep `seed` secret (do not log or publish it with the model).

Example:
  >>> sampler = PoissonSampler(60_000, 256 / 60_000, seed=1234)
  >>> for idx, mask in sampler.physical_batches(sampler.indices(step), 64):
  ...   grad_sum = grad_sum + clipped_grad_sum_fn(params, data[np.maximum(idx, 0)], mask)
  >>> accountant = dp_accounting.rdp.RdpAccountant(
  ...     neighboring_relation=sampler.accountant_neighboring_relation)
  >>> epsilon = accountant.compose(sampler.dp_event(1.1, steps)).get_epsilon(1e-5)
"""

from __future__ import annotations

from typing import Any

import dp_accounting
import numpy as np

# libs.dp depends on libs.accounting, never the reverse (no import cycle): the argument
# checks are the accounting ones, so a bad noise multiplier gets the same error here.
from libs.accounting import _checks

NeighboringRelation = dp_accounting.NeighboringRelation

_INT32_MAX = np.iinfo(np.int32).max


def _self_composed(event: dp_accounting.DpEvent, count: int) -> dp_accounting.DpEvent:
  # dp_accounting's ledger rejects a SelfComposedDpEvent with count 0: nothing released yet.
  return dp_accounting.SelfComposedDpEvent(event, count) if count else dp_accounting.NoOpDpEvent()


def poisson_step_event(sampling_probability: float, noise_multiplier: float
                       ) -> dp_accounting.DpEvent:
  """One Poisson-subsampled Gaussian release (analyse under add/remove-one).

  Args:
    sampling_probability: q in (0, 1], each unit's independent inclusion probability.
    noise_multiplier: noise std on the sum / the per-unit clip norm, >= 0 (0: epsilon inf).

  Returns:
    `PoissonSampledDpEvent(q, GaussianDpEvent(noise_multiplier))`.

  Example:
    >>> poisson_step_event(0.01, 1.1).sampling_probability
    0.01
  """
  return dp_accounting.PoissonSampledDpEvent(
      _checks.check_sampling_probability(sampling_probability),
      dp_accounting.GaussianDpEvent(_checks.check_noise_multiplier(noise_multiplier)))


def fixed_size_step_event(num_examples: int, batch_size: int, noise_multiplier: float
                          ) -> dp_accounting.DpEvent:
  """One Gaussian release on a uniform size-B subset without replacement (replace-one).

  Replacing one unit moves the sum of clipped contributions by up to 2C, so the Gaussian
  carries noise_multiplier / 2 (see `FixedSizeSampler`).

  Args:
    num_examples: N >= 1, the population the subset is drawn from.
    batch_size: B in [1, N].
    noise_multiplier: noise std on the sum / the per-unit clip norm, >= 0 (0: epsilon inf).

  Returns:
    `SampledWithoutReplacementDpEvent(N, B, GaussianDpEvent(noise_multiplier / 2))`.

  Example:
    >>> fixed_size_step_event(2000, 40, 2.0).event.noise_multiplier
    1.0
  """
  num_examples = _checks.check_int("num_examples", num_examples, 1, _INT32_MAX)
  batch_size = _checks.check_int("batch_size", batch_size, 1, num_examples)
  sigma = _checks.check_noise_multiplier(noise_multiplier)
  return dp_accounting.SampledWithoutReplacementDpEvent(
      num_examples, batch_size, dp_accounting.GaussianDpEvent(sigma / 2))


def physical_batches(indices: Any, physical_batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """Splits a logical batch into fixed-shape physical batches, padded with index -1.

  A jitted step compiled once for shape [P] accumulates the sum of clipped gradients over
  the physical batches; padded slots have mask 0 and must contribute nothing (multiply
  each per-example clipped gradient by the mask). Gather with `np.maximum(idx, 0)` (or
  any valid index): the padded rows' data is masked out. An empty logical batch still
  yields one all-padding physical batch, so the step (and its noise) always runs.

  Args:
    indices: 1-D non-negative integer example indices of one logical batch.
    physical_batch_size: P >= 1, the leading dimension of every physical batch.

  Returns:
    list of max(1, ceil(n / P)) pairs (idx [P] int32 with -1 padding, mask [P] float32).

  Example:
    >>> physical_batches(np.array([4, 7, 9]), 2)
    [(array([4, 7], dtype=int32), array([1., 1.], dtype=float32)),
     (array([ 9, -1], dtype=int32), array([1., 0.], dtype=float32))]
  """
  size = _checks.check_int("physical_batch_size", physical_batch_size, 1)
  idx = np.asarray(indices)
  if idx.ndim != 1:
    raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
  if idx.size and not np.issubdtype(idx.dtype, np.integer):
    raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
  if idx.size and (idx.min() < 0 or idx.max() > _INT32_MAX):
    raise ValueError(f"indices must lie in [0, 2**31), got min {idx.min()}, max {idx.max()}")
  num_batches = max(1, -(-idx.size // size))
  padded = np.full(num_batches * size, -1, np.int32)
  padded[:idx.size] = idx
  padded = padded.reshape(num_batches, size)
  masks = (padded >= 0).astype(np.float32)
  return [(padded[i], masks[i]) for i in range(num_batches)]


class _Sampler:
  """Shared validation and helpers."""

  def __init__(self, num_examples: int, seed: int):
    self._num_examples = _checks.check_int("num_examples", num_examples, 1, _INT32_MAX)
    # default_rng rejects negative entropy, so catch it here with the argument's name.
    self._seed = _checks.check_int("seed", seed, 0)

  @property
  def num_examples(self) -> int:
    return self._num_examples

  def _rng(self, step: int) -> np.random.Generator:
    return np.random.default_rng((self._seed, _checks.check_int("step", step, 0)))

  @staticmethod
  def physical_batches(indices: Any, physical_batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """See the module-level `physical_batches`."""
    return physical_batches(indices, physical_batch_size)


class PoissonSampler(_Sampler):
  """Poisson sampling: each example joins each step's batch independently with probability q.

  Analysed by dp_accounting as `PoissonSampledDpEvent` under add/remove-one (the batch
  size is random and may be 0; the step must still run and add its noise).

  Example:
    >>> sampler = PoissonSampler(1000, 0.05, seed=0)
    >>> sampler.indices(3)  # ~50 sorted indices, the same on every call with step=3
    >>> sampler.dp_event(1.0, steps=100)
  """

  def __init__(self, num_examples: int, sampling_probability: float, *, seed: int):
    """Initialises the sampler.

    Args:
      num_examples: dataset size N >= 1.
      sampling_probability: q in (0, 1].
      seed: non-negative int; batches are a function of (seed, step). Keep it secret.
    """
    super().__init__(num_examples, seed)
    self._q = _checks.check_sampling_probability(sampling_probability)

  @property
  def sampling_probability(self) -> float:
    return self._q

  @property
  def expected_batch_size(self) -> float:
    """q * N: divide the noisy gradient sum by this, not by the realised size (which would leak)."""
    return self._q * self._num_examples

  @property
  def accountant_neighboring_relation(self) -> NeighboringRelation:
    return NeighboringRelation.ADD_OR_REMOVE_ONE

  def indices(self, step: int) -> np.ndarray:
    """Sorted indices of step `step`'s logical batch (possibly empty); int64 [n]."""
    return np.flatnonzero(self._rng(step).random(self._num_examples) < self._q)

  def dp_event(self, noise_multiplier: float, steps: int) -> dp_accounting.DpEvent:
    """`steps` Poisson-subsampled Gaussian releases with std noise_multiplier * C (NoOp if 0)."""
    event = poisson_step_event(self._q, noise_multiplier)
    return _self_composed(event, _checks.check_count(steps, "steps"))


class _FixedBatchSampler(_Sampler):
  """A sampler whose every batch holds exactly `batch_size` examples."""

  def __init__(self, num_examples: int, batch_size: int, *, seed: int):
    """Initialises the sampler.

    Args:
      num_examples: dataset size N >= 1.
      batch_size: B in [1, N].
      seed: non-negative int; batches are a function of (seed, step). Keep it secret.
    """
    super().__init__(num_examples, seed)
    self._batch_size = _checks.check_int("batch_size", batch_size, 1, self._num_examples)

  @property
  def batch_size(self) -> int:
    return self._batch_size

  @property
  def expected_batch_size(self) -> float:
    return float(self._batch_size)


class FixedSizeSampler(_FixedBatchSampler):
  """Each step an independent uniformly random subset of exactly B examples (no replacement).

  dp_accounting's RDP accountant analyses `SampledWithoutReplacementDpEvent` (Wang, Balle
  and Kasiviswanathan 2019) only under the replace-one neighbouring relation (N is public),
  so the resulting epsilon is for replace-one, unlike Poisson's add/remove-one: the two
  epsilons are not directly comparable. Replacing one example moves the sum of clipped
  gradients by up to 2C, so the event's Gaussian noise multiplier is sigma / 2 (as in
  jax_privacy's fixed-batch-size accounting).

  Example:
    >>> sampler = FixedSizeSampler(1000, 50, seed=0)
    >>> sampler.indices(3)  # 50 distinct sorted indices
    >>> accountant = dp_accounting.rdp.RdpAccountant(
    ...     neighboring_relation=sampler.accountant_neighboring_relation)
    >>> accountant.compose(sampler.dp_event(1.0, steps=100)).get_epsilon(1e-5)
  """

  @property
  def accountant_neighboring_relation(self) -> NeighboringRelation:
    return NeighboringRelation.REPLACE_ONE

  def indices(self, step: int) -> np.ndarray:
    """Sorted indices of step `step`'s batch: B distinct examples; int64 [B]."""
    return np.sort(self._rng(step).choice(self._num_examples, self._batch_size, replace=False))

  def dp_event(self, noise_multiplier: float, steps: int) -> dp_accounting.DpEvent:
    """`steps` without-replacement-subsampled Gaussian releases (replace-one: sigma / 2; NoOp if 0)."""
    event = fixed_size_step_event(self._num_examples, self._batch_size, noise_multiplier)
    return _self_composed(event, _checks.check_count(steps, "steps"))


class ShufflingSampler(_FixedBatchSampler):
  """Epoch-wise random permutation cut into fixed-size batches (the remainder is dropped).

  Privacy accounting: dp-accounting has no amplification-by-shuffling analysis, and the
  usual practice of accounting shuffled batches as if Poisson-sampled is not a valid bound
  (Chua et al. 2024, "How Private are DP-SGD Implementations?"). `dp_event` therefore
  returns the conservative valid event: each example is in at most one batch per epoch, so
  each epoch started is one Gaussian release of sensitivity C with NO amplification,
  `SelfComposedDpEvent(GaussianDpEvent(sigma), num_epochs_started)`. This holds under
  zero-out adjacency (one example replaced by a null example with zero gradient, N fixed:
  the permutation does not depend on the data), reported as REPLACE_SPECIAL; dp_accounting
  treats that like add/remove-one for Poisson sampling, so the epsilons are comparable.
  (Under replace-one the sensitivity would be 2C, i.e. GaussianDpEvent(sigma / 2).)
  Expect a much larger epsilon than Poisson sampling at q = B / N.

  Example:
    >>> sampler = ShufflingSampler(1000, 100, seed=0)
    >>> sampler.steps_per_epoch
    10
    >>> sampler.dp_event(1.0, steps=25)  # 3 epochs started
  """

  def __init__(self, num_examples: int, batch_size: int, *, seed: int):
    """As `FixedSizeSampler`; epoch e's permutation is a function of (seed, e), and its
    last N mod B examples are dropped."""
    super().__init__(num_examples, batch_size, seed=seed)
    self._cached_epoch: int | None = None
    self._cached_permutation: np.ndarray | None = None

  @property
  def steps_per_epoch(self) -> int:
    return self._num_examples // self._batch_size

  @property
  def accountant_neighboring_relation(self) -> NeighboringRelation:
    return NeighboringRelation.REPLACE_SPECIAL

  def _permutation(self, epoch: int) -> np.ndarray:
    # One O(N) permutation per epoch, not per step.
    if self._cached_epoch != epoch:
      self._cached_permutation = self._rng(epoch).permutation(self._num_examples)
      self._cached_epoch = epoch
    return self._cached_permutation

  def indices(self, step: int) -> np.ndarray:
    """Indices of step `step`'s batch: B distinct examples, disjoint within an epoch; [B]."""
    step = _checks.check_int("step", step, 0)
    epoch, position = divmod(step, self.steps_per_epoch)
    return self._permutation(epoch)[position * self._batch_size:(position + 1) * self._batch_size]

  def num_epochs_started(self, steps: int) -> int:
    """Epochs with at least one of the first `steps` steps: ceil(steps / steps_per_epoch)."""
    return -(-_checks.check_count(steps, "steps") // self.steps_per_epoch)

  def dp_event(self, noise_multiplier: float, steps: int) -> dp_accounting.DpEvent:
    """One unamplified Gaussian release per epoch started (conservative; see the class doc).

    NoOpDpEvent when `steps` is 0.
    """
    sigma = _checks.check_noise_multiplier(noise_multiplier)
    return _self_composed(dp_accounting.GaussianDpEvent(sigma), self.num_epochs_started(steps))
