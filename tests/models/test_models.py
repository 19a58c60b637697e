"""Models: the fused LSTM against flax's LSTM cell, padding invariance, greedy decoding
against step-by-step Python references."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn

from libs.models import ctc, encoders, lstm, transducer


def _flax_lstm_params(ours, d):
  """Our fused parameters of direction d in OptimizedLSTMCell's layout."""
  h = ours["w_hidden"].shape[1]
  gates = ("i", "f", "g", "o")
  p = {}
  for k, g in enumerate(gates):
    sl = slice(k * h, (k + 1) * h)
    p["i" + g] = {"kernel": ours["w_in"][d][:, sl]}
    p["h" + g] = {"kernel": ours["w_hidden"][d][:, sl], "bias": ours["bias"][d][sl]}
  return p


@pytest.mark.parametrize("bidirectional", [False, True])
def test_fused_lstm_matches_flax_lstm(bidirectional):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, 7, 5)), jnp.float32)
  lengths = jnp.array([7, 4, 1])
  layer = lstm.LSTM(5, 6, bidirectional)
  params = layer.init(jax.random.key(0), x, lengths)["params"]
  params = jax.tree.map(lambda p: p + 0.1 * jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
  ours = jax.jit(layer.apply)({"params": params}, x, lengths)
  fwd = nn.RNN(nn.OptimizedLSTMCell(6))
  ref = fwd.apply({"params": {"cell": _flax_lstm_params(params, 0)}}, x, seq_lengths=lengths)
  if bidirectional:
    bwd = nn.RNN(nn.OptimizedLSTMCell(6), reverse=True, keep_order=True)
    ref_b = bwd.apply({"params": {"cell": _flax_lstm_params(params, 1)}}, x, seq_lengths=lengths)
    ref = jnp.concatenate([ref, ref_b], axis=-1)
  valid = (np.arange(7)[None] < np.asarray(lengths)[:, None])[..., None]
  np.testing.assert_allclose(np.where(valid, ours, 0), np.where(valid, ref, 0), atol=1e-5)


def test_lstm_step_matches_sequence():
  x = jax.random.normal(jax.random.key(1), (2, 5, 4))
  layer = lstm.LSTM(4, 3)
  variables = layer.init(jax.random.key(0), x, jnp.array([5, 5]))
  seq = layer.apply(variables, x, jnp.array([5, 5]))
  carry = layer.initial_carry(2)
  for t in range(5):
    carry, h = layer.apply(variables, carry, x[:, t], method=lstm.LSTM.step)
    np.testing.assert_allclose(h, seq[:, t], atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "conformer", "convrnnt", "amortized"])
def test_encoder_padding_invariance(kind):
  """An utterance's encoding does not depend on what else is in the batch (DP needs this)."""
  cfg = encoders.EncoderConfig(kind=kind, subsampling_channels=4, dim=16, num_layers=2, num_heads=2,
                               conv_kernel=5, dropout=0.0)
  enc = encoders.Encoder(cfg)
  x = jax.random.normal(jax.random.key(0), (2, 40, 80))
  lengths = jnp.array([40, 23])
  params = jax.jit(enc.init)(jax.random.key(1), x, lengths)
  apply = jax.jit(enc.apply)
  out, out_len = apply(params, x, lengths)
  garbage = x.at[1, 23:].set(100.0)
  out2, _ = apply(params, garbage, lengths)
  alone, alone_len = apply(params, x[1:2, :23], lengths[1:])
  n = int(alone_len[0])
  assert int(out_len[1]) == n == int(encoders.subsampled_lengths(23))
  np.testing.assert_allclose(out[1, :n], alone[0], atol=1e-5)
  np.testing.assert_allclose(out2[1, :n], alone[0], atol=1e-5)
  assert np.all(np.asarray(out[1, n:]) == 0)


