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

Calibration: `calibrate_noise_multiplier` for DP-SGD, and `calibrate_event_noise_multiplier`
for any event factory z -> DpEvent under any neighbouring relation (fixed-size sampling,
federated rounds). A noise multiplier of 0 is a non-private release with epsilon inf (the
shared rule of `libs.accounting._checks`).

Example:
  >>> eps = dpsgd_epsilon(1.3, 150 / 60000, 6000, 1e-5)            # ~0.724
  >>> sigma = calibrate_noise_multiplier(1.0, 1e-5, 0.01, 1000)    # eps(sigma) <= 1.0
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from typing import Any, Callable, Iterator, Sequence

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant

from libs.accounting import _checks

NeighboringRelation = dp_accounting.NeighboringRelation

ACCOUNTANTS = ("rdp", "pld")

# dp_accounting's defaults: fractional orders 1.1..10.9 (small epsilons need orders near 1),
# integers 11..63, and a few large orders for tiny deltas / large noise.
DEFAULT_RDP_ORDERS: tuple[float, ...] = tuple(
    float(a) for a in rdp_privacy_accountant.DEFAULT_RDP_ORDERS)

# PLD discretisation of the privacy loss. 1e-4 is dp_accounting's default: for the MNIST
# DP-SGD setting it is within ~0.2% of the converged value (1e-3: ~2% above, still an
# upper bound since the discretisation is pessimistic) and takes well under a second.
DEFAULT_PLD_DISCRETIZATION = 1e-4


# The argument checks live in `_checks` (shared with the PATE analysis and libs.dp.sampling,
# so every caller rejects the same input with the same message); these names stay for the
# callers that import them from here (ledger).
check_noise_multiplier = _checks.check_noise_multiplier
check_sampling_probability = _checks.check_sampling_probability
check_steps = _checks.check_count
check_delta = _checks.check_delta
check_epsilon = _checks.check_epsilon


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
  return DEFAULT_RDP_ORDERS if orders is None else _checks.check_rdp_orders(orders)


def check_pld_discretization(value: Any) -> float:
  """Returns the PLD discretisation interval as a float; ValueError unless finite and > 0.

  Example:
    >>> check_pld_discretization(1e-3)
    0.001
  """
  return _checks.check_positive("pld_discretization", value)


def check_neighboring_relation(relation: Any) -> NeighboringRelation:
  """Returns `relation`; ValueError unless a dp_accounting NeighboringRelation.

  Example:
    >>> check_neighboring_relation(NeighboringRelation.REPLACE_ONE).name
    'REPLACE_ONE'
  """
  if not isinstance(relation, NeighboringRelation):
    raise ValueError(f"neighboring_relation must be a dp_accounting.NeighboringRelation, "
                     f"got {relation!r}")
  return relation


def make_accountant(accountant: str = "rdp", *, orders: Sequence[float] | None = None,
                    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
                    neighboring_relation: NeighboringRelation = NeighboringRelation.ADD_OR_REMOVE_ONE
                    ) -> dp_accounting.PrivacyAccountant:
  """A fresh dp_accounting accountant (add/remove-one neighbours unless told otherwise).

  Args:
    accountant: "rdp" or "pld".
    orders: RDP orders (None: DEFAULT_RDP_ORDERS); ignored for "pld".
    pld_discretization: PLD value discretisation interval; ignored for "rdp".
    neighboring_relation: the relation the guarantee is for; it must match the sampling
      (e.g. REPLACE_ONE for sampling without replacement, see libs.dp.sampling).

  Returns:
    An empty `RdpAccountant` or `PLDAccountant`.

  Example:
    >>> make_accountant("rdp").get_epsilon(1e-5)   # nothing composed yet
    0.0
  """
  check_accountant(accountant)
  relation = check_neighboring_relation(neighboring_relation)
  if accountant == "rdp":
    return dp_accounting.rdp.RdpAccountant(list(check_rdp_orders(orders)),
                                           neighboring_relation=relation)
  return dp_accounting.pld.PLDAccountant(
      neighboring_relation=relation,
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
                     pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
                     neighboring_relation: NeighboringRelation = NeighboringRelation.ADD_OR_REMOVE_ONE
                     ) -> float:
  """Epsilon at `delta` of any DpEvent the chosen accountant supports.

  An event that releases a Gaussian with noise multiplier 0 (an explicit non-private
  release, see `_checks`) has epsilon inf; it is reported here rather than handed to
  dp_accounting, whose analyses divide by the noise for some events.

  Args:
    event: the dp_accounting DpEvent (e.g. from `poisson_gaussian_event`).
    delta: target delta in (0, 1).
    accountant: "rdp" or "pld".
    orders: RDP orders (None: DEFAULT_RDP_ORDERS).
    pld_discretization: PLD discretisation interval.
    neighboring_relation: the relation of the guarantee (default add/remove-one).

  Returns:
    Epsilon as a Python float (inf for a non-private event).

  Raises:
    ValueError: bad `delta` / `accountant`, or `event` not a DpEvent the accountant supports.

  Example:
    >>> epsilon_of_event(dp_accounting.GaussianDpEvent(1.0), 1e-5)  # one Gaussian query
    4.728507067217623
  """
  delta = check_delta(delta)
  acct = make_accountant(accountant, orders=orders, pld_discretization=pld_discretization,
                         neighboring_relation=neighboring_relation)
  if not isinstance(event, dp_accounting.DpEvent):
    raise ValueError(f"event must be a dp_accounting.DpEvent, got {type(event).__name__}")
  if not acct.supports(event):
    raise ValueError(f"event {event} is not supported by the {accountant!r} accountant under "
                     f"{acct.neighboring_relation.name}")
  if _releases_without_noise(event):
    return math.inf
  return float(acct.compose(event).get_epsilon(delta))


