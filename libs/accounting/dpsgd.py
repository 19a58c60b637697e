"""(epsilon, delta) accounting for DP-SGD with dp_accounting (host-side, float64).

One DP-SGD step samples every example independently with probability `q` (Poisson
sampling), clips per-example gradients to L2 norm C and adds N(0, (sigma * C)^2) noise to
their sum: `PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`. `steps` steps are that
event self-composed `steps` times. The neighbouring relation is add/remove one example
(dp_accounting's default), the standard one for Poisson-sampled DP-SGD.

Two accountants:
  * "rdp": Renyi DP (Mironov 2017) over a fixed set of orders, including fractional
    orders near 1, converted to (epsilon, delta) with the improved conversion of
    Balle et al. 2020 (dp_accounting.rdp.compute_epsilon). Fast; a valid upper bound.
  * "pld": privacy loss distributions (Koskela et al.; Meiser & Mohammadi), discretised
    pessimistically, so also an upper bound, and usually tighter than RDP. Slower: the
    cost grows as the discretisation interval shrinks.

Example:
  >>> eps = dpsgd_epsilon(1.3, 150 / 60000, 6000, 1e-5)            # ~0.724
  >>> sigma = calibrate_noise_multiplier(1.0, 1e-5, 0.01, 1000)    # eps(sigma) <= 1.0
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
from typing import Any, Callable, Iterator, Sequence

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant
import numpy as np

ACCOUNTANTS = ("rdp", "pld")

# dp_accounting's defaults: fractional orders 1.1..10.9 (small epsilons need orders near 1),
# integers 11..63, and a few large orders for tiny deltas / large noise.
DEFAULT_RDP_ORDERS: tuple[float, ...] = tuple(
    float(a) for a in rdp_privacy_accountant.DEFAULT_RDP_ORDERS)

# PLD discretisation of the privacy loss. 1e-4 is dp_accounting's default: for the MNIST
# DP-SGD setting it is within ~0.2% of the converged value (1e-3: ~2% above, still an
# upper bound since the discretisation is pessimistic) and takes well under a second.
DEFAULT_PLD_DISCRETIZATION = 1e-4


def _is_real(x: Any) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_noise_multiplier(noise_multiplier: Any) -> float:
  """Returns `noise_multiplier` as a float; ValueError unless finite and >= 0.

  Example:
    >>> check_noise_multiplier(1)
    1.0
  """
  if (not _is_real(noise_multiplier) or not math.isfinite(noise_multiplier)
      or noise_multiplier < 0):
    raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
  return float(noise_multiplier)


def check_sampling_probability(sampling_probability: Any) -> float:
  """Returns `sampling_probability` as a float; ValueError unless in (0, 1].

  Example:
    >>> check_sampling_probability(256 / 60000)
    0.004266666666666667
  """
  if not _is_real(sampling_probability) or not 0 < sampling_probability <= 1:
    raise ValueError(f"sampling_probability must be in (0, 1], got {sampling_probability!r}")
  return float(sampling_probability)


def check_steps(steps: Any, name: str = "steps") -> int:
  """Returns `steps` as an int; ValueError unless a non-negative integer (6000.0 is fine).

  Example:
    >>> check_steps(15 * 60000 / 150)
    6000
  """
  if isinstance(steps, bool) or not isinstance(steps, numbers.Real):
    raise ValueError(f"{name} must be a non-negative integer, got {steps!r}")
  if isinstance(steps, numbers.Integral):
    value = int(steps)
  elif math.isfinite(steps) and float(steps).is_integer():
    value = int(steps)  # e.g. epochs * n / batch computed in floats
  else:
    raise ValueError(f"{name} must be a non-negative integer, got {steps!r}")
  if value < 0:
    raise ValueError(f"{name} must be a non-negative integer, got {steps!r}")
  return value


def check_delta(delta: Any) -> float:
  """Returns `delta` as a float; ValueError unless in (0, 1).

  Example:
    >>> check_delta(1e-5)
    1e-05
  """
  if not _is_real(delta) or not 0 < delta < 1:
    raise ValueError(f"delta must be in (0, 1), got {delta!r}")
  return float(delta)


def check_epsilon(epsilon: Any, name: str = "target_epsilon") -> float:
  """Returns `epsilon` as a float; ValueError unless finite and > 0.

  Example:
    >>> check_epsilon(8)
    8.0
  """
  if not _is_real(epsilon) or not math.isfinite(epsilon) or epsilon <= 0:
    raise ValueError(f"{name} must be a finite number > 0, got {epsilon!r}")
  return float(epsilon)


def check_accountant(accountant: Any) -> str:
  """Returns `accountant`; ValueError unless one of ACCOUNTANTS.

  Example:
    >>> check_accountant("pld")
    'pld'
  """
  if accountant not in ACCOUNTANTS:
    raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
  return accountant


def check_rdp_orders(orders: Sequence[float] | None) -> tuple[float, ...]:
  """Returns RDP orders as a tuple of floats (DEFAULT_RDP_ORDERS for None); all must be > 1.

  Example:
    >>> check_rdp_orders([2, 4.5])
    (2.0, 4.5)
  """
  if orders is None:
    return DEFAULT_RDP_ORDERS
  arr = np.asarray(orders, dtype=np.float64)
  if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 1):
    raise ValueError(f"orders must be a non-empty 1-D sequence of finite numbers > 1, "
                     f"got {orders!r}")
  return tuple(float(a) for a in arr)


def check_pld_discretization(value: Any) -> float:
  """Returns the PLD discretisation interval as a float; ValueError unless finite and > 0.

  Example:
    >>> check_pld_discretization(1e-3)
    0.001
  """
  if not _is_real(value) or not math.isfinite(value) or value <= 0:
    raise ValueError(f"pld_discretization must be a finite number > 0, got {value!r}")
  return float(value)


def make_accountant(accountant: str = "rdp", *, orders: Sequence[float] | None = None,
                    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION
                    ) -> dp_accounting.PrivacyAccountant:
  """A fresh dp_accounting accountant (add/remove-one neighbours).

  Args:
    accountant: "rdp" or "pld".
    orders: RDP orders (None: DEFAULT_RDP_ORDERS); ignored for "pld".
    pld_discretization: PLD value discretisation interval; ignored for "rdp".

  Returns:
    An empty `RdpAccountant` or `PLDAccountant`.

  Example:
    >>> make_accountant("rdp").get_epsilon(1e-5)   # nothing composed yet
    0.0
  """
  check_accountant(accountant)
  if accountant == "rdp":
    return dp_accounting.rdp.RdpAccountant(list(check_rdp_orders(orders)))
  return dp_accounting.pld.PLDAccountant(
      value_discretization_interval=check_pld_discretization(pld_discretization))


def poisson_gaussian_event(noise_multiplier: float, sampling_probability: float,
                           steps: int) -> dp_accounting.DpEvent:
  """The DpEvent of `steps` Poisson-sampled Gaussian steps (DP-SGD).

  Args:
    noise_multiplier: sigma, the noise std divided by the clipping norm (>= 0).
    sampling_probability: q, the per-example sampling probability, in (0, 1].
    steps: number of steps (>= 0).

  Returns:
    `SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps)`.

  Example:
    >>> poisson_gaussian_event(1.1, 0.01, 100).count
    100
  """
  sigma = check_noise_multiplier(noise_multiplier)
  q = check_sampling_probability(sampling_probability)
  steps = check_steps(steps)
  step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
  return dp_accounting.SelfComposedDpEvent(step, steps)


def epsilon_of_event(event: dp_accounting.DpEvent, delta: float, accountant: str = "rdp", *,
                     orders: Sequence[float] | None = None,
                     pld_discretization: float = DEFAULT_PLD_DISCRETIZATION) -> float:
  """Epsilon at `delta` of any DpEvent the chosen accountant supports.

  Args:
    event: the dp_accounting DpEvent (e.g. from `poisson_gaussian_event`).
    delta: target delta in (0, 1).
    accountant: "rdp" or "pld".
    orders: RDP orders (None: DEFAULT_RDP_ORDERS).
    pld_discretization: PLD discretisation interval.

  Returns:
    Epsilon as a Python float (inf for a non-private event).

  Raises:
    ValueError: bad `delta` / `accountant`, or `event` not a DpEvent the accountant supports.

  Example:
    >>> epsilon_of_event(dp_accounting.GaussianDpEvent(1.0), 1e-5)  # one Gaussian query
    4.728507067217623
  """
  delta = check_delta(delta)
  acct = make_accountant(accountant, orders=orders, pld_discretization=pld_discretization)
  if not isinstance(event, dp_accounting.DpEvent):
    raise ValueError(f"event must be a dp_accounting.DpEvent, got {type(event).__name__}")
  if not acct.supports(event):
    raise ValueError(f"event {event} is not supported by the {accountant!r} accountant")
  return float(acct.compose(event).get_epsilon(delta))


def dpsgd_epsilon(noise_multiplier: float, sampling_probability: float, steps: int,
                  delta: float, accountant: str = "rdp", *,
                  orders: Sequence[float] | None = None,
                  pld_discretization: float = DEFAULT_PLD_DISCRETIZATION) -> float:
  """Epsilon at `delta` after `steps` DP-SGD steps (Poisson sampling, Gaussian noise).

  `noise_multiplier == 0` with `steps > 0` releases un-noised gradients: epsilon is inf
  (no finite guarantee). `steps == 0` gives 0.

  Args:
    noise_multiplier: sigma (noise std / clipping norm), >= 0.
    sampling_probability: q in (0, 1] (batch size / dataset size for Poisson sampling).
    steps: number of steps, a non-negative integer.
    delta: target delta in (0, 1).
    accountant: "rdp" (default) or "pld".
    orders: RDP orders (None: DEFAULT_RDP_ORDERS).
    pld_discretization: PLD discretisation interval.

  Returns:
    Epsilon as a float.

  Raises:
    ValueError: naming the offending argument.

  Example:
    >>> round(dpsgd_epsilon(1.3, 150 / 60000, 6000, 1e-5), 3)   # TF-Privacy MNIST setting
    0.724
  """
  event = poisson_gaussian_event(noise_multiplier, sampling_probability, steps)
  delta = check_delta(delta)
  check_accountant(accountant)
  if event.count == 0:
    return 0.0
  if event.event.event.noise_multiplier == 0:
    return math.inf  # Un-noised gradient sums: no finite epsilon.
  return epsilon_of_event(event, delta, accountant, orders=orders,
                          pld_discretization=pld_discretization)


def calibrate_noise_multiplier(target_epsilon: float, delta: float, sampling_probability: float,
                               steps: int, accountant: str = "rdp", *, tol: float = 1e-4,
                               orders: Sequence[float] | None = None,
                               pld_discretization: float = DEFAULT_PLD_DISCRETIZATION) -> float:
  """Smallest noise multiplier (within `tol`) whose epsilon at `delta` is <= `target_epsilon`.

  Uses dp_accounting.calibrate_dp_mechanism (Brent's method, falling back to bisection)
  on an explicit bracket found by doubling/halving sigma; the returned sigma always
  satisfies dpsgd_epsilon(sigma, ...) <= target_epsilon (re-checked before returning).

  Args:
    target_epsilon: epsilon budget, > 0.
    delta: target delta in (0, 1).
    sampling_probability: q in (0, 1].
    steps: number of steps, a positive integer.
    accountant: "rdp" or "pld".
    tol: absolute tolerance on sigma (> 0).
    orders: RDP orders (None: DEFAULT_RDP_ORDERS).
    pld_discretization: PLD discretisation interval.

  Returns:
    sigma as a float.

  Raises:
    ValueError: naming the offending argument (also steps == 0: any sigma works).

  Example:
    >>> sigma = calibrate_noise_multiplier(1.0, 1e-5, 0.01, 1000)
    >>> dpsgd_epsilon(sigma, 0.01, 1000, 1e-5) <= 1.0
    True
  """
  target_epsilon = check_epsilon(target_epsilon)
  delta = check_delta(delta)
  q = check_sampling_probability(sampling_probability)
  steps = check_steps(steps)
  if steps == 0:
    raise ValueError("steps must be > 0 to calibrate a noise multiplier (0 steps cost nothing)")
  check_accountant(accountant)
  if not _is_real(tol) or not tol > 0:
    raise ValueError(f"tol must be > 0, got {tol!r}")
  orders = check_rdp_orders(orders)

  def eps(sigma: float) -> float:
    return dpsgd_epsilon(sigma, q, steps, delta, accountant, orders=orders,
                         pld_discretization=pld_discretization)

  make_acct: Callable[[], dp_accounting.PrivacyAccountant] = lambda: make_accountant(
      accountant, orders=orders, pld_discretization=pld_discretization)
  with _one_warning_for_excluded_orders():
    lo, hi = _bracket(eps, target_epsilon)
    sigma = dp_accounting.calibrate_dp_mechanism(
        make_acct,
        lambda s: poisson_gaussian_event(s, q, steps),
        target_epsilon, delta,
        bracket_interval=dp_accounting.ExplicitBracketInterval(lo, hi),
        tol=float(tol))
    sigma = float(sigma)
    if not eps(sigma) <= target_epsilon:
      sigma = hi  # Never return a sigma that overspends; hi is known to be within budget.
  return sigma


class _CountNonConvergence(logging.Filter):
  """Drops dp_accounting's per-order "failed to converge" warnings, counting them."""

  def __init__(self):
    super().__init__()
    self.count = 0

  def filter(self, record: logging.LogRecord) -> bool:
    if "failed to converge" in str(record.msg):
      self.count += 1
      return False
    return True


@contextlib.contextmanager
def _one_warning_for_excluded_orders() -> Iterator[None]:
  """dp_accounting logs one warning per (order, evaluation) whose fractional-order series does
  not converge (small sigma, large q) and leaves that order out, which only makes epsilon
  larger; calibration evaluates epsilon dozens of times, so this logs one line instead."""
  counter = _CountNonConvergence()
  logger = logging.getLogger("absl")
  logger.addFilter(counter)
  try:
    yield
  finally:
    logger.removeFilter(counter)
    if counter.count:
      logger.warning("noise calibration: %d RDP order evaluations did not converge and were left "
                     "out (epsilon stays an upper bound)", counter.count)


def _bracket(eps: Callable[[float], float], target: float) -> tuple[float, float]:
  """(lo, hi) with eps(lo) > target >= eps(hi), eps(lo) finite (brentq needs finite values)."""
  hi = 1.0
  while eps(hi) > target:
    hi *= 2.0
    if hi > 1e8:
      raise ValueError(f"target_epsilon {target} is not reachable with noise_multiplier <= 1e8")
  lo = hi / 2.0
  while eps(lo) <= target:
    hi, lo = lo, lo / 2.0
    if lo < 1e-8:
      raise ValueError(f"target_epsilon {target} is met by any noise_multiplier >= 1e-8; "
                       "nothing to calibrate")
  while not math.isfinite(eps(lo)):  # Move lo up until finite, keeping eps(lo) > target.
    mid = 0.5 * (lo + hi)
    if eps(mid) > target:
      lo = mid
    else:
      hi = mid
  return lo, hi
