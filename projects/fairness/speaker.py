"""The speaker-embedding model: training (plain or with adversarial reweighting) and embeddings.

Batches hold P speakers x M utterances (random crops of `config.speaker.crop_frames`); the
loss is `libs.models.speaker.pairwise_loss` over every pair of the batch. With adversarial
reweighting (Jin et al. 2022) an adversary (`libs.models.speaker.Adversary`) maps each
utterance's embedding and its k-means cluster to a weight; a pair's weight is the sum of its
two utterances' weights; every step the extractor descends the weighted loss with the
adversary fixed, then the adversary ascends it with the embeddings fixed. The clusters are
refitted on the current embeddings of a fixed set of training utterances every
`config.arw.cluster_every` steps (on the host, from the state: a resumed run refits at the
same steps on the same parameters). Baseline and ARW runs share the initialization and the
batches, so they differ only by the weights.

Example:
  >>> result = train(config, os.path.join(workdir, "speaker"), data.train, arw=False)
  >>> emb = embed(config, result.params, data.test)   # [utterances, embed_dim], unit norm
"""

from __future__ import annotations

import dataclasses
import functools
import os

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from libs.data import pipeline
from libs.models import speaker as speaker_lib
from libs.train import checkpoint as ckpt_lib
from libs.train import loop as loop_lib
from libs.train import mesh as mesh_lib
from libs.train import metrics as metrics_lib
from libs.train import optimizers
from libs.train import rng as rng_lib


@flax.struct.dataclass
class SpeakerState:
  step: jnp.ndarray
  params: dict  # {"encoder": ..., "loss": {scale, bias}}
  opt_state: optax.OptState
  adv_params: dict
  adv_opt_state: optax.OptState
  centroids: jnp.ndarray  # [num_clusters, embed_dim], unit norm (zeros until first fitted)


@dataclasses.dataclass
class TrainResult:
  params: dict
  steps: int
  train_seconds: float


def encoder_config(config: ml_collections.ConfigDict) -> speaker_lib.SpeakerConfig:
  s = config.speaker
  return speaker_lib.SpeakerConfig(channels=s.channels, embed_dim=s.embed_dim)


class PairBatcher:
  """P speakers x M utterances per batch, random crops; a function of (seed, step) only."""

  def __init__(self, split: pipeline.SpeechSplit, speakers_per_batch: int, utterances_per_speaker: int,
               crop_frames: int, seed: int):
    ids = split.metadata["speaker_id"]
    self.by_speaker = [np.flatnonzero(ids == s) for s in np.unique(ids)]
    self.by_speaker = [u for u in self.by_speaker if len(u) >= utterances_per_speaker]
    if len(self.by_speaker) < speakers_per_batch:
      raise ValueError(f"config.speaker.speakers_per_batch={speakers_per_batch} needs that many training "
                       f"speakers with >= {utterances_per_speaker} utterances; the split has "
                       f"{len(self.by_speaker)}")
    self.split, self.p, self.m, self.crop, self.seed = split, speakers_per_batch, utterances_per_speaker, crop_frames, seed

  @property
  def batch_size(self) -> int:
    return self.p * self.m

  def batch(self, step: int) -> dict:
    rng = np.random.default_rng((self.seed, int(step)))
    speakers = rng.choice(len(self.by_speaker), self.p, replace=False)
    num_mels = self.split.features[0].shape[1]
    feats = np.zeros((self.batch_size, self.crop, num_mels), np.float32)
    lengths = np.zeros((self.batch_size,), np.int32)
    labels = np.repeat(np.arange(self.p, dtype=np.int32), self.m)
    row = 0
    for s in speakers:
      for u in rng.choice(self.by_speaker[s], self.m, replace=False):
        f = self.split.features[u]
        start = int(rng.integers(0, max(len(f) - self.crop, 0) + 1))
        piece = f[start: start + self.crop]
        feats[row, : len(piece)] = piece
        lengths[row] = len(piece)
        row += 1
    return {"features": feats, "lengths": lengths, "labels": labels,
            "valid": np.ones((self.batch_size,), np.float32)}