def _releases_without_noise(event: dp_accounting.DpEvent) -> bool:
  """Whether `event` releases (with positive probability) a noise-free Gaussian or Laplace."""
  if isinstance(event, (dp_accounting.GaussianDpEvent, dp_accounting.LaplaceDpEvent)):
    return event.noise_multiplier == 0
  if isinstance(event, dp_accounting.SelfComposedDpEvent):
    return event.count > 0 and _releases_without_noise(event.event)
  if isinstance(event, dp_accounting.ComposedDpEvent):
    return any(_releases_without_noise(e) for e in event.events)
  if isinstance(event, dp_accounting.PoissonSampledDpEvent):
    return event.sampling_probability > 0 and _releases_without_noise(event.event)
  if isinstance(event, (dp_accounting.SampledWithoutReplacementDpEvent,
                        dp_accounting.SampledWithReplacementDpEvent)):
    return event.sample_size > 0 and _releases_without_noise(event.event)
  return False

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

  `calibrate_event_noise_multiplier` on the DP-SGD event `poisson_gaussian_event(sigma, q,
  steps)` (add/remove-one); the returned sigma always satisfies
  dpsgd_epsilon(sigma, ...) <= target_epsilon (re-checked before returning).

  `sampling_probability` q is in (0, 1] and `steps` a positive integer (0 is an error: any
  sigma works); the other arguments are `calibrate_event_noise_multiplier`'s. Bad input
  raises ValueError naming the argument.

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
  _checks.check_positive("tol", tol)
  orders = None if orders is None else tuple(float(o) for o in orders)
  return _calibrate_dpsgd(target_epsilon, delta, q, steps, accountant, tol, orders, pld_discretization)


@functools.lru_cache(maxsize=256)
def _calibrate_dpsgd(target_epsilon, delta, q, steps, accountant, tol, orders, pld_discretization) -> float:
  # A pure function of its (checked, hashable) arguments, and each call runs dozens of RDP
  # evaluations: a resumed or repeated run with the same settings reuses the answer.
  return calibrate_event_noise_multiplier(
      lambda sigma: poisson_gaussian_event(sigma, q, steps), target_epsilon, delta, accountant,
      tol=tol, orders=orders, pld_discretization=pld_discretization)


def calibrate_event_noise_multiplier(
    make_event: Callable[[float], dp_accounting.DpEvent], target_epsilon: float, delta: float,
    accountant: str = "rdp", *,
    neighboring_relation: NeighboringRelation = NeighboringRelation.ADD_OR_REMOVE_ONE,
    tol: float = 1e-4, orders: Sequence[float] | None = None,
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION) -> float:
  """Smallest noise multiplier z (within `tol`) with epsilon(make_event(z)) <= target_epsilon.

  Any mechanism whose privacy loss falls as its noise grows: DP-SGD under any sampler
  (`calibrate_noise_multiplier`), DP-FedAvg rounds, a fixed number of Gaussian queries.
  Uses dp_accounting.calibrate_dp_mechanism (Brent's method, falling back to bisection) on
  an explicit bracket found by doubling/halving z; the returned z is re-checked and always
  satisfies epsilon <= target_epsilon.

  Args:
    make_event: z -> the DpEvent of the whole run at noise multiplier z (all steps).
    target_epsilon: epsilon budget, > 0.
    delta: target delta in (0, 1).
    accountant: "rdp" or "pld".
    neighboring_relation: the relation the event is analysed under; it must be the one of
      the sampling that produced it (REPLACE_ONE for fixed-size sampling without
      replacement).
    tol: absolute tolerance on z (> 0).
    orders: RDP orders (None: DEFAULT_RDP_ORDERS).
    pld_discretization: PLD discretisation interval.

  Returns:
    z as a float.

  Raises:
    ValueError: naming the offending argument, an event the accountant does not support,
      or a target that no z in [1e-8, 1e8] separates.

  Example:
    >>> make = lambda z: dp_accounting.SelfComposedDpEvent(
    ...     dp_accounting.SampledWithoutReplacementDpEvent(
    ...         2000, 40, dp_accounting.GaussianDpEvent(z / 2)), 40)
    >>> z = calibrate_event_noise_multiplier(
    ...     make, 3.0, 1e-5, neighboring_relation=NeighboringRelation.REPLACE_ONE)
  """
  if not callable(make_event):
    raise ValueError(f"make_event must be a callable z -> DpEvent, got {make_event!r}")
  target_epsilon = check_epsilon(target_epsilon)
  delta = check_delta(delta)
  check_accountant(accountant)
  relation = check_neighboring_relation(neighboring_relation)
  tol = _checks.check_positive("tol", tol)
  orders = check_rdp_orders(orders)
  pld_discretization = check_pld_discretization(pld_discretization)
  settings = dict(orders=orders, pld_discretization=pld_discretization,
                  neighboring_relation=relation)

  def eps(sigma: float) -> float:
    return epsilon_of_event(make_event(sigma), delta, accountant, **settings)

  make_acct: Callable[[], dp_accounting.PrivacyAccountant] = lambda: make_accountant(
      accountant, **settings)
  with _one_warning_for_excluded_orders():
    lo, hi = _bracket(eps, target_epsilon)
    sigma = dp_accounting.calibrate_dp_mechanism(
        make_acct, make_event, target_epsilon, delta,
        bracket_interval=dp_accounting.ExplicitBracketInterval(lo, hi), tol=tol)
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
