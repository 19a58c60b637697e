"""Differential privacy primitives: per-example and per-group clipping, Gaussian noise,
DP-SGD, PATE aggregators and DP batch samplers. Privacy accounting lives in `libs.accounting`.

Example:
  >>> grads = clipped_grad(loss_fn, l2_clip_norm=1.0)(params, *batch, example_weights=mask)
  >>> speaker_grads = clipped_group_sum(per_example_loss, params, batch, speaker_ids, 8, 1.0, mask)
  >>> opt = dpsgd(0.1, l2_clip_norm=1.0, noise_multiplier=1.1, expected_batch_size=256, key=key)
  >>> labels, answered = confident_gnmax(votes, key, threshold=150, sigma_threshold=100, sigma=40)
"""

from libs.dp.clipping import clip_factor, clipped_grad, tree_l2_norm
from libs.dp.ghost import ghost_clipped_grad
from libs.dp.grouped import clip_group_sums, clipped_group_sum, group_grad_sums
from libs.dp.noise import GaussianNoiseState, add_gaussian_noise, dpsgd
from libs.dp.pate_aggregators import (NOT_ANSWERED, check_probabilities, check_votes, confident_gnmax, gnmax,
                                      lnmax, noisy_average, vote_histogram)
from libs.dp.randomness import DpRandomness
from libs.dp.sampling import FixedSizeSampler, PoissonSampler, ShufflingSampler, physical_batches

__all__ = [
    "NOT_ANSWERED", "DpRandomness", "FixedSizeSampler", "GaussianNoiseState", "PoissonSampler", "ShufflingSampler",
    "add_gaussian_noise", "check_probabilities", "check_votes", "clip_factor", "clip_group_sums", "clipped_grad",
    "clipped_group_sum", "confident_gnmax", "dpsgd", "ghost_clipped_grad", "gnmax", "group_grad_sums", "lnmax",
    "noisy_average", "physical_batches", "tree_l2_norm", "vote_histogram",
]
