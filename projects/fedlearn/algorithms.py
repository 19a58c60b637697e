"""Federated algorithms as pure functions, in the spirit of FedJAX.

An algorithm is a pair of pure functions (`FedAlgorithm`):

  init(params) -> server_state
  apply(server_state, clients, weights, key) -> (server_state, per-client diagnostics [C])

A client update is a pure function of (params, the client's padded examples, its mask,
a key): local SGD over the real examples only, returning the model delta. All clients of
one round run as ONE vmapped computation (optionally a `lax.scan` over chunks of clients to
bound memory); `rounds.build_round` jits it on a Mesh with the client axis sharded.

Algorithms (the server treats `-sum_k w_k delta_k` as a pseudo-gradient, Reddi et al. 2021):
  * fedavg   server SGD (lr 1 = plain FedAvg, McMahan et al. 2017), weights from `selection`.
  * fedprox  local objective + mu/2 ||w - w_global||^2 (Li et al. 2020).
  * fedopt   server Adam / Yogi / Adagrad through optax (Reddi et al. 2021).
  * scaffold control variates, option II of Karimireddy et al. 2020. Client variates c_i
    live on the host (`rounds.ControlVariateStore`, only for devices that have
    participated: never-seen devices have c_i = 0), so 100,000 registered devices cost
    memory only for those actually sampled.
  * DP-FedAvg (any algorithm but scaffold, with `DPConfig`): per-device delta clipped to L2
    norm C (fixed, or adaptive quantile clipping of Andrew et al. 2021 with a noisy
    clipped count), unit weights, Gaussian noise N(0, (z C)^2) on the sum, divided by the
    expected number of participating devices (McMahan et al. 2018). Accounting: `privacy`.

Example:
  >>> alg = make_algorithm("fedavg", loss_fn, ClientConfig(learning_rate=0.1, num_epochs=1))
  >>> state = alg.init(params)
  >>> state, diag = alg.apply(state, clients, weights, jax.random.key(0))
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from libs.dp import tree_l2_norm

Params = Any
LossFn = Callable[..., jax.Array]  # (params, *example_arrays [N, ...]) -> per-example losses [N]

# Local steps are unrolled up to this many: on CPU, XLA runs the vmapped (per-client weight)
# convolutions of a while-loop body ~30x slower than the same ops unrolled (measured on the
# intent model: 64 clients x 1 full-batch step 6.6 s in a scan, 0.23 s unrolled).
MAX_UNROLLED_STEPS = 32

ALGORITHMS = ("fedavg", "fedprox", "fedopt", "scaffold")
SERVER_OPTIMIZERS = ("sgd", "adam", "yogi", "adagrad")


@dataclasses.dataclass(frozen=True)
class ClientConfig:
  """Local training of one client.

  `num_steps > 0`: that many SGD steps, each on `batch_size` examples taken in turn from a
  fresh random order of the client's real examples (wrapping around). Otherwise
  `num_epochs` passes over the real examples in random order, in batches of `batch_size`
  (0 = all of them: full-batch gradient descent). A client with more examples takes more
  steps in epoch mode, as in FedAvg. Padding never contributes.
  """
  learning_rate: float = 0.1
  num_epochs: int = 1
  batch_size: int = 0
  num_steps: int = 0
  prox_mu: float = 0.0


@dataclasses.dataclass(frozen=True)
class DPConfig:
  """DP-FedAvg aggregation (McMahan et al. 2018; adaptive clipping: Andrew et al. 2021).

  noise_multiplier is z of the delta sum (std z * C); with adaptive clipping the clipped
  count sum_i (b_i - 1/2), b_i = [||delta_i|| <= C], gets noise std `count_noise_std` (its
  sensitivity is 1/2), the clip norm moves as C <- C exp(-lr (b_noisy - target_quantile)), and
  `privacy.split_noise_multiplier` picks z so that the pair is as private as one
  Gaussian of the accounted multiplier. Adaptive clipping needs `count_noise_std > 0`: the
  exact count would steer the clip norm (and so every later release) with no accounting,
  so there is no noiseless default. `expected_clients` must be a public (configured)
  quantity, never the realised number of participants.
  """
  clip_norm: float
  noise_multiplier: float
  expected_clients: float
  adaptive: bool = False
  target_quantile: float = 0.5
  clip_learning_rate: float = 0.2
  count_noise_std: float | None = None

  def __post_init__(self):
    for name in ("clip_norm", "noise_multiplier", "expected_clients", "clip_learning_rate"):
      value = getattr(self, name)
      if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"DPConfig.{name} must be a finite number >= 0, got {value!r}")
    if not self.clip_norm > 0 or not self.expected_clients > 0:
      raise ValueError(f"DPConfig.clip_norm and expected_clients must be > 0, got {self.clip_norm}, "
                       f"{self.expected_clients}")
    if not 0 <= self.target_quantile <= 1:
      raise ValueError(f"DPConfig.target_quantile must be in [0, 1], got {self.target_quantile}")
    if self.adaptive and not (self.count_noise_std is not None and self.count_noise_std > 0):
      raise ValueError("DPConfig(adaptive=True) needs count_noise_std > 0: a noiseless clipped count steers the "
                       f"clip norm with no privacy accounting; got count_noise_std={self.count_noise_std!r}")


def check_dp_weights(weights) -> None:
  """Raises ValueError unless every DP aggregation weight is 0 or 1 (sensitivity C per device).

  Example:
    >>> check_dp_weights(np.array([1.0, 0.0, 1.0]))
  """
  w = np.asarray(weights)
  bad = ~((w == 0) | (w == 1))
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(f"DP-FedAvg weights must be 0 or 1 (a device's clipped delta enters the noisy sum at most "
                     f"once); weight {i} is {float(w.flat[i])} ({int(bad.sum())} invalid)")


@flax.struct.dataclass
class ServerState:
  round: jax.Array      # int32 rounds applied
  params: Params
  opt_state: Any
  control: Any          # SCAFFOLD server control variate c (a scalar 0 otherwise)
  clip_norm: jax.Array  # DP clip norm C (adaptive clipping changes it; 0 without DP)


class Clients(NamedTuple):
  """A padded batch of clients; every array has a leading client axis [C].

  data: tuple of per-example arrays [C, N, ...] passed to the loss after params.
  mask: float32 [C, N], 1 = real example.
  ids: int32 [C], device ids: a client's key is fold_in(round key, id), so its local
    randomness does not depend on its position in the batch or on padding.
  control: SCAFFOLD client control variates (pytree like params with leading [C]) or None.
  """
  data: tuple
  mask: jax.Array
  ids: jax.Array
  control: Any = None


class FedAlgorithm(NamedTuple):
  init: Callable[[Params], ServerState]
  apply: Callable[..., tuple[ServerState, dict]]
  client_update: Callable[..., tuple[Params, dict]]  # single client, unbatched (reference)
  server_update: Callable[..., tuple[ServerState, dict]]  # from per-round sums
  name: str
  dp: DPConfig | None = None


def _tree_dot(weights: jax.Array, tree: Any) -> Any:
  """sum_k weights[k] * tree[k] over the leading axis, in float32."""
  return jax.tree.map(lambda x: jnp.tensordot(weights.astype(jnp.float32), x.astype(jnp.float32), axes=1), tree)


def masked_mean_loss(loss_fn: LossFn, params: Params, data: tuple, mask: jax.Array) -> jax.Array:
  """Mean per-example loss over real examples (0 when there are none).

  Example:
    >>> masked_mean_loss(loss_fn, params, (x, y), mask)
  """
  losses = loss_fn(params, *data)
  return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _local_schedule(cfg: ClientConfig, num_padded: int) -> tuple[int, int, int]:
  batch = min(cfg.batch_size or num_padded, num_padded)
  if cfg.num_steps > 0:
    return batch, cfg.num_steps, 0
  per_epoch = -(-num_padded // batch)
  return batch, cfg.num_epochs * per_epoch, per_epoch


def client_update(loss_fn: LossFn, params: Params, data: tuple, mask: jax.Array, key: jax.Array,
                  cfg: ClientConfig, correction: Params | None = None) -> tuple[Params, dict]:
  """Local SGD of one client over its real examples; returns (delta, metrics).

  Args:
    loss_fn: per-example losses, `loss_fn(params, *data) -> [N]`.
    params: the server model.
    data: tuple of arrays [N, ...] (padded).
    mask: float32 [N], 1 = real example.
    key: the client's key (order of examples).
    cfg: local training configuration; `prox_mu > 0` adds the FedProx term.
    correction: SCAFFOLD gradient correction c - c_i (None: no correction).

  Returns:
    delta = local params - params, and scalars {"loss": initial mean loss, "num_steps",
    "num_examples", "delta_norm"}.

  Example:
    >>> delta, m = client_update(loss_fn, params, (x, y), mask, key, ClientConfig(0.1))
  """
  num_padded = mask.shape[0]
  batch, total_steps, per_epoch = _local_schedule(cfg, num_padded)
  data = tuple(jnp.asarray(x) for x in data)
  mask = jnp.asarray(mask, jnp.float32)
  n = jnp.sum(mask).astype(jnp.int32)
  positions = jnp.arange(batch)

  def order(k):  # Real examples first, in random order; padding after.
    u = jnp.where(mask > 0, jax.random.uniform(k, (num_padded,)), 2.0)
    return jnp.argsort(u)

  if per_epoch == 0:  # Fixed number of steps: wrap around one random order.
    orders = order(key)
  else:
    orders = jax.vmap(lambda e: order(jax.random.fold_in(key, e)))(jnp.arange(cfg.num_epochs))

  def batch_indices(step):
    if per_epoch == 0:
      pos = (step * batch + positions) % jnp.maximum(n, 1)
      return orders[pos], positions < n, n > 0
    epoch, b = step // per_epoch, step % per_epoch
    pos = b * batch + positions
    idx = orders[epoch][jnp.minimum(pos, num_padded - 1)]
    return idx, pos < n, b * batch < n

  def local_loss(p, idx, valid):
    sub = tuple(x[idx] for x in data)
    bmask = mask[idx] * valid
    loss = masked_mean_loss(loss_fn, p, sub, bmask)
    if cfg.prox_mu > 0:
      diff = jax.tree.map(lambda a, b: a - b, p, params)
      # Squared norm directly: the gradient of sqrt at 0 (the first step) is NaN.
      loss = loss + 0.5 * cfg.prox_mu * sum(jnp.sum(jnp.square(d)) for d in jax.tree.leaves(diff))
    return loss

  def step_fn(carry, step):
    p, steps = carry
    idx, valid, active = batch_indices(step)
    grads = jax.grad(local_loss)(p, idx, valid)
    if correction is not None:
      grads = jax.tree.map(jnp.add, grads, correction)
    new = jax.tree.map(lambda w, g: w - cfg.learning_rate * g.astype(w.dtype), p, grads)
    p = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, p)
    return (p, steps + active.astype(jnp.int32)), None

  carry = (params, jnp.zeros((), jnp.int32))
  if total_steps <= MAX_UNROLLED_STEPS:  # A Python loop: no while loop in the program at all.
    for step in range(total_steps):
      carry, _ = step_fn(carry, jnp.asarray(step, jnp.int32))
  else:
    carry, _ = jax.lax.scan(step_fn, carry, jnp.arange(total_steps))
  local, steps = carry
  delta = jax.tree.map(lambda a, b: a - b, local, params)
  metrics = {"loss": masked_mean_loss(loss_fn, params, data, mask), "num_steps": steps,
             "num_examples": n, "delta_norm": tree_l2_norm(delta)}
  return delta, metrics


def server_optimizer(name: str, learning_rate: float, *, b1: float = 0.9, b2: float = 0.99,
                     eps: float = 1e-3) -> optax.GradientTransformation:
  """The server optimizer applied to the pseudo-gradient -mean_delta.

  Example:
    >>> opt = server_optimizer("adam", 1e-2)
  """
  if name == "sgd":
    return optax.sgd(learning_rate)
  if name == "adam":
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  if name == "yogi":
    return optax.yogi(learning_rate, b1=b1, b2=b2, eps=eps)
  if name == "adagrad":
    return optax.adagrad(learning_rate, eps=eps)
  raise ValueError(f"server optimizer must be one of {SERVER_OPTIMIZERS}, got {name!r}")


def make_algorithm(name: str, loss_fn: LossFn, client: ClientConfig, *, server_optimizer_name: str = "sgd",
                   server_learning_rate: float = 1.0, num_devices: int = 1, dp: DPConfig | None = None,
                   chunk_size: int = 0, server_eps: float = 1e-3) -> FedAlgorithm:
  """Builds a `FedAlgorithm`.

  Args:
    name: one of ALGORITHMS. "fedprox" needs `client.prox_mu > 0`; "fedopt" a server
      optimizer other than "sgd".
    loss_fn: per-example loss `loss_fn(params, *data) -> [N]`.
    client: local training configuration.
    server_optimizer_name: "sgd" (FedAvg with server lr), "adam", "yogi", "adagrad".
    server_learning_rate: server step size.
    num_devices: registered devices (SCAFFOLD: c += sum_k dc_k / num_devices).
    dp: DP-FedAvg aggregation, or None. Weights passed to `apply` must then be 0 or 1
      (checked whenever they are concrete: `check_dp_weights`).
    chunk_size: clients per vmapped chunk (0: the whole round in one vmap); the round must
      hold a multiple of it. Chunks run in a `lax.scan`, accumulating the sums, which bounds
      memory on accelerators (on CPU, vmapped convolutions in a loop body are slow: see
      MAX_UNROLLED_STEPS).
    server_eps: epsilon of the adaptive server optimizers (Reddi et al. use 1e-3).

  Returns:
    The FedAlgorithm (init, apply, client_update, server_update, name).

  Example:
    >>> alg = make_algorithm("fedopt", loss_fn, ClientConfig(0.1), server_optimizer_name="yogi",
    ...                      server_learning_rate=1e-2)
  """
  # Long by design (FedJAX style): a factory whose short nested pure functions close over the static configuration.
  if name not in ALGORITHMS:
    raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {name!r}")
  if name == "fedprox" and not client.prox_mu > 0:
    raise ValueError(f"fedprox needs prox_mu > 0, got {client.prox_mu}")
  if name != "fedprox" and client.prox_mu:
    raise ValueError(f"prox_mu is only used by fedprox, got {client.prox_mu} for {name}")
  if name == "fedopt" and server_optimizer_name == "sgd":
    raise ValueError("fedopt needs an adaptive server optimizer (adam, yogi or adagrad), got 'sgd'")
  if name == "scaffold" and dp is not None:
    raise ValueError("DP with scaffold is not supported: the client control variates are released "
                     "without noise and no accounting covers them")
  scaffold = name == "scaffold"
  opt = server_optimizer(server_optimizer_name, server_learning_rate, eps=server_eps)
  update_one = functools.partial(client_update, loss_fn, cfg=client)

  def init(params):
    control = jax.tree.map(jnp.zeros_like, params) if scaffold else jnp.zeros((), jnp.float32)
    clip = jnp.asarray(dp.clip_norm if dp else 0.0, jnp.float32)
    return ServerState(jnp.zeros((), jnp.int32), params, opt.init(params), control, clip)

  def one_client(state, data, mask, key, client_control):
    """Delta, diagnostics and the client's contribution to the round sums."""
    correction = None
    if scaffold:
      correction = jax.tree.map(jnp.subtract, state.control, client_control)
    delta, m = update_one(state.params, data, mask, key, correction=correction)
    extra = {}
    if dp is not None:
      norm = m["delta_norm"]
      clip = state.clip_norm
      finite = jnp.isfinite(norm)
      factor = jnp.where(norm > clip, clip / jnp.where(norm > 0, norm, 1.0), 1.0)
      # A non-finite delta would put inf * 0 = NaN into the noisy sum: it contributes zero
      # (keeping the sensitivity at C); the host stops the run on its non-finite delta_norm.
      delta = jax.tree.map(lambda x: jnp.where(finite, x * factor, 0.0), delta)
      m = dict(m, clipped=(norm > clip).astype(jnp.float32))
      # Centered (b_i - 1/2, sensitivity 1/2) as in Andrew et al. 2021.
      extra["unclipped"] = (norm <= clip).astype(jnp.float32) - 0.5
    if scaffold:
      k_lr = jnp.maximum(m["num_steps"], 1).astype(jnp.float32) * client.learning_rate
      active = (m["num_steps"] > 0).astype(jnp.float32)
      # Option II: c_i+ = c_i - c + (x - y_i) / (K lr), so dc_i = -c - delta / (K lr).
      extra["control_delta"] = jax.tree.map(lambda c, d: active * (-c - d / k_lr), state.control, delta)
    return delta, m, extra

  def sums_of(weights, delta, extra):
    sums = {"delta": _tree_dot(weights, delta)}
    participate = (weights > 0).astype(jnp.float32)
    if "unclipped" in extra:
      sums["unclipped"] = jnp.sum(weights * extra["unclipped"])
    if "control_delta" in extra:
      sums["control_delta"] = _tree_dot(participate, extra["control_delta"])
    return sums

  def server_update(state, sums, key):
    """New server state from the round's weighted sums (shared by vmap and reference paths)."""
    info = {}
    mean_delta = sums["delta"]
    clip_norm = state.clip_norm
    if dp is not None:
      leaves, treedef = jax.tree.flatten(mean_delta)
      k_delta, k_count = jax.random.split(key)
      keys = jax.random.split(k_delta, len(leaves))
      std = dp.noise_multiplier * state.clip_norm
      noisy = [x + std * jax.random.normal(k, x.shape, jnp.float32) for x, k in zip(leaves, keys)]
      mean_delta = jax.tree.map(lambda x: x / dp.expected_clients, jax.tree.unflatten(treedef, noisy))
      if dp.adaptive:
        noisy_count = sums["unclipped"] + dp.count_noise_std * jax.random.normal(k_count, ())
        fraction = noisy_count / dp.expected_clients + 0.5
        clip_norm = state.clip_norm * jnp.exp(-dp.clip_learning_rate * (fraction - dp.target_quantile))
        info["unclipped_fraction"] = fraction
    pseudo_grad = jax.tree.map(jnp.negative, mean_delta)
    updates, opt_state = opt.update(pseudo_grad, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    control = state.control
    if scaffold:
      control = jax.tree.map(lambda c, d: c + d / num_devices, state.control, sums["control_delta"])
    info["mean_delta_norm"] = tree_l2_norm(mean_delta)
    info["clip_norm"] = state.clip_norm
    return ServerState(state.round + 1, params, opt_state, control, clip_norm), info

  def apply(state: ServerState, clients: Clients, weights: jax.Array, key: jax.Array):
    """One round: every client of `clients` in one vmap (scan over chunks), then the server."""
    if dp is not None and not isinstance(weights, jax.core.Tracer):
      check_dp_weights(weights)
    k_clients, k_server = jax.random.split(key)
    num = clients.mask.shape[0]
    chunk = chunk_size or num
    if num % chunk:
      raise ValueError(f"the round has {num} clients, not a multiple of chunk_size={chunk}")
    num_chunks = num // chunk
    control = clients.control if scaffold else jnp.zeros((num,), jnp.float32)
    xs = (clients.data, clients.mask, clients.ids, control, weights)

    # [C] -> [chunk, num_chunks] -> scan over num_chunks: client i*num_chunks + j is in
    # chunk j at position i, so each device's contiguous block of clients stays on it.
    def split(x):
      return jnp.moveaxis(x.reshape((chunk, num_chunks) + x.shape[1:]), 1, 0)

    def merge(x):
      return jnp.moveaxis(x, 0, 1).reshape((num,) + x.shape[2:])

    def body(acc, inputs):
      data, mask, ids, ctrl, w = inputs
      keys = jax.vmap(jax.random.fold_in, (None, 0))(k_clients, ids)
      delta, m, extra = jax.vmap(one_client, (None, 0, 0, 0, 0))(state, data, mask, keys, ctrl)
      sums = sums_of(w, delta, extra)
      acc = sums if acc is None else jax.tree.map(jnp.add, acc, sums)
      if scaffold:  # The host adds each client's dc_i to its stored c_i.
        m = dict(m, control_delta=extra["control_delta"])
      return acc, m

    if num_chunks == 1:
      sums, diag = body(None, xs)
    else:
      zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), state.params)
      acc = {"delta": zeros}
      if dp is not None:
        acc["unclipped"] = jnp.zeros((), jnp.float32)
      if scaffold:
        acc["control_delta"] = zeros
      sums, diag = jax.lax.scan(body, acc, jax.tree.map(split, xs))
      diag = jax.tree.map(merge, diag)
    new_state, info = server_update(state, sums, k_server)
    diag = dict(diag, weight=weights)
    return new_state, dict(diag, **{f"server/{k}": v for k, v in info.items()})

  def reference_client(state, data, mask, key, client_control=None):
    """One client's (clipped) delta, diagnostics and extras: the sequential reference path."""
    if not scaffold:
      client_control = jnp.zeros((), jnp.float32)
    return one_client(state, data, mask, key, client_control)

  return FedAlgorithm(init, apply, reference_client, server_update, name, dp)


