"""Running an ASR model (`libs.models.asr`): per-utterance NLL, the training loss, greedy
decoding, and WER evaluation of a split, overall and per group of speakers.

The two places that dispatch on the model family (transducer or CTC: `per_example_nll` and
`make_decode_fn`) live together here; `libs.speech.losses` stays pure math on logits.

Example:
  >>> loss_fn = make_loss_fn(model, spec_augment_config(config.train))   # for steps.make_train_step
  >>> decode_fn = make_decode_fn(model)
  >>> result = evaluate(decode_fn, params, test_split, tokenizer, batch_size=64, mesh=mesh)
  >>> result.wer, result.group_wer(test_split.metadata["accent"])
  (0.12, {'en-GB': 0.10, 'en-US': 0.13})
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from libs.data import pipeline
from libs.metrics.groups import GroupMetrics
from libs.models import ctc as ctc_lib
from libs.models import transducer as transducer_lib
from libs.speech import features as features_lib
from libs.speech import losses
from libs.speech import wer as wer_lib
from libs.speech.tokenizer import Tokenizer
from libs.train import mesh as mesh_lib


def _forward(model, params, batch: dict, key: jax.Array | None, *, train: bool,
             spec_augment: features_lib.SpecAugmentConfig | None):
  """([B] NLL in nats, the model's sown `intermediates`): one forward pass."""
  feats = batch["features"]
  rngs = {}
  if key is not None:
    aug_key, drop_key = jax.random.split(key)
    rngs = {"dropout": drop_key}
    if spec_augment is not None:
      feats = features_lib.spec_augment(aug_key, feats, batch["feature_lengths"], spec_augment)
  variables = {"params": params}
  if isinstance(model, transducer_lib.Transducer):
    (logits, enc_lens), state = model.apply(variables, feats, batch["feature_lengths"], batch["labels"],
                                            batch["label_lengths"], train=train, rngs=rngs,
                                            mutable=["intermediates"])
    return losses.rnnt_loss(logits, enc_lens, batch["labels"], batch["label_lengths"]), state
  (logits, enc_lens), state = model.apply(variables, feats, batch["feature_lengths"], train=train, rngs=rngs,
                                          mutable=["intermediates"])
  return losses.ctc_loss(logits, enc_lens, batch["labels"], batch["label_lengths"]), state


def sown(state, name: str) -> list[jax.Array]:
  """Every value that a module sowed under `name` in a forward pass's `intermediates` (in
  tree order), e.g. one [B] compute penalty per amortized encoder layer."""
  found = []

  def visit(tree):
    for k, v in tree.items():
      if k == name:
        found.extend(v)
      elif isinstance(v, dict) or hasattr(v, "items"):
        visit(v)

  visit(state.get("intermediates", {}))
  return found


def per_example_nll(model, params, batch: dict, key: jax.Array | None, *, train: bool,
                    spec_augment: features_lib.SpecAugmentConfig | None = None) -> jax.Array:
  """Negative log-likelihood of each utterance of the batch, [B], in nats.

  `key` (or None: no dropout, no augmentation) draws the SpecAugment masks and the dropout.

  Example:
    >>> nll = per_example_nll(model, params, batch, None, train=False)   # [B]
  """
  return _forward(model, params, batch, key, train=train, spec_augment=spec_augment)[0]


def per_example_loss(model, params, batch: dict, key: jax.Array | None, *, train: bool,
                     spec_augment: features_lib.SpecAugmentConfig | None = None) -> jax.Array:
  """The training objective of each utterance, [B]: its NLL plus any auxiliary penalty that
  the model sows per utterance (`compute_penalty`: the amortized encoder's expected compute;
  zero for every other model). Each term is a function of its own utterance only, so DP-SGD
  can clip it per example.

  Example:
    >>> loss = per_example_loss(model, params, batch, key, train=True)   # [B]
  """
  nll, state = _forward(model, params, batch, key, train=train, spec_augment=spec_augment)
  return nll + sum(sown(state, "compute_penalty"), jnp.zeros_like(nll))


def make_loss_fn(model, spec_augment: features_lib.SpecAugmentConfig | None):
  """Mean training objective (`per_example_loss`) over the real (weight 1) utterances of a batch.

  Example:
    >>> loss, aux = make_loss_fn(model, None)(params, batch, key)   # aux: {"nll_per_token": ...}
  """

  def loss_fn(params, batch, key):
    nll, state = _forward(model, params, batch, key, train=True, spec_augment=spec_augment)
    penalties = sown(state, "compute_penalty")
    penalty = sum(penalties, jnp.zeros_like(nll))
    weights = batch["weights"]
    denominator = jnp.maximum(jnp.sum(weights), 1.0)
    aux = {"nll_per_token": jnp.sum(nll * weights) / jnp.maximum(jnp.sum(batch["label_lengths"] * weights), 1.0)}
    if penalties:  # Models that sow one (the amortized encoder) log it.
      aux["compute_penalty"] = jnp.sum(penalty * weights) / denominator
    return jnp.sum((nll + penalty) * weights) / denominator, aux

  return loss_fn


def spec_augment_config(train_cfg) -> features_lib.SpecAugmentConfig | None:
  """The SpecAugment settings of a `config.train` section, or None when it is off.

  Example:
    >>> make_loss_fn(model, spec_augment_config(config.train))
  """
  if not train_cfg.spec_augment:
    return None
  return features_lib.SpecAugmentConfig(
      num_freq_masks=train_cfg.freq_masks, max_freq_width=train_cfg.freq_mask_width,
      num_time_masks=train_cfg.time_masks, max_time_width=train_cfg.time_mask_width)


@functools.lru_cache(maxsize=16)
def make_decode_fn(model):
  """Jitted greedy decoding: (params, features, lengths) -> (ids [B, L], counts [B]).

  One jitted function per model (flax modules hash by their fields): every stage that decodes
  with the same architecture (students, fine-tunes, evaluation after a resume) reuses its
  compiled programs.

  Example:
    >>> ids, counts = make_decode_fn(model)(params, batch["features"], batch["feature_lengths"])
  """
  if isinstance(model, transducer_lib.Transducer):
    def decode(params, feats, lens):
      return model.apply({"params": params}, feats, lens, method=transducer_lib.Transducer.greedy_decode)
  else:
    def decode(params, feats, lens):
      logits, enc_lens = model.apply({"params": params}, feats, lens)
      return ctc_lib.greedy_decode(logits, enc_lens, model.config.blank_id)
  return jax.jit(decode)


@dataclasses.dataclass
class EvalResult:
  """WER of a split, its hypotheses and the edit counts of each utterance (in split order).

  Example:
    >>> result.group_wer(split.metadata["accent"])
    {'en-GB': 0.10, 'en-US': 0.13}
  """
  wer: float
  hypotheses: list[str]
  errors: list[wer_lib.EditCounts]

  def group_metrics(self, groups: np.ndarray, speakers: np.ndarray | None = None) -> GroupMetrics:
    """Corpus-level WER per group (edits / reference words), with speakers as bootstrap clusters.

    Example:
      >>> gm = result.group_metrics(split.metadata["accent"], split.metadata["speaker_id"])
      >>> gm.by_group, gm.gap().relative, bootstrap(gm, rng=np.random.default_rng(0)).gap_relative
    """
    return GroupMetrics([e.errors for e in self.errors], [e.reference_words for e in self.errors],
                        groups=[str(g) for g in np.asarray(groups).tolist()], clusters=speakers,
                        higher_is_better=False, name="wer", cluster_unit=None if speakers is None else "speaker")

  def group_wer(self, groups: np.ndarray) -> dict[str, float]:
    """Pooled WER of each group (e.g. accent) of utterances, keys sorted."""
    by_group = self.group_metrics(groups).by_group
    return {g: by_group[g] for g in sorted(by_group)}


def transcribe(decode_fn, params, split: pipeline.SpeechSplit, tokenizer: Tokenizer, *,
               batch_size: int, mesh=None, buckets=None) -> list[str]:
  """Greedy transcripts of every utterance of `split`, in split order.

  Example:
    >>> transcribe(make_decode_fn(model), params, split, tokenizer, batch_size=64)
    ['the cat sat', ...]
  """
  hyps: list[str | None] = [None] * len(split)
  for batch in pipeline.eval_batches(split, batch_size, buckets):
    feats, lens = batch["features"], batch["feature_lengths"]
    if mesh is not None:
      feats, lens = mesh_lib.shard_batch((feats, lens), mesh)
    ids, counts = mesh_lib.to_host(decode_fn(params, feats, lens))  # rows of every host
    for row, i in enumerate(batch["index"]):
      if i >= 0:
        hyps[i] = tokenizer.decode(ids[row, : counts[row]]).strip()
  return hyps  # type: ignore[return-value]


def evaluate(decode_fn, params, split, tokenizer, *, batch_size, mesh=None, buckets=None) -> EvalResult:
  """Transcribes `split` and scores it against its transcripts.

  Example:
    >>> evaluate(make_decode_fn(model), params, split, tokenizer, batch_size=64).wer
    0.12
  """
  hyps = transcribe(decode_fn, params, split, tokenizer, batch_size=batch_size, mesh=mesh, buckets=buckets)
  refs = split.transcripts
  return EvalResult(wer_lib.word_error_rate(refs, hyps), hyps, wer_lib.utterance_errors(refs, hyps))
