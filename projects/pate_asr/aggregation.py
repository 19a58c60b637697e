"""PATE for sequences: label public utterances by an ensemble decode of the teachers in
which every decoding step is one query answered by noisy voting.

What one query is. The teachers are transducers decoded in lock-step, greedily; every
query is answered over the fixed output domain {blank} + characters (29 symbols) and
the aggregator turns the K proposals into ONE released symbol. Two decodes:

  * "label_sync" (default): one query per output label. Each teacher searches forward
    from its own frame pointer (greedy, blank = next frame) until its joint network
    proposes a character, or runs out of frames and proposes blank, read as "the
    transcript ends here". A released character is appended and fed to every teacher's
    prediction network; each teacher stays at the frame of its own proposal. An
    utterance with U labels costs U + 1 queries. Teachers that emit the same character
    a frame or two apart vote alike, which is what frame-level voting loses.
  * "frame_sync": one query per decoding step of a shared frame pointer: every teacher
    proposes the argmax at frame t given the released labels; blank advances to frame
    t+1. An utterance of T' encoder frames with U labels costs T' + U queries. Measured
    on digits, 98% of the non-unanimous queries of this decode are blank against a
    character, i.e. teachers that agree on the label but not on its frame.

For noisy averaging a teacher's answer is its probability vector over the domain (at the
frame of its proposal; one-hot blank once out of frames). Confident-GNMax abandons the
utterance at its first unanswered query. After `max_symbols_per_frame` characters at one
frame a teacher moves on without proposing (a data-independent rule: no privacy cost).
In both decodes a teacher's state depends only on its own parameters and the released
answers.

Unit of privacy. Teachers are trained on speaker-disjoint parts of the sensitive data,
so changing one speaker (all of their utterances), a fortiori one utterance, changes
one teacher, i.e. moves one vote in each query by at most one class. Every analysis in
`libs.accounting.pate` is for exactly that neighbouring relation, so the (epsilon, delta)
that `privacy.account_labels` publishes hold at the speaker level.

Aggregators (`AggregatorConfig.name`): "lnmax" (Laplace noisy max), "gnmax" (Gaussian
noisy max), "confident_gnmax" (an utterance is labeled only if every step's noisy top
vote clears a threshold), "noisy_average" (Gaussian noise on the summed teacher
posteriors), and "plurality" (no noise, epsilon = infinity).

Example:
  >>> labeler = make_labeler(model, AggregatorConfig("gnmax", sigma=2.0), max_symbols_per_frame=4)
  >>> out = label_split(labeler, teacher_params, public_split, key, batch_size=64)
  >>> record, private = privacy.account_labels(out, agg, analysis, target_epsilon=10.0, rng=rng)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from libs.data import pipeline
from libs.dp import pate_aggregators as agg_lib
from libs.models import transducer as transducer_lib

AGGREGATORS = ("lnmax", "gnmax", "confident_gnmax", "noisy_average", "plurality")


@dataclasses.dataclass(frozen=True)
class AggregatorConfig:
  name: str
  sigma: float = 0.0  # gnmax, confident_gnmax, noisy_average.
  scale: float = 0.0  # lnmax (Laplace scale).
  threshold: float = 0.0  # confident_gnmax.
  sigma_threshold: float = 0.0  # confident_gnmax.

  def __post_init__(self):
    if self.name not in AGGREGATORS:
      raise ValueError(f"aggregator must be one of {AGGREGATORS}, got {self.name!r}")
    needs = {"lnmax": ("scale",), "gnmax": ("sigma",), "noisy_average": ("sigma",),
             "confident_gnmax": ("sigma", "sigma_threshold"), "plurality": ()}[self.name]
    for field in needs:
      if not getattr(self, field) > 0:
        raise ValueError(f"{self.name} needs {field} > 0, got {getattr(self, field)}")


def _aggregate(hyper, votes, probs, key):
  """hyper: [method index into AGGREGATORS, sigma, scale, threshold, sigma_threshold]
  (traced, so one compiled labeler serves every aggregator); votes [B, V] counts,
  probs [K, B, V] -> (symbol [B], answered [B])."""
  answered = jnp.ones(votes.shape[0], bool)
  sigma, scale, threshold, sigma_threshold = hyper[1], hyper[2], hyper[3], hyper[4]

  def lnmax():
    return agg_lib.lnmax(votes, key, scale=scale).astype(jnp.int32), answered

  def gnmax():
    return agg_lib.gnmax(votes, key, sigma=sigma).astype(jnp.int32), answered

  def confident():
    symbol, ok = agg_lib.confident_gnmax(votes, key, threshold=threshold, sigma_threshold=sigma_threshold,
                                         sigma=sigma)
    return symbol.astype(jnp.int32), ok

  def noisy_average():
    return agg_lib.noisy_average(probs, key, sigma=sigma)[1].astype(jnp.int32), answered

  def plurality():
    return jnp.argmax(votes, axis=-1).astype(jnp.int32), answered

  branches = {"lnmax": lnmax, "gnmax": gnmax, "confident_gnmax": confident, "noisy_average": noisy_average,
              "plurality": plurality}
  return jax.lax.switch(hyper[0].astype(jnp.int32), [branches[name] for name in AGGREGATORS])


def _hyper(cfg: AggregatorConfig) -> jax.Array:
  return jnp.array([AGGREGATORS.index(cfg.name), cfg.sigma, cfg.scale, cfg.threshold, cfg.sigma_threshold],
                   jnp.float32)


DECODES = ("label_sync", "frame_sync")


def make_labeler(model: transducer_lib.Transducer, cfg: AggregatorConfig, *, max_symbols_per_frame: int,
                 decode: str = "label_sync", max_queries_per_utterance: int = 0):
  """Jitted ensemble decode with noisy aggregation (see the module docstring).

  `decode` picks what one query is: "label_sync" (the next label or the end) or
  "frame_sync" (the symbol at the current frame, blank included).
  `max_queries_per_utterance` (label_sync; 0: no cap) stops an utterance after that many
  queries, unlabeled unless its last answer ended it: the cap that a formal privacy bound
  charges every utterance, whatever the answers were.

  Returns `fn(teacher_params [K, ...], features, lengths, key)` -> dict of
    tokens [B, L], counts [B], labeled [B] (every step answered), num_queries [B],
    votes [B, Q, V] int32 (vote histogram of each query), answered [B, Q].
  The aggregator and its parameters are arguments of one compiled program shared by
  every labeler of the same model, so labeling with all five aggregators compiles once.
  """
  if decode not in DECODES:
    raise ValueError(f"decode must be one of {DECODES}, got {decode!r}")
  if max_queries_per_utterance < 0 or (max_queries_per_utterance and decode != "label_sync"):
    raise ValueError("max_queries_per_utterance must be >= 0, and only label_sync decoding takes a cap")
  hyper = _hyper(cfg)
  fn = _compiled_decode(model, max_symbols_per_frame, decode, max_queries_per_utterance)
  return lambda params, feats, lens, key: fn(params, feats, lens, key, hyper)


_DECODERS: dict = {}


def _compiled_decode(model: transducer_lib.Transducer, max_symbols_per_frame: int, decode: str,
                     max_queries: int = 0):
  cache_key = (model, max_symbols_per_frame, decode, max_queries)
  if cache_key not in _DECODERS:
    _DECODERS[cache_key] = (_build_label_sync_decode(model, max_symbols_per_frame, max_queries)
                            if decode == "label_sync" else _build_decode(model, max_symbols_per_frame))
  return _DECODERS[cache_key]


def _apply(model, params, *args, method):
  return model.apply({"params": params}, *args, method=method)


def _member_functions(model: transducer_lib.Transducer):
  """The transducer's decoding pieces, vmapped over the stacked teacher parameters [K, ...]:
  `pred_step(params, carry, labels)` (labels shared by all teachers), `pred_proj(params, h)`
  and `joint(params, enc, pred)`."""
  apply = functools.partial(_apply, model)
  pred_step = jax.vmap(lambda p, c, y: apply(p, c, y, method=lambda m, c, y: m.predictor.step(c, y)),
                       in_axes=(0, 0, None))
  pred_proj = jax.vmap(lambda p, h: apply(p, h, method=lambda m, h: m.pred_proj(h)))
  joint = jax.vmap(lambda p, e, q: apply(p, e, q, method=transducer_lib.Transducer.joint))
  return pred_step, pred_proj, joint


def _start(model: transducer_lib.Transducer, pred_step, params, feats, lens):
  """Every teacher's projected encoder output [K, B, T, J], the frame counts [B] (the same
  for all teachers), and each teacher's prediction network state after the start symbol
  (LSTM carry and output, [K, B, D]); `pred_step` from `_member_functions`."""
  apply = functools.partial(_apply, model)
  enc, enc_lens = jax.vmap(lambda p: apply(p, feats, lens, method=transducer_lib.Transducer.encode))(params)
  enc_proj = jax.vmap(lambda p, e: apply(p, e, method=lambda m, e: m.enc_proj(e)))(params, enc)
  num, batch = enc_proj.shape[:2]
  zeros = jnp.zeros((num, batch, model.config.predictor_dim))
  carry, h = pred_step(params, (zeros, zeros), jnp.full((batch,), model.config.blank_id, jnp.int32))
  return enc_proj, enc_lens[0], carry, h


def _record(s: dict, out: dict, votes, symbol, answered, querying, emit, pred_step, pred_proj) -> dict:
  """The decode-loop bookkeeping shared by both decodes, on a copy `out` of state `s`: store
  each querying utterance's vote histogram and whether it was answered, append emitted
  labels, and advance every teacher's prediction network on them."""
  rows = jnp.arange(votes.shape[0])
  slot = jnp.minimum(s["q"], s["votes"].shape[1] - 1)
  out["votes"] = s["votes"].at[rows, slot].set(jnp.where(querying[:, None], votes, s["votes"][rows, slot]))
  out["answered"] = s["answered"].at[rows, slot].set(jnp.where(querying, answered, s["answered"][rows, slot]))
  out["q"] = s["q"] + querying
  cslot = jnp.minimum(s["count"], s["tokens"].shape[1] - 1)
  out["tokens"] = s["tokens"].at[rows, cslot].set(jnp.where(emit, symbol, s["tokens"][rows, cslot]))
  out["count"] = s["count"] + emit
  new_carry, new_h = pred_step(s["carry"], symbol)
  keep = lambda new, old: jnp.where(emit.reshape((1, emit.shape[0]) + (1,) * (new.ndim - 2)), new, old)
  out["carry"] = jax.tree.map(keep, new_carry, s["carry"])
  out["pred"] = keep(pred_proj(new_h), s["pred"])
  return out