def sequential_apply(alg: FedAlgorithm, state: ServerState, clients: Clients, weights: np.ndarray,
                     key: jax.Array) -> tuple[ServerState, dict]:
  """The correctness reference: one client at a time in a Python loop, sums on the host.

  Same keys and the same server update as `alg.apply`, so both give the same new state up
  to float rounding.

  Example:
    >>> ref_state, _ = sequential_apply(alg, state, clients, weights, key)
  """
  if alg.dp is not None:
    check_dp_weights(weights)
  k_clients, k_server = jax.random.split(key)
  one = jax.jit(alg.client_update)
  sums, diags = None, []
  weights = np.asarray(weights, np.float32)
  for c in range(len(weights)):
    data = tuple(np.asarray(x[c]) for x in clients.data)
    ctrl = None if clients.control is None else jax.tree.map(lambda x, c=c: x[c], clients.control)
    key_c = jax.random.fold_in(k_clients, int(clients.ids[c]))
    delta, m, extra = one(state, data, np.asarray(clients.mask[c]), key_c, ctrl)
    w = float(weights[c])
    part = {"delta": jax.tree.map(lambda x, w=w: w * np.asarray(x, np.float64), delta)}
    if "unclipped" in extra:
      part["unclipped"] = w * float(extra["unclipped"])
    if "control_delta" in extra:
      part["control_delta"] = jax.tree.map(lambda x, w=w: float(w > 0) * np.asarray(x, np.float64),
                                           extra["control_delta"])
    sums = part if sums is None else jax.tree.map(np.add, sums, part)
    if "control_delta" in extra:
      m = dict(m, control_delta=extra["control_delta"])
    diags.append(jax.tree.map(np.asarray, m))
  sums = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), sums)
  new_state, info = jax.jit(alg.server_update)(state, sums, k_server)
  diag = {k: jax.tree.map(lambda *xs: np.stack(xs), *[d[k] for d in diags]) for k in diags[0]}
  return new_state, dict(diag, weight=weights, **{f"server/{k}": v for k, v in info.items()})

