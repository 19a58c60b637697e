"""Speaker embeddings, a pairwise metric-learning loss and adversarial reweighting (ARW).

`SpeakerEncoder` is a small x-vector-like model: dilated 1-D convolutions over time, masked
statistics pooling (mean and standard deviation of the valid frames), then a Dense layer to the
embedding. Like `libs.models.encoders` it uses LayerNorm only (no batch statistics), so
per-example gradients stay independent across the batch, and frames past `lengths` never
change the output.

`pairwise_loss` trains it on batches of P speakers x M utterances: binary cross-entropy on
`logit = scale * cos(e_i, e_j) + bias` over every pair i < j (target: same speaker), positives
and negatives averaged separately, then averaged, so that the (M-1)/(PM-1) share of positive
pairs is not swamped by the negatives.

Adversarial reweighting for speaker verification fairness (Jin et al. 2022) follows ARL
(Lahoti et al. 2020): an `Adversary` scores each example from its (stop-gradient) embedding
and its cluster (e.g. an unsupervised cohort); `example_weights` turns the scores into
`w = 1 + n * softmax(scores)` over the n valid examples, and a pair's weight is
`w_i + w_j` (`pair_weights`). The adversary MAXIMIZES the weighted pairwise loss (it learns
to up-weight the examples the extractor handles worst); the extractor MINIMIZES it with the
adversary's weights held fixed. `arw_losses` returns both objectives, each with the right
stop-gradients, as two scalars to MINIMIZE:

  * alternating updates (Jin et al.): take `jax.grad` of `adversary_loss` w.r.t. the
    adversary's params and apply it, then `jax.grad` of `extractor_loss` w.r.t. the encoder
    and loss params (in either order, each step with its own optimizer);
  * simultaneous gradient descent-ascent: differentiate `extractor_loss + adversary_loss`
    once w.r.t. one pytree holding all three parameter sets; the stop-gradients route each
    term to its own parameters only (use `optax.multi_transform` for separate learning rates).

Example:
  >>> encoder = SpeakerEncoder(SpeakerConfig())
  >>> params = encoder.init(key, feats, lengths, train=False)["params"]
  >>> emb = encoder.apply({"params": params}, feats, lengths, train=False)   # [B, 64]
  >>> loss_params = init_loss_params()
  >>> loss = pairwise_loss(emb, speaker_ids, *scale_and_bias(loss_params))
  >>> adversary = Adversary(num_clusters=8)
  >>> ext_loss, adv_loss, aux = arw_losses(emb, speaker_ids, cluster_ids, loss_params,
  ...                                      adversary, adv_params)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_NORM_EPS = 1e-12  # Floor on squared norms (cosine) and on sums of weights.
_VAR_EPS = 1e-5  # Added to the pooled variance before sqrt: finite value and gradient at 0.


@dataclasses.dataclass(frozen=True)
class SpeakerConfig:
  """Sizes of a `SpeakerEncoder`.

  Attributes:
    channels: width of every convolution layer.
    embed_dim: size of the speaker embedding.
    layers: (kernel size, dilation) of each 1-D convolution over time, x-vector style.
    dropout: dropout rate after each convolution layer (train only; needs a "dropout" rng).
  """
  channels: int = 128
  embed_dim: int = 64
  layers: tuple[tuple[int, int], ...] = ((5, 1), (3, 2), (3, 3), (1, 1))
  dropout: float = 0.0

  def __post_init__(self):
    if self.channels < 1 or self.embed_dim < 1:
      raise ValueError(f"SpeakerConfig: channels and embed_dim must be >= 1, got channels={self.channels}, "
                       f"embed_dim={self.embed_dim}")
    if not self.layers:
      raise ValueError("SpeakerConfig.layers must name at least one (kernel size, dilation) layer")
    for k, (kernel, dilation) in enumerate(self.layers):
      if kernel < 1 or dilation < 1:
        raise ValueError(f"SpeakerConfig.layers[{k}] = ({kernel}, {dilation}): kernel size and dilation "
                         "must be >= 1")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"SpeakerConfig.dropout must lie in [0, 1), got {self.dropout}")


def frame_mask(num_frames: int, lengths: jax.Array) -> jax.Array:
  """[B, T] bool: True on the first `lengths[b]` frames of each row."""
  return jnp.arange(num_frames)[None] < jnp.asarray(lengths)[:, None]


def stats_pool(x: jax.Array, lengths: jax.Array) -> jax.Array:
  """Mean and standard deviation over the valid frames: [B, T, C] -> [B, 2C].

  Frames past `lengths` are ignored (whatever they hold, NaN included). The variance is
  computed in two passes (never negative) and `sqrt(var + 1e-5)` keeps value and gradient
  finite for constant or length-1 inputs; a row with length 0 pools to zeros (std
  `sqrt(1e-5)`).

  Example:
    >>> stats_pool(jnp.ones((2, 5, 3)), jnp.array([5, 1])).shape
    (2, 6)
  """
  mask = frame_mask(x.shape[1], lengths)[..., None]
  count = jnp.maximum(jnp.sum(mask, axis=1), 1).astype(x.dtype)
  x = jnp.where(mask, x, 0.0)
  mean = jnp.sum(x, axis=1) / count
  var = jnp.sum(jnp.where(mask, jnp.square(x - mean[:, None]), 0.0), axis=1) / count
  return jnp.concatenate([mean, jnp.sqrt(var + _VAR_EPS)], axis=-1)


class SpeakerEncoder(nn.Module):
  """x-vector-like speaker embedding: dilated TDNN, masked statistics pooling, Dense.

  Pure params (LayerNorm, no batch statistics). Frames past `lengths` are zeroed before each
  convolution, so they never reach a valid frame through the "SAME" padding, and are left out
  of the pooling: the embedding does not depend on them nor on how far a batch is padded.

  Example:
    >>> enc = SpeakerEncoder(SpeakerConfig(channels=64, embed_dim=32))
    >>> params = enc.init(jax.random.key(0), feats, lengths, train=False)["params"]
    >>> enc.apply({"params": params}, feats, lengths, train=False).shape
    (B, 32)
  """
  config: SpeakerConfig = SpeakerConfig()

  @nn.compact
  def __call__(self, features: jax.Array, lengths: jax.Array, *, train: bool) -> jax.Array:
    """Embeds a padded batch.

    Args:
      features: [B, T, F] float log-mels.
      lengths: [B] int, the valid frame count of each row.
      train: enables dropout (then `apply` needs `rngs={"dropout": key}` when dropout > 0).

    Returns:
      [B, embed_dim] float32 embeddings (not normalized).
    """
    cfg = self.config
    if features.ndim != 3:
      raise ValueError(f"SpeakerEncoder: features must be [batch, time, freq], got shape {features.shape}")
    if jnp.shape(lengths) != features.shape[:1]:
      raise ValueError(f"SpeakerEncoder: lengths must have shape ({features.shape[0]},), got "
                       f"{jnp.shape(lengths)}")
    mask = frame_mask(features.shape[1], lengths)[..., None]
    x = jnp.where(mask, features.astype(jnp.float32), 0.0)
    for k, (kernel, dilation) in enumerate(cfg.layers):
      x = nn.Conv(cfg.channels, (kernel,), kernel_dilation=(dilation,), padding="SAME", name=f"tdnn_{k}")(x)
      x = nn.LayerNorm(name=f"ln_{k}")(nn.relu(x))
      x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
      x = jnp.where(mask, x, 0.0)
    return nn.Dense(cfg.embed_dim, name="embedding")(stats_pool(x, lengths))


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """x / ||x|| along `axis`; a zero vector stays zero (finite gradient too).

  Example:
    >>> l2_normalize(jnp.array([[3.0, 4.0], [0.0, 0.0]]))
    Array([[0.6, 0.8], [0., 0.]], dtype=float32)
  """
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, _NORM_EPS))


def cosine_scores(a: jax.Array, b: jax.Array) -> jax.Array:
  """Cosine similarity of every row of `a` [N, E] with every row of `b` [M, E]: [N, M].

  Zero vectors score 0 against everything (no NaN).

  Example:
    >>> cosine_scores(enrollment, test)   # [N, M] in [-1, 1]
  """
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f"cosine_scores expects [N, E] and [M, E] with the same E, got {a.shape} and {b.shape}")
  return l2_normalize(a.astype(jnp.float32)) @ l2_normalize(b.astype(jnp.float32)).T


@functools.lru_cache(maxsize=64)
def _pair_indices(batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  i, j = np.triu_indices(batch_size, k=1)
  i, j = i.astype(np.int32), j.astype(np.int32)
  i.flags.writeable = j.flags.writeable = False  # Shared by the cache.
  return i, j


def pair_indices(batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Every unordered pair i < j of a batch, row-major: (0,1), (0,2), ..., (1,2), ...

  Returns:
    Two static int32 NumPy arrays of length batch_size * (batch_size - 1) / 2 (read-only).

  Example:
    >>> pair_indices(3)
    (array([0, 0, 1], dtype=int32), array([1, 2, 2], dtype=int32))
  """
  if int(batch_size) != batch_size or batch_size < 0:
    raise ValueError(f"pair_indices: batch_size must be a non-negative int, got {batch_size}")
  return _pair_indices(int(batch_size))


