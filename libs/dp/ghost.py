"""Ghost clipping: per-example gradient norms and the clipped-gradient sum without
materializing per-example gradients of the whole model (Li et al. 2022 "ghost norm";
Bu et al. 2023 "book-keeping").

For a layer y = x W (+ b) applied at positions t of example i, the per-example gradient
is G_i = sum_t x_it^T g_it with g = dL/dy. Its squared norm is

    ||G_i||^2 = sum_{t,s} (x_it . x_is) (g_it . g_is)

which costs O(T^2 (d_in + d_out)) per example instead of O(d_in d_out); when
T^2 > d_in d_out the per-example gradient of that one layer is formed instead (cheaper
then). Knowing every example's norm, the clipped sum of each layer's gradient is one
weighted contraction, sum_i c_i x_i^T g_i, reusing the same x and g (book-keeping), so
the whole transform costs one forward and one backward pass plus these contractions.

How: the model runs under `flax.linen.intercept_methods`; every supported layer records
its input and receives a zero "perturbation" on its output (or, for the LSTM, on its
gate pre-activations) whose gradient is g. Supported layers:
  * `nn.Dense`, `nn.DenseGeneral` (hence `nn.MultiHeadDotProductAttention`), `nn.Embed`,
    `nn.LayerNorm` (last axis);
  * `nn.Conv` without feature groups or dilation (as a Dense layer over input patches);
  * `libs.models.lstm.LSTM`: W_in and W_hidden see the same gate gradient g_t, with
    inputs x_t and h_{t-1}.
Every parameter must belong to a supported layer; otherwise a ValueError lists the
parameters that are not covered (use `libs.dp.clipped_grad`, vmap, for such models).
Layers must not mix examples (no batch statistics), which DP-SGD requires anyway.

Unlike `clipped_grad`, the loss function returns PER-EXAMPLE losses [B] of a batch.
Padded examples (weight 0) get zero gradient and a reported norm of 0. Weights must lie in
[0, 1], checked as in `clipped_grad`.

Example:
  >>> grad_fn = ghost_clipped_grad(per_example_loss, l2_clip_norm=1.0, return_norms=True)
  >>> summed, norms = grad_fn(params, tokens, example_weights=mask)
"""

from __future__ import annotations

import collections
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from libs.dp.clipping import _check_clip_norm, clip_factor, example_weight_array
from libs.models import lstm as lstm_lib


def _normalize_axes(axis, ndim):
  axes = (axis,) if isinstance(axis, int) else tuple(axis)
  return tuple(sorted(a % ndim for a in axes))


def _sq_norm_matmul(x, g):
  """Per-example squared Frobenius norm of sum_t x_t^T g_t; x [B, T, I], g [B, T, O]."""
  x, g = x.astype(jnp.float32), g.astype(jnp.float32)
  t, d_in, d_out = x.shape[1], x.shape[2], g.shape[2]
  if t * t <= d_in * d_out:
    return jnp.sum(jnp.einsum("bti,bsi->bts", x, x) * jnp.einsum("bto,bso->bts", g, g), axis=(1, 2))
  return jnp.sum(jnp.square(jnp.einsum("bti,bto->bio", x, g)), axis=(1, 2))


def _sq_norm_sum(g):
  """Per-example squared norm of sum_t g_t; g [B, T, O]."""
  return jnp.sum(jnp.square(jnp.sum(g.astype(jnp.float32), axis=1)), axis=-1)


class _Handler:
  """How one layer type exposes (inputs, output gradient) and turns them into norms and sums.

  `tokens(module, record, g)` returns a list of (x [B, T, I], g [B, T, O], kernel_name,
  bias_name) matmul views of the call; norms and sums then follow generically. Calls of
  the same layer are concatenated along T, so shared layers get their cross terms.
  """

  def call(self, module, next_fun, args, kwargs, perturbation):
    y = next_fun(*args, **kwargs)
    return y if perturbation is None else y + perturbation

  def perturbation_shape(self, module, args, output):
    return jax.ShapeDtypeStruct(output.shape, output.dtype)

  def params(self, module) -> list[str]:
    return ["kernel"] + (["bias"] if module.use_bias else [])

  def record(self, module, args, output):
    return args[0]


