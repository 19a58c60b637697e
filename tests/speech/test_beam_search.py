"""Modified beam search: beam 1 is greedy search, it finds paths at least as likely as greedy's,
an unpruned beam equals brute force over all alignments (float64 NumPy reference), padding
invariance, and the n-best list."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from libs.models import encoders
from libs.models import transducer
from libs.speech import beam_search as bs


def _model(vocab_size, max_symbols_per_frame=1):
  cfg = transducer.TransducerConfig(
      vocab_size=vocab_size,
      encoder=encoders.EncoderConfig(subsampling_channels=4, dim=8, num_layers=1, dropout=0.0),
      embed_dim=4, predictor_dim=8, joint_dim=8, max_symbols_per_frame=max_symbols_per_frame)
  return transducer.Transducer(cfg)


@functools.lru_cache(maxsize=None)
def _setup(vocab_size, frames, lengths, seed=0):
  """A random transducer (output layer scaled up, so that it emits plenty of labels) and features."""
  model = _model(vocab_size)
  feats = jax.random.normal(jax.random.key(seed), (len(lengths), frames, 80))
  lens = jnp.array(lengths)
  labels = jnp.zeros((len(lengths), 2), jnp.int32)
  params = jax.jit(model.init)({"params": jax.random.key(seed + 1)}, feats, lens, labels,
                               jnp.full((len(lengths),), 2))["params"]
  params = jax.tree.map(lambda p: p * 3.0, params)
  return model, params, feats, lens


def _search(model, params, feats, lens, beam, merge="logadd"):
  nbest = jax.jit(functools.partial(bs.beam_search, model, beam=beam, merge=merge))(params, feats, lens)
  return jax.tree.map(np.asarray, nbest)


def _hyps(nbest, b):
  """{label sequence: score} of utterance b's non-empty beam slots."""
  out = {}
  for k in range(nbest.scores.shape[1]):
    if np.isfinite(nbest.scores[b, k]):
      seq = tuple(int(x) for x in nbest.tokens[b, k, : nbest.counts[b, k]])
      assert seq not in out, "the beam holds a label sequence twice"
      out[seq] = float(nbest.scores[b, k])
  return out


_LABEL_WIDTH = 16  # Labels padded to one width: one compiled predictor for every prefix.


@functools.partial(jax.jit, static_argnums=0)
def _project_encoder(model, params, feats, lens):
  return model.apply({"params": params}, feats, lens, method=transducer.Transducer.project_encoder)


@functools.partial(jax.jit, static_argnums=0)
def _pred_proj(model, params, labels):
  return model.apply({"params": params}, labels, method=lambda m, y: m.pred_proj(m.predictor(y)))


class Reference:
  """Float64 NumPy log-probabilities of the one-symbol-per-frame topology for one utterance,
  from the model's training-path predictor (the full-sequence LSTM, not `predict_step`)."""

  def __init__(self, model, params, feats, lens, b):
    enc_proj, enc_lens = _project_encoder(model, params, feats, lens)
    self.enc = np.asarray(enc_proj[b, : int(enc_lens[b])], np.float64)
    self.frames = len(self.enc)
    assert self.frames < _LABEL_WIDTH
    self.model, self.params = model, params
    self.kernel = np.asarray(params["out_proj"]["kernel"], np.float64)
    self.bias = np.asarray(params["out_proj"]["bias"], np.float64)
    self._cache = {}

  def log_probs(self, seq):
    """[T', U+1, V] log-probabilities after each prefix of `seq`."""
    if seq not in self._cache:
      labels = np.zeros((1, _LABEL_WIDTH), np.int32)
      labels[0, : len(seq)] = seq
      pred = np.asarray(_pred_proj(self.model, self.params, labels)[0, : len(seq) + 1], np.float64)
      logits = np.tanh(self.enc[:, None] + pred[None]) @ self.kernel + self.bias
      self._cache[seq] = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    return self._cache[seq]

  def alignment(self, symbols, blank=0):
    """Log-probability of one alignment: one symbol (blank or label) per frame."""
    seq = tuple(s for s in symbols if s != blank)
    lp, u, total = self.log_probs(seq), 0, 0.0
    for t, s in enumerate(symbols):
      total += lp[t, u, s]
      u += s != blank
    return total

  def greedy(self, blank=0):
    """The greedy alignment (the most likely symbol at each frame) and its log-probability."""
    seq, symbols, total = (), [], 0.0
    for t in range(self.frames):
      lp = self.log_probs(seq)[t, len(seq)]
      s = int(np.argmax(lp))
      symbols.append(s)
      total += lp[s]
      seq += (s,) if s != blank else ()
    return seq, total

  def sequence(self, seq, combine, blank=0):
    """Log-add (np.logaddexp) or max (np.maximum) over the alignments of label sequence `seq`."""
    lp = self.log_probs(seq)
    alpha = np.full(len(seq) + 1, -np.inf)
    alpha[0] = 0.0
    for t in range(self.frames):
      stay = alpha + lp[t, np.arange(len(seq) + 1), blank]
      grow = np.concatenate([[-np.inf], alpha[:-1] + lp[t, np.arange(len(seq)), list(seq)]])
      alpha = combine(stay, grow)
    return alpha[-1]


