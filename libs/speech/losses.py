"""Sequence losses for speech recognition: RNN-Transducer and CTC.

RNN-T lattice (Graves, 2012). For one example with ``t_b`` encoder frames and
``u_b`` labels ``y_1..y_{u_b}``, the joint network gives a distribution
``log_probs[t, u, :]`` at every lattice node ``(t, u)``, ``0 <= t < t_b``,
``0 <= u <= u_b``. From node ``(t, u)`` an alignment either emits a blank and
moves to ``(t + 1, u)`` or emits ``y_{u+1}`` and moves to ``(t, u + 1)``. Every
alignment starts at ``(0, 0)`` and ends with the blank emitted from
``(t_b - 1, u_b)``. The forward variable is::

  alpha[0, 0] = 0
  alpha[t, u] = logaddexp(alpha[t - 1, u] + log_probs[t - 1, u, blank],
                          alpha[t, u - 1] + log_probs[t, u - 1, y_u])
  loss = -(alpha[t_b - 1, u_b] + log_probs[t_b - 1, u_b, blank])

Why anti-diagonals: ``alpha[t, u]`` only depends on nodes on the previous
anti-diagonal ``n - 1`` where ``n = t + u``. Every node of diagonal ``n`` can
therefore be computed at once, so the recursion needs ``T + U`` sequential
steps, each vectorized over the batch and ``u``, instead of ``T * U`` scalar
steps. To make every step read a contiguous slice, the per-node blank/emit
log-probs are first "skewed" into ``[T + U, B, U + 1]`` arrays indexed by
``(n, b, u)`` with ``t = n - u``; out-of-lattice cells hold a large finite
negative number rather than ``-inf`` so that neither values nor gradients can
become NaN.

The gradient is computed analytically (``jax.custom_vjp``) from the forward
and backward variables: the posterior of a transition ``s`` out of node
``(t, u)`` is ``exp(alpha[t, u] + s + beta[next] - logZ)``, and the chain rule
through ``log_softmax`` gives ``p * occupancy - posterior`` per logit. This is
both faster and lighter than differentiating through the scan.

Example:
  >>> logits = jnp.zeros((2, 10, 4, 8))  # [B, T, U + 1, V]
  >>> labels = jnp.ones((2, 3), jnp.int32)
  >>> nll = rnnt_loss(logits, jnp.array([10, 7]), labels, jnp.array([3, 1]))
  >>> nll.shape
  (2,)
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

# Stand-in for log(0). Finite so that `x - x` and `0 * x` stay finite; values
# are clamped to it after every step so sums of several of them cannot grow.
_NEG = -1e30


def _as_arrays(*xs: Any) -> tuple[jnp.ndarray, ...]:
  return tuple(jnp.asarray(x) for x in xs)


def _check_lengths(name: str, x: jnp.ndarray, batch: int) -> None:
  if x.shape != (batch,):
    raise ValueError(
        f'{name} must have shape [B] = ({batch},), got {x.shape}.')
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError(f'{name} must be an integer array, got {x.dtype}.')


def _checked(logits: Any, logit_lengths: Any, labels: Any, label_lengths: Any,
             blank_id: int, *, transducer: bool) -> tuple[jnp.ndarray, ...]:
  """The four arrays; ValueError (naming the argument) if inconsistent.

  The transducer's logits are [B, T, U + 1, V] and its labels [B, U]; CTC's
  logits are [B, T, V] and its labels [B, N] for any N.
  """
  logits, logit_lengths, labels, label_lengths = _as_arrays(
      logits, logit_lengths, labels, label_lengths)
  rank, layout = (4, '[B, T, U + 1, V]') if transducer else (3, '[B, T, V]')
  if logits.ndim != rank:
    raise ValueError(
        f'logits must be rank {rank} {layout}, got shape {logits.shape}.')
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(f'logits must be floating point, got {logits.dtype}.')
  batch, vocab = logits.shape[0], logits.shape[-1]
  if transducer and min(logits.shape[1:]) < 1:
    raise ValueError(f'logits must have non-empty T, U + 1 and V dimensions, '
                     f'got shape {logits.shape}.')
  label_layout = '[B, U]' if transducer else '[B, N]'
  if labels.ndim != 2:
    raise ValueError(
        f'labels must be rank 2 {label_layout}, got shape {labels.shape}.')
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f'labels must be an integer array, got {labels.dtype}.')
  if labels.shape[0] != batch:
    raise ValueError(f'labels batch size {labels.shape[0]} must equal logits '
                     f'batch size {batch}.')
  if transducer and labels.shape[1] != logits.shape[2] - 1:
    raise ValueError(f'labels.shape[1] ({labels.shape[1]}) must equal '
                     f'logits.shape[2] - 1 ({logits.shape[2] - 1}).')
  _check_lengths('logit_lengths', logit_lengths, batch)
  _check_lengths('label_lengths', label_lengths, batch)
  if not 0 <= blank_id < vocab:
    raise ValueError(f'blank_id must be in [0, V={vocab}), got {blank_id}.')
  return logits, logit_lengths, labels, label_lengths


def _prepare(
    logits: jnp.ndarray, logit_lengths: jnp.ndarray, labels: jnp.ndarray,
    label_lengths: jnp.ndarray, *, mask_logits: bool = True
) -> tuple[jnp.ndarray, ...]:
  """Masks padding; shared by both implementations.

  Args:
    logits: [B, T, U + 1, V] floating.
    logit_lengths: [B] int.
    labels: [B, U] int.
    label_lengths: [B] int.
    mask_logits: zero the logits of padded nodes.

  Returns:
    A tuple of
      logits: [B, T, U+1, V] in the compute dtype (padded nodes zeroed if
        `mask_logits`),
      labels_ext: [B, U+1] in-range label ids (last column is a dummy),
      t_len, u_len: [B] clipped lengths,
      node_valid: [B, T, U+1] lattice nodes of each example,
      blank_ok, emit_ok: [B, T, U+1] transitions on some valid path.
  """
  _, max_t, max_u1, vocab = logits.shape
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  # Out-of-range lengths are clipped rather than allowed to index garbage.
  t_len = jnp.clip(logit_lengths.astype(jnp.int32), 1, max_t)
  u_len = jnp.clip(label_lengths.astype(jnp.int32), 0, max_u1 - 1)
  t = jnp.arange(max_t)[None, :, None]
  u = jnp.arange(max_u1)[None, None, :]
  tl = t_len[:, None, None]
  ul = u_len[:, None, None]
  node_valid = (t < tl) & (u <= ul)
  blank_ok = ((t < tl - 1) & (u <= ul)) | ((t == tl - 1) & (u == ul))
  emit_ok = (t < tl) & (u < ul)
  logits = logits.astype(dtype)
  if mask_logits:
    # Under autodiff, garbage (even inf) in padded logits would otherwise give
    # NaN * 0 = NaN in the gradient.
    logits = jnp.where(node_valid[..., None], logits, 0)
  # Padded label ids are arbitrary: clip so gathers stay in range; the extra
  # last column (u = U) has no label to emit.
  labels_ext = jnp.pad(jnp.clip(labels.astype(jnp.int32), 0, vocab - 1),
                       ((0, 0), (0, 1)))
  return logits, labels_ext, t_len, u_len, node_valid, blank_ok, emit_ok


def _logaddexp(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  # Plain formula: inputs are always finite here, so jnp.logaddexp's inf/NaN
  # handling (and its custom JVP) is unnecessary overhead.
  m = jnp.maximum(a, b)
  return m + jnp.log1p(jnp.exp(-jnp.abs(a - b)))


def _skew(x: jnp.ndarray) -> jnp.ndarray:
  """[B, T, U1] -> [T + U1 - 1, B, U1] with out[n, b, u] = x[b, n - u, u]."""
  _, max_t, max_u1 = x.shape
  n = jnp.arange(max_t + max_u1 - 1)[:, None]
  u = jnp.arange(max_u1)[None, :]
  t = n - u
  in_range = (t >= 0) & (t < max_t)
  skewed = x[:, jnp.clip(t, 0, max_t - 1), u]  # [B, N, U1]
  skewed = jnp.where(in_range[None], skewed, _NEG)
  return jnp.transpose(skewed, (1, 0, 2))


def _unskew(x: jnp.ndarray, max_t: int) -> jnp.ndarray:
  """Inverse of `_skew`: [N, B, U1] -> [B, T, U1]."""
  max_u1 = x.shape[2]
  t = jnp.arange(max_t)[:, None]
  u = jnp.arange(max_u1)[None, :]
  return jnp.transpose(x, (1, 0, 2))[:, t + u, u]


def _shift_right(x: jnp.ndarray) -> jnp.ndarray:
  """out[:, u] = x[:, u - 1], out[:, 0] = _NEG."""
  return jnp.pad(x[:, :-1], ((0, 0), (1, 0)), constant_values=_NEG)


def _shift_left(x: jnp.ndarray) -> jnp.ndarray:
  """out[..., u] = x[..., u + 1], out[..., -1] = _NEG."""
  pad = [(0, 0)] * (x.ndim - 1) + [(0, 1)]
  return jnp.pad(x[..., 1:], pad, constant_values=_NEG)


def _rnnt_forward(
    logits: jnp.ndarray, logit_lengths: jnp.ndarray, labels: jnp.ndarray,
    label_lengths: jnp.ndarray, blank_id: int
) -> tuple[jnp.ndarray, tuple[jnp.ndarray, ...]]:
  """Diagonal alpha recursion; returns (nll [B], residuals for backward)."""
  batch, max_t, max_u1, _ = logits.shape
  x, labels_ext, t_len, u_len, _, blank_ok, emit_ok = _prepare(
      logits, logit_lengths, labels, label_lengths, mask_logits=False)
  # Only two log-probs per node are needed, so never materialize the full
  # log_softmax: gather two logits and subtract the log-normalizer. Padded
  # nodes are not masked here (that would materialize a logits-sized copy);
  # whatever they produce is discarded by the `where`s below and in the
  # backward pass.
  x_max = jnp.max(x, axis=-1, keepdims=True)
  lse = (x_max + jnp.log(jnp.sum(jnp.exp(x - x_max), axis=-1,
                                 keepdims=True)))[..., 0]  # [B, T, U1]
  blank = jnp.where(blank_ok, x[..., blank_id] - lse, _NEG)
  emit = jnp.take_along_axis(x, labels_ext[:, None, :, None], axis=-1)[..., 0]
  emit = jnp.where(emit_ok, emit - lse, _NEG)
  blank_sk = _skew(blank)  # [N, B, U1], N = T + U
  emit_sk = _skew(emit)

  def step(alpha, trans):
    blank_prev, emit_prev = trans  # Transitions out of diagonal n - 1.
    alpha = _logaddexp(alpha + blank_prev, _shift_right(alpha + emit_prev))
    alpha = jnp.maximum(alpha, _NEG)
    return alpha, alpha

  alpha0 = jnp.full((batch, max_u1), _NEG, blank.dtype).at[:, 0].set(0.0)
  _, alphas = jax.lax.scan(step, alpha0, (blank_sk[:-1], emit_sk[:-1]))
  alphas = jnp.concatenate([alpha0[None], alphas], axis=0)  # [N, B, U1]

  b_idx = jnp.arange(batch)
  log_z = (alphas[t_len - 1 + u_len, b_idx, u_len] +
           blank[b_idx, t_len - 1, u_len])
  residuals = (logits, lse, blank_sk, emit_sk, alphas, log_z, labels_ext,
               t_len, u_len)
  return -log_z, residuals


def _rnnt_backward(
    blank_id: int, residuals: tuple[jnp.ndarray, ...], g: jnp.ndarray
) -> tuple[jnp.ndarray, None, None, None]:
  """Beta recursion plus analytic gradient w.r.t. logits (only)."""
  (logits, lse, blank_sk, emit_sk, alphas, log_z, labels_ext, t_len,
   u_len) = residuals
  num_diag, _, max_u1 = alphas.shape
  max_t = logits.shape[1]
  u = jnp.arange(max_u1)[None, :]
  # beta at the virtual node (t_b, u_b) reached by the final blank is 0; this
  # makes the final blank an ordinary transition in the recursion below.
  end_diag = (t_len + u_len)[:, None]
  is_end = u == u_len[:, None]

  def step(beta_next, xs):
    n, blank_n, emit_n = xs
    beta = _logaddexp(blank_n + beta_next, emit_n + _shift_left(beta_next))
    beta = jnp.maximum(beta, _NEG)
    beta = jnp.where((end_diag == n) & is_end, 0.0, beta)
    return beta, beta_next

  beta_last = jnp.where((end_diag == num_diag) & is_end, 0.0, _NEG)
  beta_last = beta_last.astype(alphas.dtype)
  # betas_next[n] = beta on diagonal n + 1, i.e. after the transition.
  _, betas_next = jax.lax.scan(
      step, beta_last, (jnp.arange(num_diag), blank_sk, emit_sk), reverse=True)
  # Transition posteriors, computed outside the loop in one vectorized pass.
  # They are <= 1 up to rounding; the clamp only guards exp against overflow.
  log_z = log_z[:, None, None]
  post_b = jnp.exp(jnp.minimum(_unskew(alphas + blank_sk + betas_next, max_t) -
                               log_z, 0.0))[..., None]  # [B, T, U1, 1]
  post_e = jnp.exp(jnp.minimum(
      _unskew(alphas + emit_sk + _shift_left(betas_next), max_t) - log_z,
      0.0))[..., None]
  # Materialize the per-node posteriors: otherwise XLA fuses their gathers
  # and exps into the per-logit loop below and redoes them V times.
  post_b, post_e = jax.lax.optimization_barrier((post_b, post_e))
  x, _, _, _, node_valid, _, _ = _prepare(
      logits, t_len, labels_ext[:, :-1], u_len, mask_logits=False)
  probs = jnp.exp(x - lse[..., None])  # May be NaN at padded nodes; masked.
  vocab = jnp.arange(logits.shape[-1])
  # d(-logZ)/d logits = p * node occupancy - sum of transition posteriors.
  grad = (probs * (post_b + post_e) -
          jnp.where(vocab == blank_id, post_b, 0.0) -
          jnp.where(vocab == labels_ext[:, None, :, None], post_e, 0.0))
  grad = jnp.where(node_valid[..., None], grad * g[:, None, None, None], 0.0)
  return grad.astype(logits.dtype), None, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _rnnt_nll(logits: jnp.ndarray, logit_lengths: jnp.ndarray,
              labels: jnp.ndarray, label_lengths: jnp.ndarray,
              blank_id: int) -> jnp.ndarray:
  return _rnnt_forward(logits, logit_lengths, labels, label_lengths,
                       blank_id)[0]


def _rnnt_nll_fwd(
    logits: jnp.ndarray, logit_lengths: jnp.ndarray, labels: jnp.ndarray,
    label_lengths: jnp.ndarray, blank_id: int
) -> tuple[jnp.ndarray, tuple[jnp.ndarray, ...]]:
  return _rnnt_forward(logits, logit_lengths, labels, label_lengths, blank_id)


_rnnt_nll.defvjp(_rnnt_nll_fwd, _rnnt_backward)


@functools.partial(jax.jit, static_argnames=('blank_id',))
def rnnt_loss(logits: jnp.ndarray,
              logit_lengths: jnp.ndarray,
              labels: jnp.ndarray,
              label_lengths: jnp.ndarray,
              *,
              blank_id: int = 0) -> jnp.ndarray:
  """RNN-Transducer negative log-likelihood, one anti-diagonal per step.

  Computed in float32 (float64 if the logits are float64). Positions with
  ``t >= logit_lengths[b]`` or ``u > label_lengths[b]`` are ignored and get
  exactly zero gradient, whatever they hold.

  Args:
    logits: [B, T, U + 1, V] unnormalized joint-network outputs.
    logit_lengths: [B] int, valid encoder frames, ``1 <= t_b <= T`` (clipped
      into that range).
    labels: [B, U] int label ids; values past ``label_lengths`` are ignored.
    label_lengths: [B] int, ``0 <= u_b <= U`` (clipped into that range).
    blank_id: index of the blank symbol in V.

  Returns:
    [B] float32 loss in nats per example.

  Raises:
    ValueError: if shapes or dtypes are inconsistent (names the argument).

  Example:
    >>> logits = jax.random.normal(jax.random.key(0), (1, 5, 3, 4))
    >>> loss = rnnt_loss(logits, jnp.array([5]), jnp.array([[1, 2]]),
    ...                  jnp.array([2]))
    >>> grads = jax.grad(lambda x: rnnt_loss(
    ...     x, jnp.array([5]), jnp.array([[1, 2]]), jnp.array([2])).sum())(
    ...         logits)
  """
  logits, logit_lengths, labels, label_lengths = _checked(
      logits, logit_lengths, labels, label_lengths, blank_id, transducer=True)
  return _rnnt_nll(logits, logit_lengths, labels, label_lengths, blank_id)


@functools.partial(jax.jit, static_argnames=('blank_id',))
def rnnt_loss_naive(logits: jnp.ndarray,
                    logit_lengths: jnp.ndarray,
                    labels: jnp.ndarray,
                    label_lengths: jnp.ndarray,
                    *,
                    blank_id: int = 0) -> jnp.ndarray:
  """Reference RNN-T loss: node-by-node DP, gradient by autodiff.

  Same contract as `rnnt_loss` but with a scan over t nesting a scan over u,
  i.e. ``T * (U + 1)`` sequential steps. Kept as a baseline for tests and
  benchmarks; use `rnnt_loss` in training.

  Args:
    logits: [B, T, U + 1, V] unnormalized joint-network outputs.
    logit_lengths: [B] int, ``1 <= t_b <= T``.
    labels: [B, U] int label ids.
    label_lengths: [B] int, ``0 <= u_b <= U``.
    blank_id: index of the blank symbol in V.

  Returns:
    [B] float32 loss in nats per example.

  Example:
    >>> logits = jnp.zeros((1, 4, 2, 3))
    >>> rnnt_loss_naive(logits, jnp.array([4]), jnp.array([[1]]),
    ...                 jnp.array([1])).shape
    (1,)
  """
  logits, logit_lengths, labels, label_lengths = _checked(
      logits, logit_lengths, labels, label_lengths, blank_id, transducer=True)
  batch, max_t, max_u1, _ = logits.shape
  x, labels_ext, t_len, u_len, _, blank_ok, emit_ok = _prepare(
      logits, logit_lengths, labels, label_lengths)
  log_probs = jax.nn.log_softmax(x, axis=-1)
  blank = jnp.where(blank_ok, log_probs[..., blank_id], _NEG)
  emit = jnp.take_along_axis(
      log_probs, labels_ext[:, None, :, None], axis=-1)[..., 0]
  emit = jnp.where(emit_ok, emit, _NEG)
  blank_tbu = jnp.transpose(blank, (1, 0, 2))  # [T, B, U1]
  emit_tbu = jnp.transpose(emit, (1, 0, 2))
  # Virtual row t = -1 whose only live entry feeds alpha[0, 0] = 0.
  row0 = jnp.full((batch, max_u1), _NEG, blank.dtype).at[:, 0].set(0.0)
  blank_above = jnp.concatenate([jnp.zeros_like(row0)[None], blank_tbu[:-1]])

  def t_step(alpha_above, xs):
    blank_row_above, emit_row = xs
    from_above = alpha_above + blank_row_above  # [B, U1]

    def u_step(from_left, ys):
      above_u, emit_u = ys  # [B] each.
      alpha_u = jnp.maximum(jnp.logaddexp(above_u, from_left), _NEG)
      return alpha_u + emit_u, alpha_u

    init_left = jnp.full((batch,), _NEG, blank.dtype)
    _, row = jax.lax.scan(u_step, init_left, (from_above.T, emit_row.T))
    row = row.T  # [B, U1]
    return row, row

  _, alphas = jax.lax.scan(t_step, row0, (blank_above, emit_tbu))  # [T,B,U1]
  b_idx = jnp.arange(batch)
  log_z = alphas[t_len - 1, b_idx, u_len] + blank[b_idx, t_len - 1, u_len]
  return -log_z


@functools.partial(jax.jit, static_argnames=('blank_id',))
def ctc_loss(logits: jnp.ndarray,
             logit_lengths: jnp.ndarray,
             labels: jnp.ndarray,
             label_lengths: jnp.ndarray,
             *,
             blank_id: int = 0) -> jnp.ndarray:
  """CTC negative log-likelihood per example, via `optax.ctc_loss`.

  optax takes padding indicators instead of lengths; they are built as
  ``logit_paddings[b, t] = 1.0 if t >= logit_lengths[b]`` and
  ``label_paddings[b, n] = 1.0 if n >= label_lengths[b]`` (right padding).
  Padded frames are zeroed and padded label ids replaced by -1 first so that
  garbage there cannot leak into the result. Note that optax approximates
  log(0) by -1e5, so an infeasible example (too few frames for the labels and
  their forced blanks between repeats) gets a large finite loss.

  Args:
    logits: [B, T, V] unnormalized per-frame logits.
    logit_lengths: [B] int, valid frames per example.
    labels: [B, N] int label ids (no blanks), right-padded.
    label_lengths: [B] int, valid labels per example.
    blank_id: the blank's index in V.

  Returns:
    [B] float32 loss in nats per example; ValueError naming the argument if
    shapes or dtypes are inconsistent.

  Example:
    >>> logits = jnp.zeros((2, 6, 5))
    >>> ctc_loss(logits, jnp.array([6, 4]), jnp.array([[1, 2], [3, 0]]),
    ...          jnp.array([2, 1])).shape
    (2,)
  """
  logits, logit_lengths, labels, label_lengths = _checked(
      logits, logit_lengths, labels, label_lengths, blank_id, transducer=False)
  max_t = logits.shape[1]
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  frame_pad = jnp.arange(max_t)[None, :] >= logit_lengths[:, None]
  label_pad = jnp.arange(labels.shape[1])[None, :] >= label_lengths[:, None]
  logits = jnp.where(frame_pad[..., None], 0, logits.astype(dtype))
  # -1 one-hot encodes to zeros and never equals a real label, so padding
  # cannot create a spurious "repeat" with the last valid label.
  labels = jnp.where(label_pad, -1, labels)
  return optax.ctc_loss(logits, frame_pad.astype(dtype), labels,
                        label_pad.astype(dtype), blank_id=blank_id)