class _DenseHandler(_Handler):

  def views(self, module, inputs, g):
    x = inputs
    b = x.shape[0]
    if isinstance(module, nn.DenseGeneral):
      if module.batch_dims:
        raise ValueError("ghost clipping does not support DenseGeneral with batch_dims")
      axes = _normalize_axes(module.axis, x.ndim)
      if 0 in axes:
        raise ValueError("DenseGeneral may not contract the batch axis")
      kept = [a for a in range(x.ndim) if a not in axes]
      x = jnp.transpose(x, kept + list(axes))
      d_in = int(np.prod([inputs.shape[a] for a in axes]))
      features = (module.features,) if isinstance(module.features, int) else tuple(module.features)
      return [(x.reshape(b, -1, d_in), g.reshape(b, -1, int(np.prod(features))), "kernel",
               "bias" if module.use_bias else None)]
    return [(x.reshape(b, -1, x.shape[-1]), g.reshape(b, -1, g.shape[-1]), "kernel",
             "bias" if module.use_bias else None)]


class _ConvHandler(_Handler):

  def views(self, module, inputs, g):
    if module.feature_group_count != 1 or module.input_dilation not in (None, 1) or (
        module.kernel_dilation not in (None, 1)):
      raise ValueError("ghost clipping supports nn.Conv without feature groups or dilation only")
    if module.padding not in ("SAME", "VALID") and not isinstance(module.padding, (tuple, list)):
      raise ValueError(f"ghost clipping does not support Conv padding {module.padding!r}")
    kernel = tuple(module.kernel_size)
    spatial = len(kernel)
    strides = module.strides or 1
    strides = (strides,) * spatial if isinstance(strides, int) else tuple(strides)
    padding = module.padding
    if isinstance(padding, str):
      padding = jax.lax.padtype_to_pads(inputs.shape[1:1 + spatial], kernel, strides, padding)
    x = jnp.pad(inputs, [(0, 0)] + [tuple(p) for p in padding] + [(0, 0)])
    out_shape = g.shape[1:1 + spatial]
    # Patches by strided slicing (memory moves only), features ordered (*window, C_in) like
    # the kernel; `conv_general_dilated_patches` would cost a convolution of its own.
    slices = []
    for offset in np.ndindex(*kernel):
      index = tuple(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offset, strides, out_shape))
      slices.append(x[(slice(None),) + index])
    patches = jnp.stack(slices, axis=-2)  # [B, *out, window, C_in]
    b = inputs.shape[0]
    return [(patches.reshape(b, -1, int(np.prod(kernel)) * inputs.shape[-1]), g.reshape(b, -1, g.shape[-1]),
             "kernel", "bias" if module.use_bias else None)]


class _LSTMHandler(_Handler):

  def call(self, module, next_fun, args, kwargs, perturbation):
    if perturbation is None:
      return next_fun(*args, **kwargs)
    return next_fun(*args, gates_perturbation=perturbation, **kwargs)

  def perturbation_shape(self, module, args, output):
    x = args[0]
    d = 2 if module.bidirectional else 1
    return jax.ShapeDtypeStruct((x.shape[1], d, x.shape[0], 4 * module.hidden), jnp.float32)

  def params(self, module):
    return ["w_in", "w_hidden", "bias"]

  def record(self, module, args, output):
    return (args[0], args[1], output)

  def views(self, module, inputs, g):
    x, lengths, y = inputs
    h = module.hidden
    directions = []
    if module.bidirectional:
      directions = [(x, y[..., :h]), (lstm_lib.reverse_within_lengths(x, lengths),
                                      lstm_lib.reverse_within_lengths(y[..., h:], lengths))]
    else:
      directions = [(x, y)]
    out = []
    for d, (xd, hd) in enumerate(directions):
      h_prev = jnp.concatenate([jnp.zeros_like(hd[:, :1]), hd[:, :-1]], axis=1)  # processing order
      gd = jnp.transpose(g[:, d], (1, 0, 2))  # [B, T, 4H]
      out.append((xd, gd, ("w_in", d), ("bias", d)))
      out.append((h_prev, gd, ("w_hidden", d), None))
    return out


class _EmbedHandler(_Handler):

  def params(self, module):
    return ["embedding"]


class _LayerNormHandler(_Handler):

  def params(self, module):
    return [n for n, on in (("scale", module.use_scale), ("bias", module.use_bias)) if on]


_HANDLERS: dict[type, _Handler] = {
    nn.Dense: _DenseHandler(), nn.DenseGeneral: _DenseHandler(), nn.Conv: _ConvHandler(),
    lstm_lib.LSTM: _LSTMHandler(), nn.Embed: _EmbedHandler(), nn.LayerNorm: _LayerNormHandler(),
}