def _normalize(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _make_step(encoder, adversary, optimizer, adv_optimizer, num_pairs_i, num_pairs_j, use_arw: bool):
  """The jitted step: extractor descent on the (weighted) pairwise loss, then adversary ascent."""

  def loss_of(params, adv_params, centroids, batch, key):
    emb = encoder.apply({"params": params["encoder"]}, batch["features"], batch["lengths"], train=True,
                        rngs={"dropout": key})
    scale, bias = speaker_lib.scale_and_bias(params["loss"])
    pair_w, stats = None, {}
    if use_arw:
      e = jax.lax.stop_gradient(_normalize(emb))
      cluster = jnp.argmax(e @ centroids.T, axis=-1)  # Nearest centroid in cosine geometry.
      scores = adversary.apply({"params": adv_params}, e, cluster)
      weights = speaker_lib.example_weights(scores, batch["valid"])
      pair_w = speaker_lib.pair_weights(weights, num_pairs_i, num_pairs_j)
      # How far from uniform (2 each) the adversary moved the weights.
      stats = {"arw/weight_max": jnp.max(weights), "arw/weight_min": jnp.min(jnp.where(batch["valid"] > 0, weights,
                                                                                        jnp.inf))}
    loss = speaker_lib.pairwise_loss(emb, batch["labels"], scale, bias, pair_weights=pair_w, valid=batch["valid"])
    return loss, stats

  def step(state: SpeakerState, batch: dict, key: jax.Array):
    key = jax.random.fold_in(key, state.step)
    adv_fixed = jax.lax.stop_gradient(state.adv_params)
    (loss, stats), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params, adv_fixed, state.centroids,
                                                                      batch, key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree_utils.tree_norm(grads), **stats}
    adv_params, adv_opt_state = state.adv_params, state.adv_opt_state
    if use_arw:
      # The adversary maximizes the same weighted loss at the same embeddings (extractor fixed).
      fixed = jax.lax.stop_gradient(state.params)
      (adv_loss, _), adv_grads = jax.value_and_grad(loss_of, argnums=1, has_aux=True)(
          fixed, state.adv_params, state.centroids, batch, key)
      adv_updates, adv_opt_state = adv_optimizer.update(jax.tree.map(jnp.negative, adv_grads),
                                                        state.adv_opt_state, state.adv_params)
      adv_params = optax.apply_updates(state.adv_params, adv_updates)
      metrics["adversary_loss"] = adv_loss
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, adv_params=adv_params,
                        adv_opt_state=adv_opt_state)
    return new, metrics

  return step


def _optimizer(s: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optimizers.make_optimizer(ml_collections.ConfigDict(dict(
      learning_rate=s.learning_rate, warmup_steps=s.warmup_steps, num_steps=s.num_steps, final_lr_fraction=0.05,
      grad_clip_norm=5.0, weight_decay=s.weight_decay)))


def train(config: ml_collections.ConfigDict, stage_dir: str, split: pipeline.SpeechSplit, *,
          arw: bool) -> TrainResult | None:
  """Trains the speaker model on `split`'s speakers (resuming in `stage_dir`); None if interrupted."""
  s = config.speaker
  mesh = mesh_lib.make_mesh(jax.devices()[: config.get("num_devices") or None])
  streams = rng_lib.Streams(config.seed)
  encoder = speaker_lib.SpeakerEncoder(encoder_config(config))
  num_clusters = config.arw.num_clusters if arw else 1
  adversary = speaker_lib.Adversary(num_clusters=num_clusters, hidden=(config.arw.adversary_hidden if arw else 4,))
  batcher = PairBatcher(split, s.speakers_per_batch, s.utterances_per_speaker, s.crop_frames,
                        streams.seed("speaker_batches"))
  mesh_lib.check_batch_size(batcher.batch_size, mesh, "config.speaker.speakers_per_batch x utterances_per_speaker")
  num_mels = split.features[0].shape[1]
  enc_key, adv_key = jax.random.split(streams.key("speaker_init"))
  dummy = jnp.zeros((2, s.crop_frames, num_mels), jnp.float32)
  params = {"encoder": jax.jit(lambda k: encoder.init({"params": k}, dummy, jnp.array([s.crop_frames] * 2),
                                                      train=False)["params"])(enc_key),
            "loss": speaker_lib.init_loss_params()}
  adv_params = adversary.init({"params": adv_key}, jnp.zeros((2, s.embed_dim)), jnp.zeros((2,), jnp.int32))["params"]
  optimizer = _optimizer(s)
  adv_optimizer = optax.adam(config.arw.adversary_learning_rate if arw else 1e-3)
  state = SpeakerState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                       adv_params=adv_params, adv_opt_state=adv_optimizer.init(adv_params),
                       centroids=jnp.zeros((num_clusters, s.embed_dim), jnp.float32))
  state = mesh_lib.replicate(state, mesh)
  i, j = speaker_lib.pair_indices(batcher.batch_size)
  step_fn = jax.jit(_make_step(encoder, adversary, optimizer, adv_optimizer, i, j, arw),
                    in_shardings=(mesh_lib.replicated(mesh), mesh_lib.data_sharding(mesh), mesh_lib.replicated(mesh)),
                    out_shardings=(mesh_lib.replicated(mesh), mesh_lib.replicated(mesh)), donate_argnums=(0,))
  train_key = streams.key("speaker_train")
  cluster_subset = None
  if arw:
    pick = np.random.default_rng(streams.seed("arw_cluster_subset"))
    cluster_subset = split.subset(np.sort(pick.permutation(len(split))[: config.arw.cluster_utterances]))

  def loop_step(state, step):
    if arw and step % config.arw.cluster_every == 0:
      state = state.replace(centroids=mesh_lib.replicate(
          _fit_centroids(encoder, state.params["encoder"], cluster_subset, num_clusters, config), mesh))
    state, m = step_fn(state, mesh_lib.shard_batch(batcher.batch(step), mesh), train_key)
    done = step + 1
    if done % s.log_every and done != s.num_steps:
      return state, None
    return state, {f"speaker/{k}": float(v) for k, v in jax.device_get(m).items()}

  ckpt = ckpt_lib.Checkpointer(os.path.join(stage_dir, "checkpoints"), save_every=s.checkpoint_every)
  writer = metrics_lib.create_writer(stage_dir)
  out = loop_lib.train_loop(state, loop_step, num_steps=s.num_steps, checkpointer=ckpt, writer=writer,
                            desc="speaker+arw" if arw else "speaker", progress=config.get("progress", True),
                            postfix=lambda r: {"loss": f"{r['speaker/loss']:.3f}"})
  ckpt.close()
  if out.preempted:
    return None
  return TrainResult(jax.device_get(out.state.params), out.step, out.train_seconds)


