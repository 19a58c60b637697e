"""Acoustic encoders: convolutional 4x subsampling followed by LSTM, Conformer, ConvRNN-T or
compute-cost amortized Transformer layers.

`convrnnt` (Radfar et al. 2022) is streaming by construction: causal convolutional front ends,
a local one (a short causal convolution) and a global one (dilated causal convolutions and a
squeeze-and-excitation gate over the growing context, i.e. the mean of every frame so far),
concatenated and projected, feed unidirectional LSTM layers. Its output at frame t depends on
input frames up to t only (after the subsampling's bounded look-ahead of 3 input frames).

`amortized` (Xie et al. 2022) is a streaming Conformer-like Transformer (chunk-causal
self-attention: a frame sees its own chunk and every earlier one; a causal convolution module;
a feed-forward block) whose layers each have a small arbitrator network: from the mean of a
chunk's input it decides, per chunk, whether to run or skip each of the layer's three
sub-blocks (a skipped sub-block leaves the residual stream as it is). The decisions are hard
(0/1) in training and inference alike; their gradient is the sigmoid's (straight-through).
The encoder sows three collections into `intermediates`:
`compute_penalty` (per utterance: `compute_penalty` times the expected share of the gated
compute, summed over frames; `libs.speech.evaluate.per_example_loss` adds it to the NLL) and
`gated_flops` (per utterance: [executed, dense] FLOPs of the gated sub-blocks, counted exactly
from the decisions; see `flops_per_frame`) and `executed_subblocks` (per utterance and
sub-block, the frames where it ran). Under `jit` every sub-block is still computed for
every frame and masked (one dense program): the saving is in FLOPs only, not in CPU time.

All modules take padded batches with lengths and keep padded frames at zero, so that
the same code serves batched training, per-example (vmapped) DP gradients and teacher
ensembles. No batch statistics are used anywhere (LayerNorm only): per-example
gradients stay independent across the batch, which DP-SGD requires.

Example:
  >>> enc = Encoder(EncoderConfig(kind="lstm"))
  >>> params = enc.init(key, feats, lengths)
  >>> out, out_lengths = enc.apply(params, feats, lengths)  # out: [B, ~T/4, dim]
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from libs.models import lstm

ENCODER_KINDS = ("lstm", "conformer", "convrnnt", "amortized")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  kind: str = "lstm"  # One of ENCODER_KINDS.
  subsampling_channels: int = 32
  dim: int = 192  # Model width after subsampling (per direction for a BiLSTM: dim // 2).
  num_layers: int = 2
  bidirectional: bool = True  # LSTM only.
  num_heads: int = 4  # Conformer only.
  conv_kernel: int = 15  # Conformer only.
  ff_multiplier: int = 4  # Conformer only.
  dropout: float = 0.1
  local_kernel: int = 5  # ConvRNN-T only: the local causal convolution's width (frames).
  global_kernel: int = 3  # ConvRNN-T only: each dilated causal convolution's width.
  global_dilations: tuple[int, ...] = (1, 2, 4, 8)  # ConvRNN-T only: receptive field 1 + 2 * 15 frames.
  chunk: int = 4  # Amortized only: frames (after subsampling, 40 ms each) per attention/arbitration chunk.
  compute_penalty: float = 0.01  # Amortized only: nats per frame for running every gated sub-block.
  arbitrator_dim: int = 16  # Amortized only: the arbitrators' hidden width.
  amortized_kernel: int = 3  # Amortized only: the causal convolution module's width (frames).


def _mask(x, lengths):
  return jnp.where((jnp.arange(x.shape[1])[None] < lengths[:, None])[..., None], x, 0.0)


def subsampled_lengths(lengths):
  """Frame counts after the two stride-2 convolutions of `ConvSubsampling`."""
  return ((lengths + 1) // 2 + 1) // 2


def _patches_3x3_stride2(y):
  """[B, T, F, C] -> [B, ceil(T/2), ceil(F/2), 9*C]: 3x3 windows at stride 2, zero padding 1.

  Strided slices, not a convolution: what follows is a Dense layer, so a vmapped
  ensemble of models turns it into one batched matmul (a vmapped convolution with
  per-model kernels becomes a grouped convolution, which is slow on CPU), and ghost
  clipping sees a plain Dense layer.
  """
  t, f = y.shape[1], y.shape[2]
  t_out, f_out = (t + 1) // 2, (f + 1) // 2
  padded = jnp.pad(y, ((0, 0), (1, 2 * t_out - t), (1, 2 * f_out - f), (0, 0)))
  windows = [padded[:, i: i + 2 * t_out: 2, j: j + 2 * f_out: 2] for i in range(3) for j in range(3)]
  return jnp.concatenate(windows, axis=-1)


class ConvSubsampling(nn.Module):
  """Two 3x3 stride-2 convolutions over (time, frequency) with ReLU: 4x fewer frames.

  Each convolution is written as patch extraction followed by a Dense layer (the same
  function as `nn.Conv` with padding 1; see `_patches_3x3_stride2` for why).
  """
  channels: int
  out_dim: int

  @nn.compact
  def __call__(self, x, lengths):
    y = _mask(x, lengths)[..., None]  # [B, T, F, 1]; padding may hold anything.
    for i in range(2):
      y = nn.relu(nn.Dense(self.channels, name=f"conv_{i}")(_patches_3x3_stride2(y)))
      lengths = (lengths + 1) // 2
      y = _mask(y.reshape(y.shape[0], y.shape[1], -1), lengths).reshape(y.shape)
    y = y.reshape(y.shape[0], y.shape[1], -1)
    return _mask(nn.Dense(self.out_dim)(y), lengths), lengths


class LSTMLayers(nn.Module):
  config: EncoderConfig

  @nn.compact
  def __call__(self, x, lengths, *, train: bool):
    cfg = self.config
    for i in range(cfg.num_layers):
      hidden = cfg.dim // 2 if cfg.bidirectional else cfg.dim
      y = lstm.LSTM(x.shape[-1], hidden, cfg.bidirectional, name=f"lstm_{i}")(x, lengths)
      y = nn.Dropout(cfg.dropout, deterministic=not train)(y)
      x = _mask(y if i == 0 else x + y, lengths)
    return nn.LayerNorm()(x)


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
  pos = np.arange(length)[:, None]
  inv = np.exp(-np.log(10000.0) * np.arange(0, dim, 2) / dim)[None]
  table = np.zeros((length, dim), np.float32)
  table[:, 0::2] = np.sin(pos * inv)
  table[:, 1::2] = np.cos(pos * inv)
  return table


class ConformerBlock(nn.Module):
  """Macaron FFN, self-attention, convolution module, FFN (Gulati et al. 2020),
  with LayerNorm in place of BatchNorm in the convolution module."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, x, lengths, *, train: bool):
    cfg = self.config
    drop = lambda y: nn.Dropout(cfg.dropout, deterministic=not train)(y)

    def ffn(y, name):
      h = nn.Dense(cfg.dim * cfg.ff_multiplier, name=f"{name}_in")(nn.LayerNorm(name=f"{name}_ln")(y))
      return drop(nn.Dense(cfg.dim, name=f"{name}_out")(nn.swish(h)))

    x = x + 0.5 * ffn(x, "ffn1")
    valid = jnp.arange(x.shape[1])[None] < lengths[:, None]
    attn_mask = nn.make_attention_mask(valid, valid)
    h = nn.MultiHeadDotProductAttention(cfg.num_heads, deterministic=not train,
                                        dropout_rate=cfg.dropout)(nn.LayerNorm()(x), mask=attn_mask)
    x = x + drop(h)
    h = nn.Dense(2 * cfg.dim, name="pointwise_in")(nn.LayerNorm(name="conv_ln_in")(x))
    h = _mask(nn.glu(h, axis=-1), lengths)
    h = nn.Conv(cfg.dim, (cfg.conv_kernel,), feature_group_count=cfg.dim, padding="SAME",
                name="depthwise")(h)
    h = nn.Dense(cfg.dim, name="pointwise_out")(nn.swish(nn.LayerNorm(name="conv_ln_mid")(h)))
    x = x + drop(h)
    x = x + 0.5 * ffn(x, "ffn2")
    return _mask(nn.LayerNorm(name="out_ln")(x), lengths)