def _output_state(enc_lens: jax.Array, capacity: int, max_queries: int, vocab: int) -> dict:
  """The per-utterance part of a decode state, shared by both decoders: released tokens,
  the vote record of every query, done/failed flags and the loop counter."""
  batch = enc_lens.shape[0]
  return dict(
      tokens=jnp.zeros((batch, capacity), jnp.int32), count=jnp.zeros(batch, jnp.int32),
      done=enc_lens <= 0, failed=jnp.zeros(batch, bool), q=jnp.zeros(batch, jnp.int32),
      votes=jnp.zeros((batch, max_queries, vocab), jnp.int32), answered=jnp.zeros((batch, max_queries), bool),
      it=jnp.zeros((), jnp.int32))


def _build_decode(model: transducer_lib.Transducer, max_symbols_per_frame: int):
  blank = model.config.blank_id
  vocab = model.config.vocab_size
  pred_step, pred_proj, joint = _member_functions(model)

  def fn(params, feats, lens, key, hyper):
    enc_proj, enc_lens, carry, h = _start(model, pred_step, params, feats, lens)
    num, batch, frames = enc_proj.shape[:3]
    capacity = frames * max_symbols_per_frame
    max_queries = frames + capacity
    rows = jnp.arange(batch)
    state = dict(
        carry=carry, pred=pred_proj(params, h), t=jnp.zeros(batch, jnp.int32), nsym=jnp.zeros(batch, jnp.int32),
        **_output_state(enc_lens, capacity, max_queries, vocab))

    def cond(s):
      return jnp.any(~s["done"]) & (s["it"] < max_queries + frames)

    def body(s):
      active = ~s["done"]
      forced = active & (s["nsym"] >= max_symbols_per_frame)
      querying = active & ~forced
      t = jnp.minimum(s["t"], frames - 1)
      e = enc_proj[:, rows, t]  # [K, B, J]
      logits = joint(params, e, s["pred"])  # [K, B, V]
      proposals = jnp.argmax(logits, axis=-1)
      votes = jnp.sum(jax.nn.one_hot(proposals, vocab, dtype=jnp.int32), axis=0)  # [B, V]
      symbol, answered = _aggregate(hyper, votes, jax.nn.softmax(logits, axis=-1),
                                    jax.random.fold_in(key, s["it"]))
      answered = answered & querying
      unanswered = querying & ~answered
      emit = answered & (symbol != blank)
      advance = forced | (answered & (symbol == blank))
      out = dict(s)
      out = _record(s, out, votes, symbol, answered, querying, emit,
                    lambda c, y: pred_step(params, c, y), lambda h: pred_proj(params, h))
      out["t"] = s["t"] + advance
      out["nsym"] = jnp.where(advance, 0, s["nsym"] + emit)
      out["failed"] = s["failed"] | unanswered
      out["done"] = s["done"] | unanswered | (out["t"] >= enc_lens)
      out["it"] = s["it"] + 1
      return out

    s = jax.lax.while_loop(cond, body, state)
    return dict(tokens=s["tokens"], counts=s["count"], labeled=~s["failed"] & s["done"], num_queries=s["q"],
                votes=s["votes"], answered=s["answered"])

  return jax.jit(fn)