def _fit_centroids(encoder, encoder_params, split, num_clusters: int, config) -> np.ndarray:
  emb = embed_with(encoder, encoder_params, split, config.eval.batch_size)
  k = min(num_clusters, len(emb))
  from sklearn import cluster as sk_cluster  # pylint: disable=import-outside-toplevel  # slow import
  import threadpoolctl  # pylint: disable=import-outside-toplevel
  # One BLAS/OpenMP thread: next to JAX's threads, sklearn's own pool oversubscribes a small
  # machine (a fit took 11 s instead of 0.2 s on 2 cores).
  with threadpoolctl.threadpool_limits(1):
    km = sk_cluster.KMeans(n_clusters=k, n_init=4, random_state=config.seed).fit(emb)
  centroids = np.zeros((num_clusters, emb.shape[1]), np.float32)
  c = km.cluster_centers_
  centroids[:k] = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
  return centroids


@functools.lru_cache(maxsize=4)
def _embed_fn(encoder):
  return jax.jit(lambda params, feats, lens: _normalize(encoder.apply({"params": params}, feats, lens, train=False)))


def embed_with(encoder, encoder_params, split: pipeline.SpeechSplit, batch_size: int) -> np.ndarray:
  """Unit-norm embeddings of every utterance of `split` (whole utterances), split order."""
  fn = _embed_fn(encoder)
  out = np.zeros((len(split), encoder.config.embed_dim), np.float32)
  for batch in pipeline.eval_batches(split, batch_size):
    emb = np.asarray(fn(encoder_params, batch["features"], batch["feature_lengths"]))
    rows = batch["index"] >= 0
    out[batch["index"][rows]] = emb[rows]
  return out


def embed(config: ml_collections.ConfigDict, params: dict, split: pipeline.SpeechSplit) -> np.ndarray:
  """Unit-norm utterance embeddings of `split` under the trained `params`."""
  encoder = speaker_lib.SpeakerEncoder(encoder_config(config))
  return embed_with(encoder, params["encoder"], split, config.eval.batch_size)


def speaker_means(embeddings: np.ndarray, utterance_speaker: np.ndarray, num_speakers: int) -> np.ndarray:
  """Each speaker's mean utterance embedding, renormalized (rows of the speaker table)."""
  sums = np.zeros((num_speakers, embeddings.shape[1]))
  np.add.at(sums, utterance_speaker, embeddings)
  return sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