def _handler(module):
  return _HANDLERS.get(type(module))


class _Recorder:
  """Interceptor state: inputs and perturbation shapes of every supported layer call."""

  def __init__(self, perturbations=None):
    self.perturbations = perturbations
    self.inputs: dict[tuple, Any] = {}
    self.shapes: dict[tuple, Any] = {}
    self.modules: dict[tuple, nn.Module] = {}
    self._calls = collections.Counter()

  def __call__(self, next_fun, args, kwargs, context):
    module = context.module
    handler = _handler(module)
    if context.method_name != "__call__" or handler is None:
      return next_fun(*args, **kwargs)
    path = tuple(module.path)
    key = (path, self._calls[path])
    self._calls[path] += 1
    perturbation = None if self.perturbations is None else self.perturbations[key]
    y = handler.call(module, next_fun, args, kwargs, perturbation)
    self.inputs[key] = handler.record(module, args, y)
    self.modules[key] = module
    self.shapes[key] = handler.perturbation_shape(module, args, y)
    return y


def _embed_terms(ids, g, scale, num_embeddings):
  ids = ids.reshape(ids.shape[0], -1)
  g = g.reshape(ids.shape + (g.shape[-1],)).astype(jnp.float32)
  if scale is None:
    same = (ids[:, :, None] == ids[:, None, :]).astype(jnp.float32)
    return jnp.einsum("bts,bto,bso->b", same, g, g)
  return jnp.zeros((num_embeddings, g.shape[-1]), jnp.float32).at[ids.reshape(-1)].add(
      (g * scale[:, None, None]).reshape(-1, g.shape[-1]))


def _layernorm_per_example(module, x, g):
  if _normalize_axes(module.reduction_axes, x.ndim) != (x.ndim - 1,) or (
      _normalize_axes(module.feature_axes, x.ndim) != (x.ndim - 1,)):
    raise ValueError("ghost clipping supports LayerNorm over the last axis only")
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
  xhat = ((xf - mean) * jax.lax.rsqrt(var + module.epsilon)).reshape(x.shape[0], -1, x.shape[-1])
  g = g.reshape(xhat.shape).astype(jnp.float32)
  out = {}
  if module.use_scale:
    out["scale"] = jnp.sum(g * xhat, axis=1)
  if module.use_bias:
    out["bias"] = jnp.sum(g, axis=1)
  return out


def _layer(module, calls, scale):
  """Per-example squared norms [B] (scale None) or the clipped parameter sums of one layer
  over all its calls `[(inputs, g), ...]`."""
  handler = _handler(module)
  if isinstance(module, nn.Embed):
    ids = jnp.concatenate([i.reshape(i.shape[0], -1) for i, _ in calls], 1)
    g = jnp.concatenate([g.reshape(g.shape[0], -1, g.shape[-1]) for _, g in calls], 1)
    out = _embed_terms(ids, g, scale, module.num_embeddings)
    return out if scale is None else {"embedding": out}
  if isinstance(module, nn.LayerNorm):
    per = collections.defaultdict(lambda: 0)
    for x, g in calls:
      for k, v in _layernorm_per_example(module, x, g).items():
        per[k] = per[k] + v
    if scale is None:
      return sum(jnp.sum(jnp.square(v), axis=-1) for v in per.values())
    return {k: jnp.einsum("bd,b->d", v, scale) for k, v in per.items()}
  # Matmul-like layers: gather views per parameter and concatenate calls along T.
  kernel_views, bias_views = collections.defaultdict(list), collections.defaultdict(list)
  for inputs, g in calls:
    for x, gv, kname, bname in handler.views(module, inputs, g):
      kernel_views[kname].append((x, gv))
      if bname is not None:
        bias_views[bname].append(gv)
  cat = lambda parts: jnp.concatenate(parts, axis=1)
  if scale is None:
    sq = 0.0
    for parts in kernel_views.values():
      sq = sq + _sq_norm_matmul(cat([p[0] for p in parts]), cat([p[1] for p in parts]))
    for parts in bias_views.values():
      sq = sq + _sq_norm_sum(cat(parts))
    return sq
  sums = {}
  for name, parts in kernel_views.items():
    x, g = cat([p[0] for p in parts]), cat([p[1] for p in parts])
    sums[name] = jnp.einsum("bti,bto,b->io", x, g.astype(x.dtype), scale.astype(x.dtype))
  for name, parts in bias_views.items():
    sums[name] = jnp.einsum("bto,b->o", cat(parts), scale.astype(parts[0].dtype))
  return sums