@pytest.mark.parametrize("kind, bidirectional", [("convrnnt", True), ("lstm", False)])
def test_streaming_encoders_do_not_look_at_future_frames(kind, bidirectional):
  """Output frame t depends on input frames up to 4t + 3 only (the subsampling's look-ahead):
  changing every later input frame leaves it unchanged. (`convrnnt` ignores `bidirectional`.)"""
  cfg = encoders.EncoderConfig(kind=kind, subsampling_channels=4, dim=16, num_layers=2, bidirectional=bidirectional,
                               dropout=0.0, global_dilations=(1, 2, 4))
  enc = encoders.Encoder(cfg)
  x = jax.random.normal(jax.random.key(0), (1, 64, 20))
  lengths = jnp.array([64])
  params = jax.jit(enc.init)(jax.random.key(1), x, lengths)
  apply = jax.jit(enc.apply)
  out, _ = apply(params, x, lengths)
  for cut in (8, 24, 40):
    changed = x.at[:, cut:].set(jax.random.normal(jax.random.key(cut), (1, 64 - cut, 20)) * 3)
    out2, _ = apply(params, changed, lengths)
    safe = (cut - 4) // 4 + 1  # frames t with 4t + 3 < cut
    np.testing.assert_allclose(out2[0, :safe], out[0, :safe], atol=1e-5)
    assert not np.allclose(out2[0, safe + 1:], out[0, safe + 1:], atol=1e-3)  # the future does matter later


def _amortized(num_layers=2, chunk=2, compute_penalty=0.05):
  cfg = encoders.EncoderConfig(kind="amortized", subsampling_channels=4, dim=16, num_layers=num_layers, num_heads=2,
                               dropout=0.0, chunk=chunk, compute_penalty=compute_penalty)
  return encoders.Encoder(cfg)


def _undecided(params):
  """The arbitrators' output bias at 0 (it starts at +2: everything runs) and large centred
  random weights, so that the decisions differ between chunks."""
  def edit(path, leaf):
    names = [getattr(k, "key", None) for k in path]
    if "arbitrator_out" in names:
      if names[-1] == "bias":
        return jnp.zeros_like(leaf)
      return 4.0 * jax.random.normal(jax.random.key(leaf.size), leaf.shape)
    if "arbitrator_in" in names and names[-1] == "bias":  # centred hidden units: signs vary by chunk
      return jnp.zeros_like(leaf)
    return leaf
  return jax.tree_util.tree_map_with_path(edit, params)


