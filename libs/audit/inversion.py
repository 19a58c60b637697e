"""Model inversion: reconstruct a model's input from its output, and measure what it reveals.

Against a speech recognizer (model inversion in the sense of Fredrikson et al. 2015, applied
to a transducer): given the transcript y, look for log-mel features x that maximise

    J(x) = log p(y | z) - tv_weight * TV(z) - l2_weight * ||z||^2 / 2,   z = transform(x)

from a data-independent start x0 (a constant, or a public corpus mean: never the utterance
itself), by Adam on -J: one jitted `lax.scan` over the steps, vmapped over utterances, each
with its own length, transcript and start (`make_inverter`). The model enters only as
`log_prob_fn(params, z [T, F], aux) -> scalar`, so any differentiable model fits. `transform`
(identity by default) maps the optimized variable to the model's input space, e.g. the
per-utterance normalization a speech pipeline applies: the priors then act on what the model
sees (a prior on x itself could be satisfied by shrinking x, which normalization undoes).

* `total_variation`: anisotropic TV, sum over neighbouring valid frames and neighbouring bins
  of |x_a - x_b|, smoothed as sqrt(d^2 + eps^2) - eps (exact TV at eps = 0; eps > 0 gives a
  gradient at d = 0). The prior that keeps a reconstruction smooth, as spectrograms are.
* `mel_cepstra` / `mel_cepstral_distortion`: cepstra c = orthonormal DCT-II of each log-mel
  frame over the mel axis (scipy's `dct(norm="ortho")`); per frame
  MCD = (10 / ln 10) sqrt(2 sum_{d=1..D} (c_d - c'_d)^2) (Kubichek 1993), c0 (the frame's
  level) excluded, averaged over frames paired by index: alignment-free, for inputs of equal
  length (a reconstruction has its original's length). In dB for natural-log spectra.
* `cosine_similarity` / `identification_metrics`: a reconstruction identifies its speaker when
  its speaker embedding is closer (cosine) to the true speaker's enrolled embedding than to the
  other speakers': mean similarity to the true speaker and to the others, top-1 rate, mean
  rank and the rank score (the fraction of other speakers ranked below the true one: 0.5 is
  chance, 1 is perfect; ties count half).

Metrics run on the host in float64 NumPy.

Example:
  >>> def log_prob(params, x, aux):                      # one utterance [T, F]
  ...   return -nll(params, x[None], aux["length"][None], aux["labels"][None], aux["num_labels"][None])[0]
  >>> invert = make_inverter(log_prob, InversionConfig(steps=300, learning_rate=0.05, tv_weight=0.1))
  >>> result = invert(params, x0, mask, aux)               # x0 [B, T, F], mask [B, T]
  >>> mel_cepstral_distortion(result.x, originals, lengths)
  >>> identification_metrics(cosine_similarity(query_embeddings, speaker_embeddings), true_speaker)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

MCD_SCALE = 10.0 / math.log(10.0) * math.sqrt(2.0)  # (10 / ln 10) sqrt(2): the dB factor of MCD.


# -- the objective and the optimisation ---------------------------------------------------------


def total_variation(x: jax.Array, mask: jax.Array | None = None, *, eps: float = 0.0) -> jax.Array:
  """Anisotropic total variation of one [T, F] input over time and frequency.

  Sum over pairs of neighbours, (t, f)-(t+1, f) with both frames valid and (t, f)-(t, f+1) on
  valid frames, of sqrt(d^2 + eps^2) - eps, d their difference (|d| at eps = 0).

  Args:
    x: [T, F] features.
    mask: optional [T] bool, the valid frames (padding contributes nothing).
    eps: smoothing (>= 0); eps > 0 makes the gradient defined at d = 0.

  Example:
    >>> total_variation(jnp.array([[0.0, 1.0], [2.0, 4.0]]))   # |2-0| + |4-1| + |1-0| + |4-2|
    Array(8., dtype=float32)
  """
  if x.ndim != 2:
    raise ValueError(f"total_variation expects one [frames, bins] input, got shape {x.shape}")
  if eps < 0:
    raise ValueError(f"eps must be >= 0, got {eps}")
  valid = jnp.ones(x.shape[0], bool) if mask is None else jnp.asarray(mask, bool)
  if valid.shape != x.shape[:1]:
    raise ValueError(f"mask must have shape ({x.shape[0]},), got {valid.shape}")

  def penalty(d):
    return jnp.abs(d) if eps == 0 else jnp.sqrt(jnp.square(d) + eps * eps) - eps

  both = (valid[1:] & valid[:-1])[:, None]
  # `where` before the penalty: padding may hold anything, NaN included.
  time = jnp.sum(jnp.where(both, penalty(jnp.where(both, x[1:] - x[:-1], 0.0)), 0.0))
  freq = jnp.sum(jnp.where(valid[:, None], penalty(jnp.where(valid[:, None], x[:, 1:] - x[:, :-1], 0.0)), 0.0))
  return time + freq


@dataclasses.dataclass(frozen=True)
class InversionConfig:
  """The inversion's optimisation.

  Attributes:
    steps: Adam steps.
    learning_rate: Adam's step size (constant).
    tv_weight: weight of the total-variation prior.
    l2_weight: weight of ||x||^2 / 2 (keeps the input at the scale the model was trained on).
    tv_eps: smoothing of the TV penalty (see `total_variation`).
  """
  steps: int = 300
  learning_rate: float = 0.05
  tv_weight: float = 0.0
  l2_weight: float = 0.0
  tv_eps: float = 1e-3

  def __post_init__(self):
    if int(self.steps) != self.steps or self.steps < 1:
      raise ValueError(f"InversionConfig.steps must be an integer >= 1, got {self.steps}")
    if not self.learning_rate > 0:
      raise ValueError(f"InversionConfig.learning_rate must be > 0, got {self.learning_rate}")
    for name in ("tv_weight", "l2_weight", "tv_eps"):
      if not getattr(self, name) >= 0:
        raise ValueError(f"InversionConfig.{name} must be >= 0, got {getattr(self, name)}")


Transform = Callable[[jax.Array, jax.Array], jax.Array]  # (x [T, F], mask [T]) -> z [T, F]


def _model_input(x: jax.Array, mask: jax.Array, transform: Transform | None) -> jax.Array:
  m = jnp.asarray(mask, bool)[:, None]
  x = jnp.where(m, x, 0.0)
  return x if transform is None else jnp.where(m, transform(x, jnp.asarray(mask, bool)), 0.0)


def objective(log_prob_fn: Callable[[Any, jax.Array, Any], jax.Array], params, x: jax.Array, mask: jax.Array,
              aux, config: InversionConfig,
              transform: Transform | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """J(x) of one [T, F] input and its parts: (J, {"log_prob", "tv", "l2"}).

  Padding frames (mask False) are zeroed before and after `transform` and left out of the
  priors, so they never move J.

  Example:
    >>> value, parts = objective(log_prob, params, x, mask, aux, InversionConfig(tv_weight=0.1))
  """
  z = _model_input(x, mask, transform)
  log_prob = log_prob_fn(params, z, aux)
  tv = total_variation(z, mask, eps=config.tv_eps)
  l2 = 0.5 * jnp.sum(jnp.square(z))
  return log_prob - config.tv_weight * tv - config.l2_weight * l2, {"log_prob": log_prob, "tv": tv, "l2": l2}


@dataclasses.dataclass(frozen=True)
class InversionResult:
  """What `make_inverter`'s function returns (arrays, leading axis: utterances).

  Attributes:
    x: [B, T, F] the reconstructions, transform(x) (padding frames zero).
    objective, log_prob, tv: [steps + 1, B] each quantity at the start and after every step.
  """
  x: jax.Array
  objective: jax.Array
  log_prob: jax.Array
  tv: jax.Array


jax.tree_util.register_dataclass(InversionResult, data_fields=["x", "objective", "log_prob", "tv"], meta_fields=[])


def make_inverter(log_prob_fn: Callable[[Any, jax.Array, Any], jax.Array], config: InversionConfig,
                  transform: Transform | None = None) -> Callable[..., InversionResult]:
  """A jitted `(params, x0 [B, T, F], mask [B, T], aux) -> InversionResult`.

  Each utterance is optimised on its own (vmap over the leading axis of `x0`, `mask` and every
  leaf of `aux`; `params` shared): Adam on -J for `config.steps` steps in one `lax.scan`.

  Args:
    log_prob_fn: (params, z [T, F], aux) -> log p(output | z), scalar, differentiable in z;
      `aux` holds what is specific to the utterance (its transcript, its length).
    config: the optimisation and the priors' weights.
    transform: (x [T, F], valid frames [T]) -> z, the model's input (None: z = x).

  Example:
    >>> invert = make_inverter(log_prob, InversionConfig(steps=200))
    >>> result = invert(params, x0, mask, {"labels": labels, "num_labels": num_labels, "length": lengths})
    >>> result.log_prob[-1] > result.log_prob[0]                    # per utterance
  """
  opt = optax.adam(config.learning_rate)
  value_and_grad = jax.value_and_grad(functools.partial(objective, log_prob_fn, config=config, transform=transform),
                                      argnums=1, has_aux=True)

  def one(params, x0, mask, aux):
    def step(carry, _):
      x, state = carry
      (value, parts), grad = value_and_grad(params, x, mask, aux)
      updates, state = opt.update(jax.tree.map(jnp.negative, grad), state, x)  # Ascent on J.
      return (optax.apply_updates(x, updates), state), (value, parts["log_prob"], parts["tv"])

    (x, _), trace = jax.lax.scan(step, (x0, opt.init(x0)), None, length=config.steps)
    final, parts = objective(log_prob_fn, params, x, mask, aux, config, transform)
    value, log_prob, tv = (jnp.concatenate([t, last[None]]) for t, last in
                           zip(trace, (final, parts["log_prob"], parts["tv"])))
    return InversionResult(_model_input(x, mask, transform), value, log_prob, tv)

  batched = jax.vmap(one, in_axes=(None, 0, 0, 0))

  def invert(params, x0, mask, aux) -> InversionResult:
    x0 = jnp.asarray(x0)
    if x0.ndim != 3 or jnp.shape(mask) != x0.shape[:2]:
      raise ValueError(f"x0 must be [utterances, frames, bins] and mask [utterances, frames], got {x0.shape} "
                       f"and {jnp.shape(mask)}")
    out = batched(params, x0, mask, aux)
    # Trajectories as [steps + 1, B] (time first, like a training curve).
    return InversionResult(out.x, out.objective.T, out.log_prob.T, out.tv.T)

  return jax.jit(invert)


# -- distance to the original --------------------------------------------------------------------


def dct_matrix(n: int) -> np.ndarray:
  """[n, n] float64 orthonormal DCT-II: row k is sqrt((1 + [k > 0]) / n) cos(pi k (2m + 1) / (2n))."""
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}")
  k = np.arange(n)[:, None]
  m = np.arange(n)[None]
  scale = np.where(k == 0, math.sqrt(1.0 / n), math.sqrt(2.0 / n))
  return scale * np.cos(math.pi * k * (2 * m + 1) / (2 * n))


def mel_cepstra(log_mel, num_coefficients: int | None = None) -> np.ndarray:
  """Cepstra c_0..c_{D} of log-mel frames [..., F]: the orthonormal DCT-II over the mel axis.

  Returns [..., D + 1] (c0 first); D = F - 1 when `num_coefficients` is None.
  """
  x = np.asarray(log_mel, np.float64)
  n = x.shape[-1]
  d = n - 1 if num_coefficients is None else int(num_coefficients)
  if not 1 <= d <= n - 1:
    raise ValueError(f"num_coefficients must be in [1, {n - 1}] for {n} mel bins, got {num_coefficients}")
  return x @ dct_matrix(n)[: d + 1].T


def mel_cepstral_distortion(reconstructed, original, lengths=None, *,
                            num_coefficients: int | None = None) -> np.ndarray:
  """Mean MCD in dB over the valid frames of each utterance, frames paired by index.

  Args:
    reconstructed, original: [B, T, F] (or one [T, F]) natural-log mel spectra of equal length.
    lengths: optional [B] valid frames per utterance (default: all T).
    num_coefficients: D, the cepstra c_1..c_D compared (c0, the level, is excluded).

  Returns:
    [B] float64 MCD (a scalar for a single [T, F] pair).

  Example:
    >>> mel_cepstral_distortion(result.x, originals, lengths, num_coefficients=24)
  """
  a = np.asarray(reconstructed, np.float64)
  b = np.asarray(original, np.float64)
  if a.shape != b.shape or a.ndim not in (2, 3):
    raise ValueError(f"need two [B, T, F] (or [T, F]) arrays of one shape, got {a.shape} and {b.shape}")
  single = a.ndim == 2
  a, b = (a[None], b[None]) if single else (a, b)
  lens = np.full(a.shape[0], a.shape[1]) if lengths is None else np.asarray(lengths)
  if lens.shape != a.shape[:1] or (lens < 1).any() or (lens > a.shape[1]).any():
    raise ValueError(f"lengths must be [B] in [1, {a.shape[1]}], got {lengths}")
  diff = mel_cepstra(a, num_coefficients)[..., 1:] - mel_cepstra(b, num_coefficients)[..., 1:]
  per_frame = MCD_SCALE * np.sqrt(np.sum(np.square(diff), axis=-1))  # [B, T]
  valid = np.arange(a.shape[1])[None] < lens[:, None]
  out = np.sum(np.where(valid, per_frame, 0.0), axis=1) / lens
  return out[0] if single else out


# -- speaker identification ----------------------------------------------------------------------


def cosine_similarity(a, b) -> np.ndarray:
  """[N, M] float64 cosine similarity of the rows of a [N, E] and b [M, E]; a zero row scores 0."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f"need [N, E] and [M, E] with the same E, got {a.shape} and {b.shape}")
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  return unit(a) @ unit(b).T


