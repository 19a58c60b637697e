"""DP-SGD batch samplers: sampling statistics, determinism, physical batching, DpEvents."""

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from libs import accounting
from libs.dp import sampling


def _epsilon(sampler, noise_multiplier, steps, delta=1e-5):
  accountant = dp_accounting.rdp.RdpAccountant(
      neighboring_relation=sampler.accountant_neighboring_relation)
  event = sampler.dp_event(noise_multiplier, steps)
  assert accountant.supports(event)
  return accountant.compose(event).get_epsilon(delta)


def test_poisson_inclusion_frequency_is_q():
  n, q, steps = 200, 0.1, 2000
  sampler = sampling.PoissonSampler(n, q, seed=3)
  included = np.zeros((steps, n), bool)
  for step in range(steps):
    included[step, sampler.indices(step)] = True
  assert stats.binomtest(int(included.sum()), steps * n, q).pvalue > 1e-3
  assert stats.binomtest(int(included.sum()), steps * n, 1.1 * q).pvalue < 1e-6
  # Each example on its own, and independence of two examples (co-inclusion ~ q^2).
  z = (included.sum(0) - steps * q) / np.sqrt(steps * q * (1 - q))
  assert np.abs(z).max() < 5
  assert stats.binomtest(int((included[:, 0] & included[:, 1]).sum()), steps, q * q).pvalue > 1e-3
  # Batch sizes are Binomial(n, q), not fixed.
  sizes = included.sum(1)
  assert sizes.std() > 1 and abs(sizes.mean() - sampler.expected_batch_size) < 0.5


def test_poisson_deterministic_per_seed_and_step():
  a = sampling.PoissonSampler(1000, 0.05, seed=7)
  b = sampling.PoissonSampler(1000, 0.05, seed=7)
  first = a.indices(5)
  a.indices(3)
  np.testing.assert_array_equal(first, a.indices(5))  # Independent of call order.
  np.testing.assert_array_equal(first, b.indices(5))  # A resumed run draws the same batch.
  assert not np.array_equal(first, a.indices(6))
  assert not np.array_equal(first, sampling.PoissonSampler(1000, 0.05, seed=8).indices(5))
  assert np.all(np.diff(first) > 0) and first.min() >= 0 and first.max() < 1000


def test_empty_poisson_batch_gives_one_all_padding_physical_batch():
  sampler = sampling.PoissonSampler(100, 1e-9, seed=0)
  indices = sampler.indices(0)
  assert indices.size == 0
  batches = sampler.physical_batches(indices, 8)
  assert len(batches) == 1
  idx, mask = batches[0]
  np.testing.assert_array_equal(idx, np.full(8, -1))
  np.testing.assert_array_equal(mask, np.zeros(8))
  assert idx.dtype == np.int32 and mask.dtype == np.float32


