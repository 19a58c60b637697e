"""What an ASR encoder computes: XLA's FLOP count of the dense encoder, and what the amortized
encoder's arbitrators actually ran on a split.

`encoder_flops` counts the FLOPs of the encoder's matrix products and convolutions
(`Transducer.encode`, or a CTC model's forward) on one utterance, from its jaxpr: every
sub-block of every frame, as the jitted program runs it.
`gated_usage` runs the amortized encoder (`libs.models.encoders`, kind "amortized") over a split
and sums what its layers sowed: the FLOPs of the attention and feed-forward sub-blocks that ran
against those of the dense network, counted exactly from the hard decisions. Under `jit` the
skipped sub-blocks are still computed and masked, so the saving is in FLOPs, not in CPU time:
`encoder_flops(...) - (1 - gated share) * gated dense FLOPs` is what a runtime that skips them
(per-chunk dispatch, as on a device that streams) would spend.

Example:
  >>> dense = encoder_flops(model, params, num_frames=200)        # FLOPs for 2 s of audio
  >>> usage = gated_usage(model, params, test_split, batch_size=64)
  >>> usage["executed_share"], usage["subblock_share"]
  (0.41, 0.38)
  >>> spent = dense - (1 - usage["executed_share"]) * gated_dense_flops(model, params, num_frames=200)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from libs.data import pipeline
from libs.models import encoders
from libs.models import transducer as transducer_lib
from libs.speech import evaluate as evaluate_lib


def _encode(model, params, features, lengths, **kwargs):
  """The encoder's forward pass (a CTC model's whole forward: its encoder and output layer)."""
  if isinstance(model, transducer_lib.Transducer):
    return model.apply({"params": params}, features, lengths, train=False, method=transducer_lib.Transducer.encode,
                       **kwargs)
  return model.apply({"params": params}, features, lengths, train=False, **kwargs)


def matmul_flops(fn, *args) -> float:
  """FLOPs (2 per multiply-add) of the matrix products and convolutions that `fn(*args)` runs,
  counted on its jaxpr: a `scan` body counts once per iteration, a `cond` its costliest branch.

  Why not XLA's `cost_analysis()`: it counts a while loop's body once, whatever its trip count,
  so a recurrent encoder's time recurrence would vanish from the count. Elementwise work
  (activations, normalization, softmax) is left out: it is small beside the products here.
  """
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _jaxpr_flops(jaxpr) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in lhs_contract])
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial...)
      per_output = rhs[spec[1]] * np.prod([rhs[d] for d in spec[2:]])
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * per_output
    elif name == "scan":
      total += eqn.params["length"] * _jaxpr_flops(eqn.params["jaxpr"].jaxpr)
    elif name == "cond":
      total += max(_jaxpr_flops(branch.jaxpr) for branch in eqn.params["branches"])
    elif name == "while":
      raise ValueError("matmul_flops: a while loop has no static trip count; count it another way")
    else:
      for param in eqn.params.values():  # pjit, custom_jvp_call, remat, ...: their inner jaxprs
        inner = getattr(param, "jaxpr", None)
        if inner is not None:
          total += _jaxpr_flops(getattr(inner, "jaxpr", inner))
  return total


def encoder_flops(model, params, num_frames: int, num_mels: int = 80) -> float:
  """FLOPs of the encoder's products (`matmul_flops`) on one utterance of `num_frames` feature
  frames, every sub-block of every frame (the dense network, as the jitted program runs it)."""
  feats = jnp.zeros((1, num_frames, num_mels), jnp.float32)
  lens = jnp.array([num_frames], jnp.int32)
  return matmul_flops(lambda p, f, n: _encode(model, p, f, n), params, feats, lens)


def gated_dense_flops(model, params, num_frames: int, num_mels: int = 80) -> float:
  """The FLOPs that the gated sub-blocks of every amortized layer would spend on one utterance of
  `num_frames` feature frames if they all ran (0.0 for an encoder without arbitrators)."""
  feats = jnp.zeros((1, num_frames, num_mels), jnp.float32)
  state = jax.jit(lambda p, f, n: _encode(model, p, f, n, mutable=["intermediates"])[1])(
      params, feats, jnp.array([num_frames], jnp.int32))
  return float(sum(np.asarray(f, np.float64)[0, 1] for f in evaluate_lib.sown(state, "gated_flops")))


def gated_usage(model, params, split: pipeline.SpeechSplit, *, batch_size: int) -> dict | None:
  """Totals over `split` of what the amortized encoder's gated sub-blocks ran; None for an
  encoder without arbitrators.

  Returns {"executed_flops", "dense_flops", "executed_share" (their ratio),
  "subblocks_run", "subblocks_total", "subblock_share" (frame-level sub-block decisions)}.
  """
  fn = jax.jit(lambda p, f, n: _encode(model, p, f, n, mutable=["intermediates"])[1])
  totals = np.zeros(4)
  buckets = pipeline.frame_buckets(split.feature_lengths, 3)
  for batch in pipeline.eval_batches(split, batch_size, buckets):
    state = fn(params, batch["features"], batch["feature_lengths"])
    flops, runs = evaluate_lib.sown(state, "gated_flops"), evaluate_lib.sown(state, "executed_subblocks")
    if not flops:
      return None
    rows = np.asarray(batch["index"]) >= 0
    lengths = np.asarray(encoders.subsampled_lengths(np.asarray(batch["feature_lengths"])))[rows]
    for f, r in zip(flops, runs):
      f, r = np.asarray(f, np.float64)[rows], np.asarray(r, np.float64)[rows]
      totals += [f[:, 0].sum(), f[:, 1].sum(), r.sum(), r.shape[1] * lengths.sum()]
  return {"executed_flops": totals[0], "dense_flops": totals[1], "executed_share": totals[0] / max(totals[1], 1.0),
          "subblocks_run": totals[2], "subblocks_total": totals[3], "subblock_share": totals[2] / max(totals[3], 1.0)}

