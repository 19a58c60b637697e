"""Modified beam search for transducers: batched over utterances, one jitted program.

The search of k2/icefall's `modified_beam_search` (Kang et al. 2022, "Fast and parallel
decoding for transducer"): at most one non-blank label per encoder frame. Each frame, every
hypothesis of an utterance's beam is extended by blank (it stays) or by a label (it grows by
one), scored by the log-probability of its alignment so far, and the best `beam` label
sequences are kept. An alignment in this topology emits exactly one symbol (blank or a label)
per frame, so its log-probability is the sum over frames of `log_softmax(joint)[symbol]`.

Hypotheses with the same label sequence (a blank extension of "a b" and the "b" extension of
"a") are merged before the top-k, so the beam always holds `beam` distinct sequences; the
merged score is their log-add (`merge="logadd"`, the default, as in icefall: the score is the
probability of the sequence summed over the alignments the beam kept) or their maximum
(`merge="max"`: the score is the best such alignment's, a Viterbi beam search). (icefall
merges after its top-k, which can leave fewer than `beam` distinct hypotheses.)

Fixed shapes for `jit`: hypotheses are padded token arrays [B, beam, T'] (one label per
frame at most, so T' is always room enough) with counts [B, beam] and scores [B, beam]
(-inf marks an empty slot, e.g. before a beam has filled); the predictor carries are
[B * beam, ...]; one `jax.lax.top_k` over the beam x vocabulary candidates of each utterance
per frame; frames past an utterance's encoder length leave its beam unchanged, so its result
does not depend on what it is batched with. The final beam is sorted by score: the n-best list.

With `beam=1` this is greedy decoding with `max_symbols_per_frame=1`.

Example:
  >>> decode = make_decode_fn(model, beam=4)            # like `evaluate.make_decode_fn(model)`
  >>> ids, counts = decode(params, batch["features"], batch["feature_lengths"])
  >>> evaluate.evaluate(decode, params, split, tokenizer, batch_size=64).wer
  >>> nbest = jax.jit(functools.partial(beam_search, model, beam=8))(params, feats, lens)
  >>> nbest.tokens[0, 0, : nbest.counts[0, 0]], nbest.scores[0]   # 1-best of utterance 0; scores
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from libs.models import transducer as transducer_lib

MERGES = ("logadd", "max")


class NBest(NamedTuple):
  """The final beam of each utterance, best first.

  Attributes:
    tokens: [B, beam, T'] int32 labels, padded with blank.
    counts: [B, beam] int32 number of labels of each hypothesis.
    scores: [B, beam] float32 log-probability (see `merge`), descending; -inf for an empty slot
      (an utterance with fewer distinct label sequences than `beam`).
  """
  tokens: jax.Array
  counts: jax.Array
  scores: jax.Array


def _merge_duplicates(cand, tokens, counts, valid, blank_id: int, merge: str):
  """Merges candidates with equal label sequences into the blank extension.

  cand [B, K, V] scores the extension of hypothesis k by symbol v. In a beam of distinct
  sequences, the only duplicates are (k, blank) and (k', v) with seq(k) = seq(k') + [v]: that
  score is combined into (k, blank) and (k', v) is removed (-inf).
  """
  b, k, v = cand.shape
  capacity = tokens.shape[-1]
  pos = jnp.arange(capacity)
  # prefix[b, k, q]: seq(q) is seq(k) without its last label.
  same = (tokens[:, :, None, :] == tokens[:, None, :, :]) | (pos >= counts[:, None, :, None])
  prefix = (jnp.all(same, axis=-1) & (counts[:, :, None] == counts[:, None, :] + 1)
            & valid[:, :, None] & valid[:, None, :])
  last = jnp.take_along_axis(tokens, jnp.maximum(counts - 1, 0)[..., None], axis=2)[..., 0]  # [B, K]
  # ext[b, k, q] = cand[b, q, last[b, k]]: the score of seq(q) + [last label of k].
  ext = jnp.swapaxes(jnp.take_along_axis(cand, jnp.broadcast_to(last[:, None, :], (b, k, k)), axis=2), 1, 2)
  other = jnp.max(jnp.where(prefix, ext, -jnp.inf), axis=2)  # At most one q matches.
  combine = jnp.logaddexp if merge == "logadd" else jnp.maximum
  stay = combine(cand[..., blank_id], other)
  removed = jnp.einsum("bkq,bkv->bqv", prefix.astype(jnp.int32), jax.nn.one_hot(last, v, dtype=jnp.int32)) > 0
  return jnp.where(removed, -jnp.inf, cand).at[..., blank_id].set(stay)


def beam_search(model: transducer_lib.Transducer, params, features: jax.Array, feature_lengths: jax.Array, *,
                beam: int = 4, merge: str = "logadd") -> NBest:
  """Modified beam search (at most one label per frame) over a batch of utterances.

  Pure and traceable: jit it with the model and options bound (`functools.partial`).

  Args:
    model: a `libs.models.transducer.Transducer` (static: flax modules hash by their config).
    params: its parameters (the "params" collection).
    features: [B, T, num_mels] padded features.
    feature_lengths: [B] valid frames of each utterance.
    beam: hypotheses kept per utterance (1: greedy search with one symbol per frame).
    merge: how hypotheses with the same label sequence combine: "logadd" (probability summed
      over their alignments) or "max" (the best alignment's).

  Returns:
    An `NBest` of [B, beam] hypotheses sorted by score, best first.

  Raises:
    ValueError: naming `beam` or `merge` when out of range.

  Example:
    >>> nbest = jax.jit(functools.partial(beam_search, model, beam=4))(params, feats, lens)
    >>> best_ids, best_counts = nbest.tokens[:, 0], nbest.counts[:, 0]
  """
  if int(beam) != beam or beam < 1:
    raise ValueError(f"beam must be a positive integer, got {beam!r}")
  beam = int(beam)
  if merge not in MERGES:
    raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
  cfg = model.config
  blank, vocab = cfg.blank_id, cfg.vocab_size
  variables = {"params": params}
  Transducer = transducer_lib.Transducer  # pylint: disable=invalid-name
  enc_proj, enc_lengths = model.apply(variables, features, feature_lengths, method=Transducer.project_encoder)
  batch, frames = enc_proj.shape[:2]
  rows = batch * beam
  carry, pred = model.apply(variables, rows, method=Transducer.start_prediction)
  init = (carry, pred, jnp.full((batch, beam, frames), blank, jnp.int32), jnp.zeros((batch, beam), jnp.int32),
          jnp.full((batch, beam), -jnp.inf, jnp.float32).at[:, 0].set(0.0))

  def frame(state, t):
    carry, pred, tokens, counts, scores = state
    logits = model.apply(variables, jnp.repeat(enc_proj[:, t], beam, axis=0), pred, method=Transducer.joint)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(batch, beam, vocab)
    cand = _merge_duplicates(scores[..., None] + logp, tokens, counts, scores > -jnp.inf, blank, merge)
    new_scores, flat = jax.lax.top_k(cand.reshape(batch, beam * vocab), beam)
    parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)
    emit = token != blank
    parent_counts = jnp.take_along_axis(counts, parent, axis=1)
    write = jax.nn.one_hot(parent_counts, frames, dtype=jnp.bool_) & emit[..., None]
    new_tokens = jnp.where(write, token[..., None], jnp.take_along_axis(tokens, parent[..., None], axis=1))
    new_counts = parent_counts + emit
    source = (parent + jnp.arange(batch)[:, None] * beam).reshape(-1)
    parent_carry = jax.tree.map(lambda x: x[source], carry)
    step_carry, step_pred = model.apply(variables, parent_carry, token.reshape(-1), method=Transducer.predict_step)
    grew = emit.reshape(-1)
    active = t < enc_lengths  # Past its length, an utterance's beam stays as it is.
    active_rows = jnp.repeat(active, beam)

    def pick(where_new, new, old):
      return jnp.where(where_new.reshape(where_new.shape + (1,) * (new.ndim - where_new.ndim)), new, old)

    new_carry = jax.tree.map(lambda n, p, o: pick(active_rows, pick(grew, n, p), o), step_carry, parent_carry, carry)
    new_pred = pick(active_rows, pick(grew, step_pred, pred[source]), pred)
    return (new_carry, new_pred, pick(active, new_tokens, tokens), pick(active, new_counts, counts),
            pick(active, new_scores, scores)), None

  (_, _, tokens, counts, scores), _ = jax.lax.scan(frame, init, jnp.arange(frames))
  return NBest(tokens, counts, scores)


@functools.lru_cache(maxsize=16)
def make_decode_fn(model: transducer_lib.Transducer, beam: int = 4, merge: str = "logadd"):
  """Jitted 1-best beam search with the signature of `libs.speech.evaluate.make_decode_fn`:
  (params, features, lengths) -> (ids [B, T'], counts [B]).

  Example:
    >>> ids, counts = make_decode_fn(model, beam=4)(params, feats, lens)
    >>> evaluate.transcribe(make_decode_fn(model, beam=8), params, split, tokenizer, batch_size=64)
  """
  search = functools.partial(beam_search, model, beam=beam, merge=merge)

  def decode(params, features, lengths):
    nbest = search(params, features, lengths)
    return nbest.tokens[:, 0], nbest.counts[:, 0]

  return jax.jit(decode)