def _build_label_sync_decode(model: transducer_lib.Transducer, max_symbols_per_frame: int, query_cap: int = 0):
  """Label-synchronous ensemble decode: one query per output label (and one for the end).

  Every teacher k keeps its own frame pointer t_k. Before a query, each teacher runs its
  own greedy search forward from t_k (blank: next frame) until its joint network proposes
  a label at some frame, or it runs out of frames (it then proposes blank = "the
  transcript ends here"). The K proposals are aggregated into one released symbol: blank
  ends the utterance; a label is appended and fed to every teacher's prediction network,
  and each teacher stays at the frame where it made its proposal. A teacher's state thus
  depends only on its own parameters and the released answers, so one teacher (one
  speaker) moves at most one vote of each query. Teachers that emit the same labels a
  frame apart (the usual disagreement of frame-level voting) vote alike here.
  """
  blank = model.config.blank_id
  vocab = model.config.vocab_size
  pred_step, pred_proj, joint = _member_functions(model)

  def fn(params, feats, lens, key, hyper):
    enc_proj, enc_lens, carry, h = _start(model, pred_step, params, feats, lens)
    num, batch, frames = enc_proj.shape[:3]
    capacity = frames * max_symbols_per_frame
    max_queries = min(capacity + 1, query_cap) if query_cap else capacity + 1
    rows = jnp.arange(batch)
    members = jnp.arange(num)[:, None]
    kb = (num, batch)
    state = dict(
        carry=carry, pred=pred_proj(params, h), t=jnp.zeros(kb, jnp.int32), nsym=jnp.zeros(kb, jnp.int32),
        pending=jnp.zeros(kb, bool), prop=jnp.zeros(kb, jnp.int32), probs=jnp.zeros(kb + (vocab,)),
        **_output_state(enc_lens, capacity, max_queries, vocab))

    def cond(s):
      return jnp.any(~s["done"]) & (s["it"] < frames + 2 * max_queries + 2)

    def body(s):
      active = ~s["done"]
      # 1. Every teacher without a proposal looks at its current frame.
      searching = active[None, :] & ~s["pending"]
      at_end = s["t"] >= enc_lens[None, :]
      t = jnp.minimum(s["t"], frames - 1)
      e = enc_proj[members, rows[None, :], t]  # [K, B, J]
      logits = joint(params, e, s["pred"])  # [K, B, V]
      best = jnp.argmax(logits, axis=-1)
      full = s["nsym"] >= max_symbols_per_frame  # its own per-frame cap: move on, no query
      proposes = searching & (at_end | (~full & (best != blank)))
      advance = searching & ~at_end & (full | (best == blank))
      prop_now = jnp.where(at_end, blank, best)
      probs_now = jnp.where(at_end[..., None], jax.nn.one_hot(blank, vocab), jax.nn.softmax(logits, axis=-1))
      out = dict(s)
      out["pending"] = s["pending"] | proposes
      out["prop"] = jnp.where(proposes, prop_now, s["prop"])
      out["probs"] = jnp.where(proposes[..., None], probs_now, s["probs"])
      out["t"] = s["t"] + advance
      out["nsym"] = jnp.where(advance, 0, s["nsym"])
      # 2. Utterances whose teachers all hold a proposal are queried (in the same iteration).
      querying = active & jnp.all(out["pending"], axis=0)
      votes = jnp.sum(jax.nn.one_hot(out["prop"], vocab, dtype=jnp.int32), axis=0)  # [B, V]
      symbol, answered = _aggregate(hyper, votes, out["probs"], jax.random.fold_in(key, s["it"]))
      answered = answered & querying
      unanswered = querying & ~answered
      emit = answered & (symbol != blank)
      out = _record(s, out, votes, symbol, answered, querying, emit,
                    lambda c, y: pred_step(params, c, y), lambda h: pred_proj(params, h))
      out["nsym"] = out["nsym"] + emit[None, :]
      out["pending"] = out["pending"] & ~querying[None, :]
      ended = answered & (symbol == blank)
      capped = querying & ~ended & (out["q"] >= max_queries)  # the cap: stop, unlabeled
      out["failed"] = s["failed"] | unanswered | capped
      out["done"] = s["done"] | unanswered | ended | capped | (out["count"] >= capacity)
      out["it"] = s["it"] + 1
      return out

    s = jax.lax.while_loop(cond, body, state)
    return dict(tokens=s["tokens"], counts=s["count"], labeled=~s["failed"] & s["done"], num_queries=s["q"],
                votes=s["votes"], answered=s["answered"])

  return jax.jit(fn)