def _seq(nbest, b, k=0):
  return tuple(int(x) for x in nbest.tokens[b, k, : nbest.counts[b, k]])


def test_beam_one_is_greedy_with_one_symbol_per_frame():
  model, params, feats, lens = _setup(6, 48, (48, 31, 17, 9))
  greedy = _model(6, max_symbols_per_frame=1)
  tokens, counts = jax.jit(lambda p, f, l: greedy.apply(
      {"params": p}, f, l, method=transducer.Transducer.greedy_decode))(params, feats, lens)
  nbest = _search(model, params, feats, lens, beam=1)
  assert counts.sum() > 10
  np.testing.assert_array_equal(nbest.counts[:, 0], counts)
  np.testing.assert_array_equal(nbest.tokens[:, 0], tokens)
  for b in range(len(lens)):  # The score is the greedy alignment's log-probability.
    seq, logp = Reference(model, params, feats, lens, b).greedy()
    assert _seq(nbest, b) == seq
    np.testing.assert_allclose(nbest.scores[b, 0], logp, atol=1e-4)


def test_beam_finds_paths_at_least_as_likely_as_greedy():
  model, params, feats, lens = _setup(6, 48, (48, 40, 31, 23), seed=3)
  for merge, combine in (("max", np.maximum), ("logadd", np.logaddexp)):
    nbest = _search(model, params, feats, lens, beam=6, merge=merge)
    for b in range(len(lens)):
      ref = Reference(model, params, feats, lens, b)
      _, greedy_logp = ref.greedy()
      assert nbest.scores[b, 0] >= greedy_logp - 1e-4
      # Independently rescored: the best alignment of the 1-best sequence beats greedy's.
      assert ref.sequence(_seq(nbest, b), np.maximum) >= greedy_logp - 1e-4
      for seq, score in _hyps(nbest, b).items():  # A score covers alignments of its own sequence only.
        assert score <= ref.sequence(seq, combine) + 1e-4


@pytest.mark.parametrize("merge,combine", [("logadd", np.logaddexp), ("max", np.maximum)])
def test_unpruned_beam_equals_brute_force_over_alignments(merge, combine):
  # 3 labels + blank; 4 and 3 encoder frames: 121 and 40 label sequences of length <= T'.
  model, params, feats, lens = _setup(4, 16, (16, 10), seed=5)
  nbest = _search(model, params, feats, lens, beam=121, merge=merge)
  for b in range(2):
    ref = Reference(model, params, feats, lens, b)
    assert ref.frames == (4, 3)[b]
    expected = {}
    for symbols in itertools.product(range(4), repeat=ref.frames):
      seq = tuple(s for s in symbols if s != 0)
      logp = ref.alignment(symbols)
      expected[seq] = combine(expected[seq], logp) if seq in expected else logp
    got = _hyps(nbest, b)
    assert sorted(got) == sorted(expected)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)], atol=1e-4)
    order = sorted(expected, key=expected.get, reverse=True)  # The n-best list is in this order.
    assert list(got) == order
    if merge == "logadd":  # Every alignment counted once: the probabilities sum to 1.
      np.testing.assert_allclose(np.logaddexp.reduce(list(got.values())), 0.0, atol=1e-4)


def test_padding_invariance():
  model, params, feats, lens = _setup(6, 48, (21, 48, 35), seed=7)
  batch = _search(model, params, feats, lens, beam=4)
  alone = _search(model, params, feats[:1, :21], lens[:1], beam=4)
  frames = alone.tokens.shape[-1]
  np.testing.assert_array_equal(batch.counts[0], alone.counts[0])
  np.testing.assert_array_equal(batch.tokens[0, :, :frames], alone.tokens[0])
  assert (batch.tokens[0, :, frames:] == 0).all()
  np.testing.assert_allclose(batch.scores[0], alone.scores[0], atol=1e-5)


def test_nbest_sorted_and_first_is_one_best():
  model, params, feats, lens = _setup(6, 48, (48, 31, 17, 9))
  nbest = _search(model, params, feats, lens, beam=5)
  assert (np.diff(nbest.scores, axis=1) <= 0).all()
  assert np.isfinite(nbest.scores).all()
  ids, counts = bs.make_decode_fn(model, beam=5)(params, feats, lens)
  np.testing.assert_array_equal(ids, nbest.tokens[:, 0])
  np.testing.assert_array_equal(counts, nbest.counts[:, 0])
  for b in range(len(lens)):
    assert len(_hyps(nbest, b)) == 5  # Distinct sequences.


def test_bad_arguments():
  model, params, feats, lens = _setup(6, 48, (48, 31, 17, 9))
  with pytest.raises(ValueError, match="beam"):
    bs.beam_search(model, params, feats, lens, beam=0)
  with pytest.raises(ValueError, match="merge"):
    bs.beam_search(model, params, feats, lens, beam=2, merge="sum")