def _assign(module, layer_params: dict, sums: dict) -> dict:
  """Places a layer's clipped sums into the shapes of its parameters."""
  out = {k: jnp.zeros_like(v) for k, v in layer_params.items()}
  for name, value in sums.items():
    if isinstance(name, tuple):  # (param, direction) of the LSTM.
      pname, d = name
      out[pname] = out[pname].at[d].add(value.reshape(out[pname].shape[1:]).astype(out[pname].dtype))
    else:
      out[name] = value.reshape(out[name].shape).astype(out[name].dtype)
  return out


def _param_paths(params) -> set[tuple]:
  return {tuple(k.key for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}


def ghost_clipped_grad(
    per_example_loss_fn: Callable[..., jax.Array],
    *,
    l2_clip_norm: float,
    return_norms: bool = False,
) -> Callable[..., Any]:
  """Like `libs.dp.clipped_grad`, for models built from the supported layers.

  Args:
    per_example_loss_fn: `(params, *batch) -> [B]` losses of each example; it must apply
      the flax model(s) inside (so the layers can be intercepted).
    l2_clip_norm: per-example L2 bound; `float("inf")` disables clipping.
    return_norms: also return per-example unclipped gradient norms.

  Returns:
    `grad_fn(params, *batch, example_weights=None) -> grads` (or `(grads, norms)`), the
    sum of clipped per-example gradients, in the structure of `params`. `example_weights`
    [B] must lie in [0, 1]: invalid concrete weights raise ValueError, invalid traced ones
    make the compiled call fail when it runs (see `clipping._check_example_weights`).
  """
  # Long mostly by its docstring; the body builds one jitted function.
  _check_clip_norm(l2_clip_norm)

  def run(params, batch, perturbations):
    recorder = _Recorder(perturbations)
    with nn.intercept_methods(recorder):
      losses = per_example_loss_fn(params, *batch)
    return losses, recorder

  def grad_fn(params, *batch, example_weights=None):
    shapes = {}

    def probe(params, *batch):
      losses, recorder = run(params, batch, None)
      shapes.update(recorder.shapes)
      return losses

    out = jax.eval_shape(probe, params, *batch)  # Discovers the layer calls; no FLOPs.
    if out.ndim != 1:
      raise ValueError(f"per_example_loss_fn must return per-example losses [B], got shape {out.shape}")
    size = out.shape[0]
    weights = example_weight_array(example_weights, size)
    zeros = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}

    def total_loss(perturbations):
      losses, recorder = run(params, batch, perturbations)
      return jnp.sum(jnp.where(weights > 0, losses, 0.0)), (recorder.inputs, recorder.modules)

    out_grads, (inputs, modules) = jax.grad(total_loss, has_aux=True)(zeros)

    layers = collections.defaultdict(list)
    for key in inputs:
      layers[key[0]].append(key)
    flat = params["params"] if isinstance(params, dict) and "params" in params else params
    covered = {path + (name,) for path, keys in layers.items()
               for name in _handler(modules[keys[0]]).params(modules[keys[0]])}
    missing = _param_paths(flat) - covered
    if missing:
      raise ValueError("ghost clipping cannot cover these parameters (unsupported layers): "
                       f"{sorted('/'.join(map(str, p)) for p in missing)}; use libs.dp.clipped_grad")

    calls = {path: [(inputs[k], out_grads[k]) for k in keys] for path, keys in layers.items()}
    sq = jnp.zeros((size,), jnp.float32)
    for path, keys in layers.items():
      sq = sq + _layer(modules[keys[0]], calls[path], None)
    norms = jnp.sqrt(sq)
    scale = jnp.where(weights > 0, clip_factor(norms, l2_clip_norm) * weights, 0.0)

    grads = jax.tree.map(jnp.zeros_like, flat)
    for path, keys in layers.items():
      node = grads
      for name in path[:-1]:
        node = node[name]
      module = modules[keys[0]]
      node[path[-1]] = _assign(module, node[path[-1]], _layer(module, calls[path], scale))
    if flat is not params:
      grads = {"params": grads}
    return (grads, norms) if return_norms else grads

  return grad_fn