@dataclasses.dataclass
class Labels:
  """The ensemble's answers for every utterance of a split, in split order."""
  tokens: list[np.ndarray]  # Released label ids of each utterance (empty if not labeled).
  labeled: np.ndarray  # [N] bool: every query answered.
  votes: list[np.ndarray]  # [n_queries, V] histograms of each utterance's queries.
  answered: list[np.ndarray]  # [n_queries] bool.

  def subset(self, indices) -> "Labels":
    """The answers of the utterances at `indices`, in that order."""
    idx = [int(i) for i in indices]
    return Labels([self.tokens[i] for i in idx], self.labeled[idx], [self.votes[i] for i in idx],
                  [self.answered[i] for i in idx])

  def save(self, path: str) -> None:
    lengths = np.array([len(v) for v in self.votes])
    np.savez_compressed(path, labeled=self.labeled, token_lengths=np.array([len(t) for t in self.tokens]),
                        tokens=np.concatenate(self.tokens + [np.zeros(0, np.int32)]),
                        query_lengths=lengths, votes=np.concatenate(self.votes), answered=np.concatenate(self.answered))

  @classmethod
  def load(cls, path: str) -> "Labels":
    z = np.load(path)
    split = lambda a, n: np.split(a, np.cumsum(n)[:-1]) if len(n) else []
    return cls(split(z["tokens"], z["token_lengths"]), z["labeled"], split(z["votes"], z["query_lengths"]),
               split(z["answered"], z["query_lengths"]))


def label_split(labeler, teacher_params, split: pipeline.SpeechSplit, key: jax.Array, *, batch_size: int,
                progress: bool = True, desc: str = "labeling") -> Labels:
  """Runs the labeler over every utterance of `split` (in length-sorted batches)."""
  n = len(split)
  tokens, votes, answered = [None] * n, [None] * n, [None] * n
  labeled = np.zeros(n, bool)
  batches = list(pipeline.eval_batches(split, batch_size))
  for b, batch in enumerate(tqdm.tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False)):
    out = jax.device_get(labeler(teacher_params, batch["features"], batch["feature_lengths"],
                                 jax.random.fold_in(key, b)))
    for row, i in enumerate(batch["index"]):
      if i < 0:
        continue
      q = int(out["num_queries"][row])
      votes[i] = out["votes"][row, :q].astype(np.int32)
      answered[i] = out["answered"][row, :q].astype(bool)
      labeled[i] = bool(out["labeled"][row])
      tokens[i] = out["tokens"][row, : out["counts"][row]].astype(np.int32) if labeled[i] else np.zeros(0, np.int32)
  return Labels(tokens, labeled, votes, answered)