def _causal_windows(x, kernel: int, dilation: int = 1):
  """[B, T, C] -> [B, T, kernel * C]: frames t - (kernel - 1) * dilation, ..., t (zeros before 0).

  A causal convolution is then one Dense layer on these windows (as `_patches_3x3_stride2`:
  batched matmuls under vmap, plain Dense layers for ghost clipping)."""
  pad = (kernel - 1) * dilation
  padded = jnp.pad(x, ((0, 0), (pad, 0), (0, 0)))
  t = x.shape[1]
  return jnp.concatenate([padded[:, i * dilation: i * dilation + t] for i in range(kernel)], axis=-1)


class ConvRNNTFrontEnd(nn.Module):
  """ConvRNN-T's convolutional front ends (causal): local and global, concatenated and projected."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, x, lengths, *, train: bool):
    cfg = self.config
    drop = lambda y: nn.Dropout(cfg.dropout, deterministic=not train)(y)
    # Local: one short causal convolution with a gated (GLU) output, residual.
    h = nn.Dense(2 * cfg.dim, name="local_conv")(_causal_windows(nn.LayerNorm(name="local_ln")(x), cfg.local_kernel))
    local = _mask(x + drop(nn.glu(h, axis=-1)), lengths)
    # Global: dilated causal convolutions (growing receptive field), each residual.
    g = x
    for i, d in enumerate(cfg.global_dilations):
      h = nn.Dense(cfg.dim, name=f"global_conv_{i}")(_causal_windows(nn.LayerNorm(name=f"global_ln_{i}")(g),
                                                                      cfg.global_kernel, d))
      g = _mask(g + drop(nn.swish(h)), lengths)
    # Squeeze-and-excitation over the growing context: the mean of frames 0..t gates frame t.
    counts = jnp.arange(1, x.shape[1] + 1, dtype=x.dtype)[None, :, None]
    context = jnp.cumsum(g, axis=1) / counts
    gate = nn.sigmoid(nn.Dense(cfg.dim, name="se_out")(nn.relu(nn.Dense(max(1, cfg.dim // 4), name="se_in")(context))))
    glob = _mask(g * gate, lengths)
    return _mask(nn.Dense(cfg.dim, name="merge")(jnp.concatenate([local, glob], axis=-1)), lengths)


def chunk_causal_mask(valid, chunk: int):
  """[B, 1, T, T] attention mask: query t sees key s when s is valid and s's chunk is not after t's."""
  c = jnp.arange(valid.shape[1]) // chunk
  return nn.combine_masks(nn.make_attention_mask(valid, valid), (c[None, :] <= c[:, None])[None, None])


def _chunk_mean(x, valid, chunk: int):
  """[B, T, D] -> [B, ceil(T/chunk), D]: the mean of each chunk's valid frames (0 for an empty chunk)."""
  b, t, d = x.shape
  n = -(-t // chunk)
  pad = n * chunk - t
  xs = jnp.pad(jnp.where(valid[..., None], x, 0.0), ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, d)
  counts = jnp.pad(valid, ((0, 0), (0, pad))).reshape(b, n, chunk).sum(-1)
  return xs.sum(2) / jnp.maximum(counts, 1)[..., None]


SUBBLOCKS = ("attention", "conv", "ffn")  # The amortized layer's gated sub-blocks, in order.


def flops_per_frame(cfg: EncoderConfig, context: jax.Array) -> dict[str, jax.Array]:
  """FLOPs (2 per multiply-add) of one amortized layer's sub-blocks for one frame that attends to
  `context` keys: the gated parts (attention's query and output projections with its scores and
  weighted sum; the convolution module's windowed and output projections; the feed-forward
  block) and the ungated key/value projections."""
  d, ff, k = cfg.dim, cfg.ff_multiplier * cfg.dim, cfg.amortized_kernel
  return {"attention": 2 * 2 * d * d + 2 * 2 * context * d,
          "conv": jnp.full_like(context, 2 * (k * d * 2 * d + d * d)), "ffn": jnp.full_like(context, 2 * 2 * d * ff),
          "key_value": jnp.full_like(context, 2 * 2 * d * d)}


class AmortizedBlock(nn.Module):
  """A pre-LN layer (chunk-causal self-attention, causal convolution module, feed-forward) whose
  three sub-blocks an arbitrator runs or skips per chunk (Xie et al. 2022)."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, x, lengths, *, train: bool):
    cfg = self.config
    drop = lambda y: nn.Dropout(cfg.dropout, deterministic=not train)(y)
    t = x.shape[1]
    valid = jnp.arange(t)[None] < lengths[:, None]
    chunk_of = jnp.arange(t) // cfg.chunk
    # The arbitrator: one decision per chunk and sub-block, from the chunk's mean input. Its
    # output bias starts at +2 (every sub-block runs); the compute penalty learns to skip.
    h = nn.relu(nn.Dense(cfg.arbitrator_dim, name="arbitrator_in")(
        jax.lax.stop_gradient(_chunk_mean(x, valid, cfg.chunk))))
    logits = nn.Dense(len(SUBBLOCKS), name="arbitrator_out", bias_init=nn.initializers.constant(2.0))(h)
    prob = nn.sigmoid(logits)  # [B, chunks, 3]: SUBBLOCKS
    hard = (logits > 0).astype(x.dtype)
    gate = (hard + prob - jax.lax.stop_gradient(prob))[:, chunk_of]  # [B, T, 3]; value = hard.
    att = nn.MultiHeadDotProductAttention(cfg.num_heads, deterministic=not train, dropout_rate=cfg.dropout,
                                          name="attention")(nn.LayerNorm(name="attention_ln")(x),
                                                            mask=chunk_causal_mask(valid, cfg.chunk))
    x = _mask(x + gate[..., 0:1] * drop(att), lengths)
    # Convolution module: a causal convolution (Dense over causal windows, as in ConvRNN-T) with
    # a gated linear unit, then swish and a projection.
    c = nn.Dense(2 * cfg.dim, name="conv_in")(_causal_windows(nn.LayerNorm(name="conv_ln")(x),
                                                             cfg.amortized_kernel))
    c = nn.Dense(cfg.dim, name="conv_out")(nn.swish(nn.glu(c, axis=-1)))
    x = _mask(x + gate[..., 1:2] * drop(c), lengths)
    f = nn.Dense(cfg.dim * cfg.ff_multiplier, name="ffn_in")(nn.LayerNorm(name="ffn_ln")(x))
    x = _mask(x + gate[..., 2:3] * drop(nn.Dense(cfg.dim, name="ffn_out")(nn.swish(f))), lengths)
    # Accounting, per utterance, over valid frames: what ran, what dense would run, the penalty.
    context = jnp.minimum((chunk_of + 1) * cfg.chunk, lengths[:, None]).astype(jnp.float32)  # keys seen
    cost = flops_per_frame(cfg, context)
    frame_hard, frame_prob, v = hard[:, chunk_of], prob[:, chunk_of], valid.astype(jnp.float32)
    costs = jnp.stack([jnp.broadcast_to(cost[name], context.shape) for name in SUBBLOCKS], axis=-1)  # [B,T,3]
    executed = jnp.sum(v * jnp.sum(frame_hard * costs, -1), axis=1)
    dense = jnp.sum(v * jnp.sum(costs, -1), axis=1)
    # Frames' worth of the layer's whole gated compute, in expectation over the decisions.
    expected = jnp.sum(v * jnp.sum(frame_prob * costs, -1) / jnp.sum(costs, -1), axis=1)
    self.sow("intermediates", "gated_flops", jnp.stack([executed, dense], axis=-1))
    self.sow("intermediates", "executed_subblocks", jnp.sum(v[..., None] * frame_hard, axis=1))  # [B, 3] frames
    self.sow("intermediates", "compute_penalty", cfg.compute_penalty * expected / cfg.num_layers)
    return x


class Encoder(nn.Module):
  config: EncoderConfig

  @nn.compact
  def __call__(self, features, lengths, *, train: bool = False):
    cfg = self.config
    if cfg.kind not in ENCODER_KINDS:
      raise ValueError(f"encoder kind must be one of {ENCODER_KINDS}, got {cfg.kind!r}")
    x, lengths = ConvSubsampling(cfg.subsampling_channels, cfg.dim)(features, lengths)
    x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
    if cfg.kind == "lstm":
      x = LSTMLayers(cfg)(x, lengths, train=train)
    elif cfg.kind == "convrnnt":
      x = ConvRNNTFrontEnd(cfg)(x, lengths, train=train)
      x = LSTMLayers(dataclasses.replace(cfg, bidirectional=False))(x, lengths, train=train)
    elif cfg.kind == "amortized":
      x = _mask(x + sinusoidal_positions(x.shape[1], cfg.dim)[None], lengths)
      for i in range(cfg.num_layers):
        x = AmortizedBlock(cfg, name=f"amortized_{i}")(x, lengths, train=train)
      x = _mask(nn.LayerNorm(name="out_ln")(x), lengths)
    else:
      x = _mask(x + sinusoidal_positions(x.shape[1], cfg.dim)[None], lengths)
      for i in range(cfg.num_layers):
        x = ConformerBlock(cfg, name=f"conformer_{i}")(x, lengths, train=train)
    return x, lengths