@pytest.mark.parametrize("num_indices", [1, 7, 8, 9, 30])
def test_physical_batches_cover_logical_batch(num_indices):
  indices = np.sort(np.random.default_rng(num_indices).choice(1000, num_indices, replace=False))
  batches = sampling.physical_batches(indices, 8)
  assert len(batches) == -(-num_indices // 8)
  assert all(idx.shape == (8,) and mask.shape == (8,) for idx, mask in batches)
  idx = np.concatenate([b[0] for b in batches])
  mask = np.concatenate([b[1] for b in batches])
  np.testing.assert_array_equal(idx[mask > 0], indices)
  assert np.all(idx[mask == 0] == -1) and np.all(mask[:num_indices] == 1)


def test_physical_batches_feed_a_jitted_masked_sum():
  data = jnp.arange(100.0) ** 2
  indices = sampling.PoissonSampler(100, 0.3, seed=1).indices(0)

  @jax.jit
  def step(total, idx, mask):
    return total + jnp.sum(data[jnp.maximum(idx, 0)] * mask)

  total = jnp.float32(0)
  for idx, mask in sampling.physical_batches(indices, 16):
    total = step(total, idx, mask)
  np.testing.assert_allclose(total, np.sum(np.asarray(data)[indices]), rtol=1e-6)


def test_fixed_size_exact_distinct_and_uniform():
  n, b, steps = 50, 10, 2000
  sampler = sampling.FixedSizeSampler(n, b, seed=0)
  counts = np.zeros(n, int)
  for step in range(steps):
    idx = sampler.indices(step)
    assert idx.shape == (b,) and len(np.unique(idx)) == b
    assert idx.min() >= 0 and idx.max() < n
    counts[idx] += 1
  assert stats.chisquare(counts).pvalue > 1e-3  # Uniform inclusion, rate b / n.
  np.testing.assert_array_equal(sampler.indices(4), sampling.FixedSizeSampler(n, b, seed=0).indices(4))
  assert not np.array_equal(sampler.indices(4), sampler.indices(5))


@pytest.mark.parametrize("n, b", [(100, 10), (103, 10)])
def test_shuffling_covers_each_example_once_per_epoch(n, b):
  sampler = sampling.ShufflingSampler(n, b, seed=0)
  spe = sampler.steps_per_epoch
  assert spe == n // b
  epochs = [np.concatenate([sampler.indices(e * spe + s) for s in range(spe)]) for e in range(3)]
  for epoch in epochs:
    assert len(epoch) == spe * b and len(np.unique(epoch)) == len(epoch)  # At most once.
    if n % b == 0:
      np.testing.assert_array_equal(np.sort(epoch), np.arange(n))  # Exactly once.
  assert not np.array_equal(epochs[0], epochs[1])
  # Deterministic and independent of call order (the permutation cache).
  fresh = sampling.ShufflingSampler(n, b, seed=0)
  np.testing.assert_array_equal(fresh.indices(2 * spe + 1), sampler.indices(2 * spe + 1))
  np.testing.assert_array_equal(fresh.indices(1), epochs[0][b:2 * b])


def test_dp_event_types():
  sigma = 1.1
  event = sampling.PoissonSampler(1000, 0.01, seed=0).dp_event(sigma, 50)
  assert event == dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(sigma)), 50)

  event = sampling.FixedSizeSampler(1000, 10, seed=0).dp_event(sigma, 50)
  assert isinstance(event, dp_accounting.SelfComposedDpEvent) and event.count == 50
  inner = event.event
  assert isinstance(inner, dp_accounting.SampledWithoutReplacementDpEvent)
  assert (inner.source_dataset_size, inner.sample_size) == (1000, 10)
  # Replace-one doubles the sensitivity of the clipped-gradient sum.
  assert inner.event == dp_accounting.GaussianDpEvent(sigma / 2)

  shuffling = sampling.ShufflingSampler(1000, 100, seed=0)
  assert shuffling.dp_event(sigma, 25) == dp_accounting.SelfComposedDpEvent(
      dp_accounting.GaussianDpEvent(sigma), 3)  # 25 steps at 10 per epoch: 3 epochs started.
  assert shuffling.dp_event(sigma, 30).count == 3 and shuffling.dp_event(sigma, 31).count == 4
  # Nothing released yet: a NoOp (dp_accounting rejects self-composition 0 times).
  samplers = (shuffling, sampling.PoissonSampler(10, 0.5, seed=0), sampling.FixedSizeSampler(10, 2, seed=0))
  for sampler in samplers:
    assert sampler.dp_event(sigma, 0) == dp_accounting.NoOpDpEvent()


def test_epsilons_finite_and_ordered():
  n, b, sigma, steps = 60_000, 256, 1.1, 2000
  poisson = _epsilon(sampling.PoissonSampler(n, b / n, seed=0), sigma, steps)
  fixed = _epsilon(sampling.FixedSizeSampler(n, b, seed=0), sigma, steps)
  shuffled = _epsilon(sampling.ShufflingSampler(n, b, seed=0), sigma, steps)
  assert all(np.isfinite([poisson, fixed, shuffled]))
  assert 0 < poisson < 5
  assert shuffled > 5 * poisson  # No amplification for shuffling.
  assert fixed > poisson  # Replace-one is the stronger relation.
  assert _epsilon(sampling.PoissonSampler(n, b / n, seed=0), sigma, 2 * steps) > poisson
  assert _epsilon(sampling.PoissonSampler(n, b / n, seed=0), 2 * sigma, steps) < poisson
  assert _epsilon(sampling.PoissonSampler(n, b / n, seed=0), sigma, 0) == 0