def test_amortized_encoder_is_chunk_causal():
  """Output frame t depends on input frames up to the end of its chunk only: with chunk c, on
  input frames up to 4 * (c * (t // c + 1) - 1) + 3; every later change leaves it unchanged."""
  chunk = 2
  enc = _amortized(chunk=chunk)
  x = jax.random.normal(jax.random.key(0), (1, 64, 20))
  lengths = jnp.array([64])
  params = _undecided(jax.jit(enc.init)(jax.random.key(1), x, lengths))
  apply = jax.jit(enc.apply)
  out, _ = apply(params, x, lengths)
  for cut in (8, 24, 40):
    changed = x.at[:, cut:].set(jax.random.normal(jax.random.key(cut), (1, 64 - cut, 20)) * 3)
    out2, _ = apply(params, changed, lengths)
    safe = sum(4 * (chunk * (t // chunk + 1) - 1) + 3 < cut for t in range(out.shape[1]))
    np.testing.assert_allclose(out2[0, :safe], out[0, :safe], atol=1e-5)
    assert not np.allclose(out2[0, safe:], out[0, safe:], atol=1e-3)  # its own chunk's future matters


def _zeroed(params, *layers):
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: jnp.zeros_like(leaf) if set(layers) & {getattr(k, "key", None) for k in path} else leaf,
      params)


def test_amortized_compute_accounting_counts_the_sub_blocks_that_ran():
  """The sown counts and FLOPs against a brute-force count: in a one-layer encoder, zeroing a
  sub-block's output layer changes exactly the frames where that sub-block ran. (The attention
  and the convolution mix frames, so each is probed with the other one silenced in both runs.)"""
  from libs.speech import evaluate  # pylint: disable=import-outside-toplevel
  enc = _amortized(num_layers=1, chunk=2)
  x = jax.random.normal(jax.random.key(2), (3, 64, 20))
  lengths = jnp.array([64, 41, 17])
  params = _undecided(jax.jit(enc.init)(jax.random.key(3), x, lengths))
  apply = jax.jit(lambda p: enc.apply(p, x, lengths, mutable=["intermediates"]))
  (out, out_len), state = apply(params)
  valid = np.arange(out.shape[1])[None] < np.asarray(out_len)[:, None]
  ran = {}
  for name, layer, silenced in (("attention", "out", ("conv_out",)), ("conv", "conv_out", ("out",)),
                                ("ffn", "ffn_out", ())):
    (base, _), _ = apply(_zeroed(params, *silenced))
    (without, _), _ = apply(_zeroed(params, layer, *silenced))
    ran[name] = valid & np.any(np.abs(np.asarray(base) - np.asarray(without)) > 1e-6, axis=-1)
    assert 0 < ran[name].sum() < valid.sum(), name  # the decisions differ between chunks
  executed = np.asarray(evaluate.sown(state, "executed_subblocks")[0])
  np.testing.assert_array_equal(executed, np.stack([ran[n].sum(1) for n in encoders.SUBBLOCKS], axis=1))
  # FLOPs in float64: a frame in chunk k attends to min(2 (k + 1), length) keys; the convolution
  # module is a width-3 window projection to 2d (GLU) and a d x d projection.
  d = 16
  t = np.arange(out.shape[1])
  context = np.minimum(2 * (t // 2 + 1), np.asarray(out_len)[:, None]).astype(np.float64)
  cost = {"attention": 4 * d * d + 4 * context * d, "conv": 2 * (3 * d * 2 * d + d * d), "ffn": 4 * d * 4 * d}
  want_executed = sum((ran[n] * cost[n]).sum(1) for n in encoders.SUBBLOCKS)
  want_dense = sum((valid * cost[n]).sum(1) for n in encoders.SUBBLOCKS)
  flops = np.asarray(evaluate.sown(state, "gated_flops")[0], np.float64)
  np.testing.assert_allclose(flops[:, 0], want_executed, rtol=1e-6)
  np.testing.assert_allclose(flops[:, 1], want_dense, rtol=1e-6)


def test_amortized_penalty_is_the_expected_compute_and_trains_the_arbitrators():
  """per_example_loss = NLL + compute_penalty x (expected share of the gated compute, summed over
  frames); its gradient reaches the arbitrators through the hard decisions (straight-through)."""
  from libs.speech import evaluate  # pylint: disable=import-outside-toplevel
  cfg = transducer.TransducerConfig(vocab_size=6, encoder=_amortized(num_layers=2, chunk=2).config, embed_dim=4,
                                    predictor_dim=8, joint_dim=8)
  model = transducer.Transducer(cfg)
  batch = {"features": jax.random.normal(jax.random.key(0), (2, 32, 20)), "feature_lengths": jnp.array([32, 19]),
           "labels": jnp.array([[1, 2, 3], [4, 5, 0]]), "label_lengths": jnp.array([3, 2])}
  params = jax.jit(model.init)(jax.random.key(1), batch["features"], batch["feature_lengths"], batch["labels"],
                               batch["label_lengths"])["params"]
  # Arbitrators that ignore their input: P(run attention, conv, ffn) = sigmoid(1, 0.3, -0.5)
  # in every chunk; the penalty is then a float64 sum over frames of the cost-weighted mean.
  biases = np.array([1.0, 0.3, -0.5])
  params = jax.tree_util.tree_map_with_path(
      lambda path, leaf: (jnp.asarray(biases, leaf.dtype) if path[-1].key == "bias" else jnp.zeros_like(leaf))
      if "arbitrator_out" in [getattr(k, "key", None) for k in path] else leaf, params)
  loss_and_nll = jax.jit(lambda m, p: (evaluate.per_example_loss(m, p, batch, None, train=False),
                                        evaluate.per_example_nll(m, p, batch, None, train=False)), static_argnums=0)
  loss, nll = loss_and_nll(model, params)
  p_att, p_conv, p_ffn = 1 / (1 + np.exp(-biases))
  d, penalty = 16, []
  for n in np.asarray(encoders.subsampled_lengths(batch["feature_lengths"])):
    t = np.arange(n)
    att, conv, ffn = 4 * d * d + 4 * np.minimum(2 * (t // 2 + 1), n) * d, 2 * (3 * d * 2 * d + d * d), 16 * d * d
    # Two layers, each charging half of the penalty per frame of full compute.
    penalty.append(0.05 * np.sum((p_att * att + p_conv * conv + p_ffn * ffn) / (att + conv + ffn)))
  np.testing.assert_allclose(np.asarray(loss - nll, np.float64), penalty, rtol=1e-5)
  zero = transducer.Transducer(dataclasses.replace(cfg, encoder=_amortized(compute_penalty=0.0).config))
  np.testing.assert_allclose(loss_and_nll(zero, params)[0], nll, rtol=1e-6)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(evaluate.per_example_loss(model, p, batch, None, train=False))))(params)
  arbitrator = grads["encoder"]["amortized_0"]["arbitrator_out"]["bias"]
  assert np.all(np.isfinite(arbitrator)) and np.any(np.asarray(arbitrator) != 0)


def test_bidirectional_lstm_is_not_causal():
  # The control for the test above: a BiLSTM's early frames do change with the future.
  cfg = encoders.EncoderConfig(kind="lstm", subsampling_channels=4, dim=16, num_layers=1, dropout=0.0)
  enc = encoders.Encoder(cfg)
  x = jax.random.normal(jax.random.key(0), (1, 64, 20))
  params = jax.jit(enc.init)(jax.random.key(1), x, jnp.array([64]))
  out, _ = enc.apply(params, x, jnp.array([64]))
  out2, _ = enc.apply(params, x.at[:, 40:].set(0.0), jnp.array([64]))
  assert not np.allclose(out2[0, :5], out[0, :5], atol=1e-4)


def _tiny_transducer():
  cfg = transducer.TransducerConfig(
      vocab_size=6, encoder=encoders.EncoderConfig(subsampling_channels=4, dim=8, num_layers=1, dropout=0.0),
      embed_dim=4, predictor_dim=8, joint_dim=8, max_symbols_per_frame=3)
  return transducer.Transducer(cfg)


def test_transducer_shapes_and_greedy_decode_matches_python_reference():
  model = _tiny_transducer()
  feats = jax.random.normal(jax.random.key(0), (3, 24, 80))
  lens = jnp.array([24, 17, 9])
  labels = jnp.zeros((3, 4), jnp.int32)
  variables = jax.jit(model.init)({"params": jax.random.key(1)}, feats, lens, labels, jnp.array([4, 2, 0]))
  # Large random output layer so that the greedy search emits plenty of labels.
  variables = jax.tree.map(lambda p: p * 3.0, variables)
  logits, enc_lens = jax.jit(model.apply)(variables, feats, lens, labels, jnp.array([4, 2, 0]))
  assert logits.shape == (3, 6, 5, 6) and list(enc_lens) == [6, 5, 3]
  tokens, counts = jax.jit(lambda v, f, l: model.apply(v, f, l, method=transducer.Transducer.greedy_decode))(
      variables, feats, lens)
  enc_proj, _ = jax.jit(lambda v, f, l: model.apply(v, f, l, method=transducer.Transducer.project_encoder))(
      variables, feats, lens)
  pred_step = jax.jit(lambda c, tok: model.apply(variables, c, jnp.array([tok]),
                                                 method=lambda m, c, t: m.predictor.step(c, t)))
  joint = jax.jit(lambda e, p: model.apply(
      variables, e, p, method=lambda m, e, p: m.joint(e, m.pred_proj(p))))
  for b in range(3):
    carry = model.apply(variables, 1, method=lambda m, n: m.predictor.initial_carry(n))
    carry, pred = pred_step(carry, 0)
    out = []
    for t in range(int(enc_lens[b])):
      for _ in range(3):
        k = int(jnp.argmax(joint(enc_proj[b:b + 1, t], pred)))
        if k == 0:
          break
        out.append(k)
        carry, pred = pred_step(carry, k)
    assert int(counts[b]) == len(out)
    assert list(np.asarray(tokens[b, : len(out)])) == out
  assert int(counts.sum()) > 0


def test_ctc_greedy_decode_matches_python():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.standard_normal((4, 12, 5)))
  lengths = jnp.array([12, 7, 1, 0])
  ids, counts = ctc.greedy_decode(logits, lengths)
  best = np.argmax(np.asarray(logits), -1)
  for b in range(4):
    path = best[b, : int(lengths[b])]
    expected = [int(k) for i, k in enumerate(path) if k != 0 and (i == 0 or path[i - 1] != k)]
    assert int(counts[b]) == len(expected) and list(np.asarray(ids[b, : len(expected)])) == expected