def identification_metrics(similarity, true_index) -> dict[str, float]:
  """How well each query (row) picks its own speaker (column `true_index[row]`) among all columns.

  Args:
    similarity: [N, S] scores of N queries against S >= 2 candidate speakers (higher: closer).
    true_index: [N] int, each query's speaker's column.

  Returns:
    {"similarity_true": mean score of the true speaker, "similarity_other": mean score of the
    others, "top1": fraction of queries whose true speaker scores strictly highest (a tie is a
    miss), "mean_rank": 1 + (others above) + (others tied) / 2, averaged, "rank_score": the
    fraction of other speakers scored below the true one, ties counting half (0.5 chance, 1
    perfect), "chance_top1": 1 / S, "queries", "candidates"}.

  Example:
    >>> identification_metrics(cosine_similarity(reconstruction_emb, speaker_emb), speaker_column)
  """
  sim = np.asarray(similarity, np.float64)
  idx = np.asarray(true_index)
  if sim.ndim != 2 or sim.shape[1] < 2 or sim.shape[0] < 1:
    raise ValueError(f"similarity must be [queries >= 1, candidates >= 2], got {sim.shape}")
  if idx.shape != sim.shape[:1] or not np.issubdtype(idx.dtype, np.integer) or (idx < 0).any() or \
      (idx >= sim.shape[1]).any():
    raise ValueError(f"true_index must be [{sim.shape[0]}] ints in [0, {sim.shape[1]}), got {true_index}")
  if not np.isfinite(sim).all():
    raise ValueError("similarity must be finite")
  rows = np.arange(sim.shape[0])
  true = sim[rows, idx]
  other = np.ones(sim.shape, bool)
  other[rows, idx] = False
  above = np.sum(other & (sim > true[:, None]), axis=1)
  tied = np.sum(other & (sim == true[:, None]), axis=1)
  below = sim.shape[1] - 1 - above - tied
  return {"similarity_true": float(true.mean()), "similarity_other": float(sim[other].mean()),
          "top1": float(np.mean((above == 0) & (tied == 0))), "mean_rank": float(np.mean(1 + above + tied / 2)),
          "rank_score": float(np.mean((below + tied / 2) / (sim.shape[1] - 1))), "chance_top1": 1.0 / sim.shape[1],
          "queries": int(sim.shape[0]), "candidates": int(sim.shape[1])}