def init_loss_params(scale: float = 10.0, bias: float = -5.0) -> dict[str, jax.Array]:
  """Learnable scale and bias of `pairwise_loss` as a pytree (GE2E's initial values).

  The scale is stored as its log so that it stays positive; read both with `scale_and_bias`.

  Example:
    >>> scale, bias = scale_and_bias(init_loss_params())   # (10.0, -5.0)
  """
  if not scale > 0:
    raise ValueError(f"init_loss_params: scale must be > 0, got {scale}")
  return {"log_scale": jnp.log(jnp.float32(scale)), "bias": jnp.float32(bias)}


def scale_and_bias(loss_params: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(scale > 0, bias) from the pytree of `init_loss_params`."""
  return jnp.exp(loss_params["log_scale"]), loss_params["bias"]


def pairwise_loss(embeddings: jax.Array, speaker_labels: jax.Array, scale: jax.Array | float,
                  bias: jax.Array | float, *, pair_weights: jax.Array | None = None,
                  valid: jax.Array | None = None) -> jax.Array:
  """Balanced binary cross-entropy over all pairs i < j of a batch.

  With `logit_ij = scale * cos(e_i, e_j) + bias`, `y_ij = [speaker_i == speaker_j]`,
  `l_ij = -log sigmoid(logit_ij)` for positives and `-log(1 - sigmoid(logit_ij))` for
  negatives, and pair weights `v_ij` (1 when None; pairs with a padded member get 0):

      L_pos = sum_{pos} v_ij l_ij / sum_{pos} v_ij,   L_neg likewise over the negatives,
      L = (L_pos + L_neg) / 2.

  Each class is a weighted MEAN, so uniform weights change nothing and a reweighting moves
  emphasis between pairs of a class without changing the balance of the two classes. If a
  batch has no valid positive (or no valid negative) pair, L is the other class's term alone;
  with no valid pair at all it is 0.

  Args:
    embeddings: [B, E] (not necessarily normalized).
    speaker_labels: [B] int speaker ids.
    scale: positive multiplier of the cosine (see `scale_and_bias`).
    bias: added to the scaled cosine.
    pair_weights: optional [B(B-1)/2] non-negative weights in `pair_indices(B)` order.
    valid: optional [B] bool (or 0/1) mask; False marks padding examples.

  Returns:
    The scalar loss (float32).

  Example:
    >>> pairwise_loss(emb, labels, *scale_and_bias(loss_params), valid=batch["weights"] > 0)
  """
  if embeddings.ndim != 2:
    raise ValueError(f"pairwise_loss: embeddings must be [batch, dim], got shape {embeddings.shape}")
  size = embeddings.shape[0]
  if jnp.shape(speaker_labels) != (size,):
    raise ValueError(f"pairwise_loss: speaker_labels must have shape ({size},), got {jnp.shape(speaker_labels)}")
  i, j = pair_indices(size)
  if pair_weights is not None and jnp.shape(pair_weights) != i.shape:
    raise ValueError(f"pairwise_loss: pair_weights must have shape ({i.size},) (pairs i < j of {size} "
                     f"examples, in pair_indices order), got {jnp.shape(pair_weights)}")
  if valid is not None and jnp.shape(valid) != (size,):
    raise ValueError(f"pairwise_loss: valid must have shape ({size},), got {jnp.shape(valid)}")
  if valid is not None:
    valid = jnp.asarray(valid).astype(bool)
    # Zero padded rows first: the [B, B] matmul's gradient would spread their NaN to every row.
    embeddings = jnp.where(valid[:, None], embeddings, 0.0)
  cos = cosine_scores(embeddings, embeddings)[i, j]
  logits = scale * cos + bias
  labels = jnp.asarray(speaker_labels)
  positive = labels[i] == labels[j]
  # -log sigmoid(z) = softplus(-z); -log(1 - sigmoid(z)) = softplus(z).
  losses = jnp.where(positive, jax.nn.softplus(-logits), jax.nn.softplus(logits))
  weights = jnp.ones_like(cos) if pair_weights is None else jnp.asarray(pair_weights, jnp.float32)
  if valid is not None:
    weights = jnp.where(valid[i] & valid[j], weights, 0.0)
  keep = weights > 0  # `where`, not a product: a padded pair may hold NaN.

  def class_mean(in_class):
    w = jnp.where(in_class & keep, weights, 0.0)
    total = jnp.sum(w)
    mean = jnp.sum(jnp.where(in_class & keep, w * losses, 0.0)) / jnp.maximum(total, _NORM_EPS)
    return mean, (total > 0).astype(jnp.float32)

  pos_mean, has_pos = class_mean(positive)
  neg_mean, has_neg = class_mean(~positive)
  return (pos_mean * has_pos + neg_mean * has_neg) / jnp.maximum(has_pos + has_neg, 1.0)


class Adversary(nn.Module):
  """ARW adversary: an MLP over [stop_gradient(embedding), one_hot(cluster)] -> score [B].

  The embedding is stop-gradient inside the module, so the adversary's objective never moves
  the extractor. Cluster ids outside [0, num_clusters) (e.g. -1, unknown) get an all-zero
  one-hot.

  Example:
    >>> adversary = Adversary(num_clusters=8)
    >>> adv_params = adversary.init(key, emb, cluster_ids)["params"]
    >>> scores = adversary.apply({"params": adv_params}, emb, cluster_ids)   # [B]
  """
  num_clusters: int
  hidden: Sequence[int] = (64,)

  @nn.compact
  def __call__(self, embeddings: jax.Array, cluster_ids: jax.Array) -> jax.Array:
    if self.num_clusters < 1:
      raise ValueError(f"Adversary.num_clusters must be >= 1, got {self.num_clusters}")
    if embeddings.ndim != 2 or jnp.shape(cluster_ids) != embeddings.shape[:1]:
      raise ValueError(f"Adversary expects embeddings [B, E] and cluster_ids [B], got {embeddings.shape} "
                       f"and {jnp.shape(cluster_ids)}")
    x = jnp.concatenate([jax.lax.stop_gradient(embeddings.astype(jnp.float32)),
                         jax.nn.one_hot(cluster_ids, self.num_clusters, dtype=jnp.float32)], axis=-1)
    for k, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, name=f"hidden_{k}")(x))
    return nn.Dense(1, name="score")(x)[:, 0]


def example_weights(scores: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """ARL example weights: `w_b = 1 + n * softmax(scores over the valid examples)_b`.

  n is the number of valid examples. Every valid weight is >= 1 and the valid weights sum to
  exactly 2n (n from the ones, n from the softmax); padded examples get weight 0. The form
  cannot collapse: whatever the adversary outputs, each example keeps at least its
  unweighted contribution (weight 1), and because the softmax is normalized the adversary can
  only move a fixed extra mass n between examples, never inflate the loss without bound nor
  drive any weight to zero (Lahoti et al. 2020, "Fairness without demographics through
  adversarially reweighted learning"). Differentiable in `scores`.

  Args:
    scores: [B] adversary scores.
    valid: optional [B] bool (or 0/1) mask of real examples.

  Returns:
    [B] float32 weights.

  Example:
    >>> example_weights(jnp.zeros(4))   # uniform: 1 + 4 * 1/4
    Array([2., 2., 2., 2.], dtype=float32)
  """
  if scores.ndim != 1:
    raise ValueError(f"example_weights: scores must be [batch], got shape {scores.shape}")
  scores = scores.astype(jnp.float32)
  valid = (jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid).astype(bool))
  if valid.shape != scores.shape:
    raise ValueError(f"example_weights: valid must have shape {scores.shape}, got {valid.shape}")
  n = jnp.sum(valid).astype(jnp.float32)
  # softmax is shift-invariant: the max only keeps exp() in range, so it needs no gradient.
  top = jax.lax.stop_gradient(jnp.max(jnp.where(valid, scores, -jnp.inf)))
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  e = jnp.where(valid, jnp.exp(jnp.where(valid, scores, top) - top), 0.0)
  probs = e / jnp.maximum(jnp.sum(e), _NORM_EPS)
  return jnp.where(valid, 1.0 + n * probs, 0.0)


def pair_weights(weights: jax.Array, i: np.ndarray | jax.Array, j: np.ndarray | jax.Array) -> jax.Array:
  """A pair's weight is the sum of its two examples' weights: `w[i] + w[j]` (Jin et al. 2022).

  Example:
    >>> i, j = pair_indices(4)
    >>> pair_weights(example_weights(scores), i, j)   # [6]
  """
  return weights[i] + weights[j]


def arw_losses(embeddings: jax.Array, speaker_labels: jax.Array, cluster_ids: jax.Array,
               loss_params: dict[str, jax.Array], adversary: Adversary, adversary_params: Any, *,
               valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """The two objectives of one adversarial-reweighting step, both to MINIMIZE.

  `extractor_loss` is the weighted `pairwise_loss` with the adversary's weights held fixed
  (stop-gradient): its gradient reaches the embeddings (hence the encoder) and `loss_params`.
  `adversary_loss` is MINUS the same weighted loss with the embeddings and `loss_params`
  held fixed: its gradient reaches `adversary_params` only, so descending it is gradient
  ascent of the adversary on the weighted loss. The two values are opposite; see the module
  docstring for alternating and simultaneous updates.

  Args:
    embeddings: [B, E] from the speaker encoder (differentiable w.r.t. its params).
    speaker_labels: [B] int speaker ids.
    cluster_ids: [B] int cluster ids (inputs of the adversary).
    loss_params: from `init_loss_params`.
    adversary: the `Adversary` module.
    adversary_params: its params.
    valid: optional [B] mask of real examples.

  Returns:
    `(extractor_loss, adversary_loss, aux)`, aux holding "example_weights" [B] and
    "unweighted_loss" (the plain `pairwise_loss`, for monitoring).

  Example:
    >>> def objective(all_params):   # one jax.grad for both players
    ...   emb = encoder.apply({"params": all_params["encoder"]}, feats, lens, train=True)
    ...   ext, adv, aux = arw_losses(emb, spk, clusters, all_params["loss"], adversary,
    ...                              all_params["adversary"], valid=valid)
    ...   return ext + adv, aux
  """
  scale, bias = scale_and_bias(loss_params)
  scores = adversary.apply({"params": adversary_params}, embeddings, cluster_ids)
  weights = example_weights(scores, valid)
  i, j = pair_indices(embeddings.shape[0])
  pw = pair_weights(weights, i, j)
  extractor_loss = pairwise_loss(embeddings, speaker_labels, scale, bias,
                                 pair_weights=jax.lax.stop_gradient(pw), valid=valid)
  fixed = jax.lax.stop_gradient
  adversary_loss = -pairwise_loss(fixed(embeddings), speaker_labels, fixed(scale), fixed(bias),
                                  pair_weights=pw, valid=valid)
  unweighted = jax.lax.stop_gradient(pairwise_loss(embeddings, speaker_labels, scale, bias, valid=valid))
  return extractor_loss, adversary_loss, {"example_weights": jax.lax.stop_gradient(weights),
                                          "unweighted_loss": unweighted}
