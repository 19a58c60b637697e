"""RNN-Transducer (Graves 2012): encoder, LSTM prediction network and joint network,
with batched greedy decoding under jit.

The joint network output for every (frame, label position) pair, [B, T, U+1, V], is what
`libs.speech.losses.rnnt_loss` consumes.

Example:
  >>> model = Transducer(TransducerConfig(vocab_size=29))
  >>> params = model.init({"params": key}, feats, feat_lens, labels, label_lens)
  >>> logits, enc_lens = model.apply(params, feats, feat_lens, labels, label_lens)
  >>> tokens, num_tokens = model.apply(params, feats, feat_lens, method=Transducer.greedy_decode)
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from libs.models import encoders
from libs.models import lstm


@dataclasses.dataclass(frozen=True)
class TransducerConfig:
  vocab_size: int = 29
  blank_id: int = 0
  encoder: encoders.EncoderConfig = encoders.EncoderConfig()
  embed_dim: int = 64
  predictor_dim: int = 128
  joint_dim: int = 128
  max_symbols_per_frame: int = 4  # Greedy decoding bound on emissions per frame.


class Predictor(nn.Module):
  """Label-history network: embedding and one LSTM layer; the blank id starts a sequence."""
  config: TransducerConfig

  def setup(self):
    self.embed = nn.Embed(self.config.vocab_size, self.config.embed_dim)
    self.lstm = lstm.LSTM(self.config.embed_dim, self.config.predictor_dim)

  def __call__(self, labels):
    """[B, U] labels -> [B, U+1, predictor_dim] outputs for histories of length 0..U."""
    start = jnp.full((labels.shape[0], 1), self.config.blank_id, labels.dtype)
    x = self.embed(jnp.concatenate([start, labels], axis=1))
    return self.lstm(x, jnp.full((labels.shape[0],), x.shape[1]))

  def initial_carry(self, batch: int):
    return self.lstm.initial_carry(batch)

  def step(self, carry, tokens):
    """One label for each batch element: returns (new carry, [B, predictor_dim])."""
    return self.lstm.step(carry, self.embed(tokens))


class Transducer(nn.Module):
  config: TransducerConfig

  def setup(self):
    cfg = self.config
    self.encoder = encoders.Encoder(cfg.encoder)
    self.predictor = Predictor(cfg)
    self.enc_proj = nn.Dense(cfg.joint_dim)
    self.pred_proj = nn.Dense(cfg.joint_dim, use_bias=False)
    self.out_proj = nn.Dense(cfg.vocab_size)

  def encode(self, features, lengths, *, train: bool = False):
    return self.encoder(features, lengths, train=train)

  def joint(self, enc_proj, pred_proj):
    return self.out_proj(jnp.tanh(enc_proj + pred_proj))

  def project_encoder(self, features, lengths):
    """Encoder outputs through the joint's encoder projection, for search outside this module
    (`libs.speech.beam_search`): ([B, T', joint_dim], encoder lengths [B])."""
    enc, enc_lengths = self.encode(features, lengths, train=False)
    return self.enc_proj(enc), enc_lengths

  def predict_step(self, carry, tokens):
    """One predictor step through the joint's prediction projection: tokens [N] -> (carry, [N, joint_dim])."""
    carry, pred = self.predictor.step(carry, tokens)
    return carry, self.pred_proj(pred)

  def start_prediction(self, batch: int):
    """The predictor after the start symbol (blank), `batch` times: (carry, [batch, joint_dim])."""
    carry = self.predictor.initial_carry(batch)
    return self.predict_step(carry, jnp.full((batch,), self.config.blank_id, jnp.int32))

  def __call__(self, features, feature_lengths, labels, label_lengths, *, train: bool = False):
    """Returns (joint logits [B, T', U+1, V], encoder lengths [B])."""
    del label_lengths  # The loss masks label padding.
    enc, enc_lengths = self.encode(features, feature_lengths, train=train)
    pred = self.predictor(labels)
    logits = self.joint(self.enc_proj(enc)[:, :, None], self.pred_proj(pred)[:, None])
    return logits, enc_lengths

  def greedy_decode(self, features, feature_lengths):
    """Batched greedy search: at each frame, emit the argmax label until blank (at most
    `max_symbols_per_frame` labels per frame).

    Returns:
      (tokens [B, T' * max_symbols_per_frame] int32 padded with blank, counts [B]).
    """
    cfg = self.config
    enc, enc_lengths = self.encode(features, feature_lengths, train=False)
    enc_proj = self.enc_proj(enc)
    batch, frames = enc.shape[:2]
    capacity = frames * cfg.max_symbols_per_frame
    carry = self.predictor.initial_carry(batch)
    carry, pred = self.predictor.step(carry, jnp.full((batch,), cfg.blank_id, jnp.int32))
    init = (carry, self.pred_proj(pred), jnp.zeros((batch, capacity), jnp.int32),
            jnp.zeros((batch,), jnp.int32))

    def symbol(mdl, state, t):
      carry, pred_proj, tokens, counts, open_frame = state
      logits = mdl.joint(enc_proj[:, t], pred_proj)
      token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      emit = open_frame & (token != cfg.blank_id) & (t < enc_lengths)
      new_carry, new_pred = mdl.predictor.step(carry, token)
      keep = lambda new, old: jnp.where(emit.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
      carry = jax.tree.map(keep, new_carry, carry)
      pred_proj = keep(mdl.pred_proj(new_pred), pred_proj)
      slot = jnp.minimum(counts, capacity - 1)
      tokens = tokens.at[jnp.arange(batch), slot].set(
          jnp.where(emit, token, tokens[jnp.arange(batch), slot]))
      return carry, pred_proj, tokens, counts + emit, open_frame & emit

    def frame(mdl, state, t):
      carry, pred_proj, tokens, counts = state
      s = (carry, pred_proj, tokens, counts, jnp.ones((batch,), bool))
      for _ in range(cfg.max_symbols_per_frame):
        s = symbol(mdl, s, t)
      return s[:4], None

    scan = nn.scan(frame, variable_broadcast="params", split_rngs={"params": False})
    (_, _, tokens, counts), _ = scan(self, init, jnp.arange(frames))
    return tokens, counts