@pytest.mark.parametrize("make, match", [
    (lambda: sampling.PoissonSampler(0, 0.1, seed=0), r"^num_examples must be"),
    (lambda: sampling.PoissonSampler(10, 0.0, seed=0), r"^sampling_probability must be in \(0, 1\]"),
    (lambda: sampling.PoissonSampler(10, 1.5, seed=0), r"^sampling_probability must be"),
    (lambda: sampling.PoissonSampler(10, 0.5, seed=-1), r"^seed must be"),
    (lambda: sampling.PoissonSampler(10, 0.5, seed=0).indices(-1), r"^step must be"),
    (lambda: sampling.PoissonSampler(10, 0.5, seed=0).dp_event(-1.0, 5), r"^noise_multiplier must be"),
    (lambda: sampling.FixedSizeSampler(10, 2, seed=0).dp_event(np.nan, 5), r"^noise_multiplier must be"),
    (lambda: sampling.ShufflingSampler(10, 2, seed=0).dp_event(True, 5), r"^noise_multiplier must be"),
    (lambda: sampling.FixedSizeSampler(10, 2, seed=0).dp_event(1.0, 2.5), r"^steps must be"),
    (lambda: sampling.PoissonSampler(10, 0.5, seed=0).dp_event(1.0, -1), r"^steps must be"),
    (lambda: sampling.FixedSizeSampler(10, 0, seed=0), r"^batch_size must be"),
    (lambda: sampling.FixedSizeSampler(10, 11, seed=0), r"^batch_size must be"),
    (lambda: sampling.ShufflingSampler(10, 11, seed=0), r"^batch_size must be"),
    (lambda: sampling.ShufflingSampler(0, 1, seed=0), r"^num_examples must be"),
    (lambda: sampling.physical_batches(np.arange(3), 0), r"^physical_batch_size must be"),
    (lambda: sampling.physical_batches(np.array([[1]]), 4), r"^indices must be 1-D"),
    (lambda: sampling.physical_batches(np.array([-2]), 4), r"^indices must lie"),
])
def test_bad_arguments_raise_naming_them(make, match):
  with pytest.raises(ValueError, match=match):
    make()


@pytest.mark.parametrize("sampler", [
    sampling.PoissonSampler(1000, 0.01, seed=0),
    sampling.FixedSizeSampler(1000, 10, seed=0),
    sampling.ShufflingSampler(1000, 100, seed=0),
], ids=["poisson", "fixed_size", "shuffling"])
def test_noise_multiplier_zero_is_a_non_private_release_with_epsilon_inf(sampler):
  # The shared rule (libs.accounting._checks): an explicit 0 is accepted and accounted as inf,
  # also for the without-replacement event that dp_accounting itself cannot evaluate at 0.
  event = sampler.dp_event(0.0, 20)
  eps = accounting.epsilon_of_event(event, 1e-5,
                                    neighboring_relation=sampler.accountant_neighboring_relation)
  assert eps == float("inf")
  assert sampler.dp_event(0.0, 0) == dp_accounting.NoOpDpEvent()  # nothing released yet


def test_step_event_builders_match_the_samplers():
  poisson = sampling.PoissonSampler(1000, 0.01, seed=0).dp_event(1.1, 7)
  assert poisson == dp_accounting.SelfComposedDpEvent(sampling.poisson_step_event(0.01, 1.1), 7)
  fixed = sampling.FixedSizeSampler(1000, 10, seed=0).dp_event(1.1, 7)
  assert fixed == dp_accounting.SelfComposedDpEvent(sampling.fixed_size_step_event(1000, 10, 1.1), 7)
  # Integral float step counts are accepted, as by libs.accounting (epochs * N / B in floats).
  assert sampling.PoissonSampler(1000, 0.01, seed=0).dp_event(1.1, 7.0).count == 7
