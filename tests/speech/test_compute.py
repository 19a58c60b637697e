"""Compute accounting of ASR encoders: XLA's FLOP count and the amortized encoder's usage."""

import jax
import jax.numpy as jnp
import numpy as np

from libs.data import pipeline
from libs.models import encoders, lstm, transducer
from libs.speech import compute
from libs.speech import evaluate


def _model(kind, **encoder_fields):
  enc = encoders.EncoderConfig(kind=kind, subsampling_channels=4, dim=16, num_layers=2, num_heads=2, dropout=0.0,
                               bidirectional=False, **encoder_fields)
  cfg = transducer.TransducerConfig(vocab_size=6, encoder=enc, embed_dim=4, predictor_dim=8, joint_dim=8)
  model = transducer.Transducer(cfg)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 80)), jnp.array([16]), jnp.zeros((1, 2), jnp.int32),
                               jnp.array([2]))["params"]
  return model, params


def test_matmul_flops_count_every_step_of_a_scan():
  """A bidirectional LSTM layer: 2 FLOPs x 4 gates x hidden x (input + hidden) per frame and
  direction, the recurrent product inside the scan counted at every step (XLA's cost analysis
  counts a loop body once)."""
  layer = lstm.LSTM(12, 6, True)
  x, lengths = jnp.zeros((1, 25, 12)), jnp.array([25])
  params = jax.jit(layer.init)(jax.random.key(0), x, lengths)
  assert compute.matmul_flops(layer.apply, params, x, lengths) == 2 * 4 * 6 * (12 + 6) * 2 * 25


def test_encoder_flops_grow_linearly_with_the_frames_of_a_recurrent_encoder():
  model, params = _model("lstm")
  short, long = compute.encoder_flops(model, params, 64), compute.encoder_flops(model, params, 128)
  assert short > 0
  # Every layer is per frame (4x fewer frames after subsampling): twice the audio, twice the FLOPs.
  np.testing.assert_allclose(long / short, 2.0, rtol=0.02)


def _split(lengths, mels=80, seed=0):
  rng = np.random.default_rng(seed)
  feats = [rng.standard_normal((n, mels)).astype(np.float32) for n in lengths]
  n = len(lengths)
  return pipeline.SpeechSplit(feats, [np.ones(2, np.int32)] * n, ["a b"] * n, [f"u{i}" for i in range(n)], {})


def test_gated_usage_sums_what_the_layers_sowed_per_utterance():
  model, params = _model("amortized", chunk=2)
  # Undecided arbitrators: zero bias and large random weights (the decisions differ by chunk).
  params = jax.tree_util.tree_map_with_path(
      lambda path, leaf: (jnp.zeros_like(leaf) if path[-1].key == "bias"
                          else 4.0 * jax.random.normal(jax.random.key(leaf.size), leaf.shape))
      if "arbitrator_out" in [getattr(k, "key", None) for k in path] else leaf, params)
  lengths = [64, 41, 17, 30, 55]
  split = _split(lengths)
  usage = compute.gated_usage(model, params, split, batch_size=2)
  # Reference: one utterance at a time (alone, padded to 64 frames), summing the sown values.
  encode = jax.jit(lambda f, n: model.apply({"params": params}, f, n, method=transducer.Transducer.encode,
                                            mutable=["intermediates"])[1])
  executed = dense = run = 0.0
  for feats in split.features:
    state = encode(jnp.pad(jnp.asarray(feats), ((0, 64 - feats.shape[0]), (0, 0)))[None], jnp.array([feats.shape[0]]))
    for f, r in zip(evaluate.sown(state, "gated_flops"), evaluate.sown(state, "executed_subblocks")):
      executed, dense, run = executed + float(f[0, 0]), dense + float(f[0, 1]), run + float(r.sum())
  frames = 2 * 3 * float(np.sum(encoders.subsampled_lengths(np.asarray(lengths))))  # 2 layers x 3 sub-blocks
  np.testing.assert_allclose([usage["executed_flops"], usage["dense_flops"], usage["subblocks_run"]],
                             [executed, dense, run], rtol=1e-6)
  assert usage["subblocks_total"] == frames and 0 < usage["subblock_share"] < 1 and 0 < usage["executed_share"] < 1
  # The dense gated FLOPs of one utterance: what every sub-block would cost on it.
  one = compute.gated_dense_flops(model, params, 64)
  state = encode(jnp.asarray(split.features[0])[None], jnp.array([64]))
  np.testing.assert_allclose(one, sum(float(f[0, 1]) for f in evaluate.sown(state, "gated_flops")), rtol=1e-6)
  # An encoder without arbitrators has nothing gated.
  lstm, lstm_params = _model("lstm")
  assert compute.gated_usage(lstm, lstm_params, split, batch_size=2) is None
  assert compute.gated_dense_flops(lstm, lstm_params, 64) == 0.0
