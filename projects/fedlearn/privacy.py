"""Device-level accounting for DP-FedAvg under the device sampling actually used (host-side).

Unit of privacy: a device (all of its examples). This holds only when each client IS one
device: partitions that re-deal examples into synthetic clients (`iid`, `dirichlet`, ...)
put one device's examples into many clients and are refused (`check_partition`). Each round
releases the noisy sum of per-device clipped deltas (sensitivity C per device, unit weights)
with N(0, (z C)^2) noise, plus, with adaptive clipping, the noisy clipped count. Which
sampling schemes have a valid amplification analysis (`check_scheme` refuses the others):

  * "poisson" (q = m / N, N and m configured): `PoissonSampledDpEvent(q,
    GaussianDpEvent(z))` per round, add/remove-one device; RDP or PLD
    (libs.dp.sampling.poisson_step_event).
  * "activity_capped" under DP: each device independently with p_i = min(cap, r n_i),
    where the cap = cap_ratio * m / N and the per-example rate r = m / (N n_ref) are fixed
    in advance from configured quantities (n_ref: a public number of examples per device),
    never from the data (`selection.select(..., rate=r)`). Accounted at q = cap.
    Proof sketch: let D' = D plus device j. Every other device's p_i is a function of its
    own n_i and the constants only, so the joint law of the other devices' participation
    is the same under D and D'; device j takes part with probability p_j <= cap,
    independently. The round's output is therefore a mixture M(D') = (1 - p_j) M(D) +
    p_j M(D + j's clipped delta), exactly the Poisson-subsampled Gaussian with rate p_j, and
    its privacy loss (RDP at every order and the PLD) is nondecreasing in the rate, so the
    event at q = cap bounds it for every j. The water-filled form (c chosen so that
    sum_i p_i = m) couples all devices through c and has no such analysis: DP runs never
    use it, and q is never taken from the data (max_i p_i would itself leak).
  * "uniform" (m of N without replacement): dp_accounting's
    `SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(z / 2))` under replace-one
    (a replaced device moves the sum by up to 2C, hence z / 2), RDP accountant only
    (libs.dp.sampling.fixed_size_step_event, the event of its FixedSizeSampler).
    Refused with dropout: a random number of survivors is not that event.
  * "activity" (m draws with replacement proportional to data): refused. A device can be
    drawn several times in one round (its weight, hence the sensitivity, is unbounded by
    C) and dp_accounting has no analysis of multi-draw with-replacement sampling.

Dropout must be "independent" under DP: each device then takes part with probability
p_i (1 - f) <= p_i independently of the others, still Poisson, so accounting at q stays
valid (conservative). "fixed" dropout couples devices (the number dropped depends on how
many were selected) and is refused.

Adaptive clipping (Andrew et al. 2021): the delta sum (noise multiplier z_delta) and the
centered clipped count (sensitivity 1/2, noise std sigma_b, i.e. multiplier 2 sigma_b)
compose to one Gaussian with z^-2 = z_delta^-2 + (2 sigma_b)^-2; the accounted z is the
combined one and `split_noise_multiplier` returns the z_delta to use.

Events come from libs.dp.sampling (`round_event`) and calibration is libs.accounting's
`calibrate_event_noise_multiplier` over them, under the scheme's neighbouring relation.

Example:
  >>> acct = DeviceAccountant("activity_capped", noise_multiplier=1.0, num_devices=10_000,
  ...                         clients_per_round=100, max_probability=0.04,
  ...                         target_epsilon=4.0, delta=1e-5)
  >>> acct.check_next_round()   # PrivacyBudgetExceeded before a round that would pass epsilon
  >>> acct.record_round()
"""

from __future__ import annotations

import contextlib
import logging
import math

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant
import numpy as np

from libs import accounting
from libs.accounting import dpsgd as dpsgd_accounting
from libs.accounting import NeighboringRelation, PrivacyBudgetExceeded, PrivacyLedger
from libs.dp import sampling

VALID_SCHEMES = ("poisson", "activity_capped", "uniform")
UNIT = "device"


@contextlib.contextmanager
def _quiet_accountant():
  """dp_accounting logs a warning per RDP order it drops while a calibration probes small sigmas."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def check_scheme(scheme: str, *, accountant: str = "rdp", dropout: float = 0.0,
                 dropout_mode: str = "independent") -> None:
  """Raises ValueError (naming the reason) unless DP accounting is valid for this sampling.

  Example:
    >>> check_scheme("activity")   # ValueError: ... with replacement ...
  """
  if scheme == "activity":
    raise ValueError(
        "selection scheme 'activity' (m draws with replacement, proportional to data) has no valid DP "
        "amplification analysis: a device can be drawn several times per round and dp_accounting cannot "
        "analyse multi-draw sampling with replacement; use 'activity_capped' (Poisson, accounted at "
        "q = cap with a configured per-example rate), 'poisson' or 'uniform'")
  if scheme not in VALID_SCHEMES:
    raise ValueError(f"selection scheme must be one of {VALID_SCHEMES} under DP, got {scheme!r}")
  if scheme == "uniform" and accountant != "rdp":
    raise ValueError("selection scheme 'uniform' (fixed size without replacement) is only analysed by the "
                     f"'rdp' accountant (replace-one); got accountant={accountant!r}")
  if dropout > 0 and dropout_mode != "independent":
    raise ValueError(f"dropout mode {dropout_mode!r} couples devices' participation and has no valid "
                     "amplification analysis; use dropout mode 'independent' under DP")
  if dropout > 0 and scheme == "uniform":
    raise ValueError("selection scheme 'uniform' with dropout is not a fixed-size sample any more, so the "
                     "without-replacement analysis does not apply; use 'poisson' or 'activity_capped'")


def check_partition(scheme: str) -> None:
  """Raises ValueError unless clients are the devices themselves (the unit stays "device").

  Example:
    >>> check_partition("dirichlet")   # ValueError: ... one device's examples land in many clients ...
  """
  if scheme != "natural":
    raise ValueError(f"partition scheme {scheme!r} re-deals examples into synthetic clients, so one device's "
                     "examples land in many clients and a per-client guarantee is not a per-device one (its "
                     "group-privacy factor is the number of clients a device can reach); use partition scheme "
                     "'natural' under DP")


def split_noise_multiplier(noise_multiplier: float, count_noise_std: float) -> float:
  """z_delta such that the delta sum and the clipped count together are a Gaussian of z.

  Example:
    >>> round(split_noise_multiplier(1.0, 5.0), 4)   # 2 sigma_b = 10 >> z: almost all of it
    1.005
  """
  if count_noise_std <= 0:
    return float(noise_multiplier)
  if not 2 * count_noise_std > noise_multiplier:
    raise ValueError(f"count_noise_std={count_noise_std} must exceed noise_multiplier / 2 = "
                     f"{noise_multiplier / 2:g} to leave noise for the delta sum")
  return float((noise_multiplier ** -2 - (2 * count_noise_std) ** -2) ** -0.5)


def sampling_probability(scheme: str, *, num_devices: int, clients_per_round: int, cap_ratio: float) -> float:
  """The q a DP run is accounted at, from configured quantities only (never from the data).

  Example:
    >>> sampling_probability("activity_capped", num_devices=5000, clients_per_round=200, cap_ratio=2.0)
    0.08
  """
  check_scheme(scheme)
  q = clients_per_round / num_devices
  if scheme == "activity_capped":
    q = min(1.0, cap_ratio * q)
  return float(q)


def neighboring_relation(scheme: str) -> NeighboringRelation:
  """The relation a scheme's rounds are analysed under: replace-one for "uniform", else add/remove.

  Example:
    >>> neighboring_relation("uniform").name
    'REPLACE_ONE'
  """
  check_scheme(scheme)
  if scheme == "uniform":
    return NeighboringRelation.REPLACE_ONE
  return NeighboringRelation.ADD_OR_REMOVE_ONE


def round_event(scheme: str, noise_multiplier: float, *, num_devices: int, clients_per_round: int,
                max_probability: float) -> dp_accounting.DpEvent:
  """The DpEvent of one DP-FedAvg round under `scheme`, from libs.dp.sampling's builders.

  Poisson schemes are accounted at q = max_probability (the configured cap, see the module
  docstring); "uniform" is m = clients_per_round of N = num_devices without replacement.

  Example:
    >>> round_event("uniform", 2.0, num_devices=2000, clients_per_round=40, max_probability=0.02)
    SampledWithoutReplacementDpEvent(source_dataset_size=2000, sample_size=40, ...)
  """
  check_scheme(scheme)
  if scheme == "uniform":
    return sampling.fixed_size_step_event(num_devices, clients_per_round, noise_multiplier)
  return sampling.poisson_step_event(max_probability, noise_multiplier)


class DeviceAccountant:
  """(epsilon, delta) per device of DP-FedAvg rounds, refusing a round that would overspend.

  Poisson schemes use libs.accounting's `PrivacyLedger` (add/remove-one); "uniform" uses
  dp_accounting's RDP accountant with the replace-one relation.
  """

  def __init__(self, scheme: str, *, noise_multiplier: float, num_devices: int, clients_per_round: int,
               max_probability: float, target_epsilon: float, delta: float, accountant: str = "rdp",
               dropout: float = 0.0, dropout_mode: str = "independent"):
    check_scheme(scheme, accountant=accountant, dropout=dropout, dropout_mode=dropout_mode)
    self.scheme = scheme
    self.noise_multiplier = float(noise_multiplier)
    self.target_epsilon = float(target_epsilon)
    self.delta = float(delta)
    self.accountant = accountant
    self.rounds = 0
    self.neighboring_relation = neighboring_relation(scheme).name.lower()
    self.event = round_event(scheme, self.noise_multiplier, num_devices=num_devices,
                             clients_per_round=clients_per_round, max_probability=max_probability)
    if scheme == "uniform":
      self.sampling_probability = clients_per_round / num_devices
      # Cached per-round RDP: epsilon(rounds) is then one conversion, however many rounds.
      self._orders = accounting.DEFAULT_RDP_ORDERS
      acct = accounting.make_accountant("rdp", orders=self._orders,
                                        neighboring_relation=NeighboringRelation.REPLACE_ONE)
      self._rdp = np.asarray(acct.compose(self.event).rdp) if self.noise_multiplier > 0 else None
      self._ledger = None
    else:
      self.sampling_probability = float(max_probability)
      self._ledger = PrivacyLedger(target_epsilon, delta, accountant, unit=UNIT)

  def epsilon(self, rounds: int | None = None) -> float:
    """Epsilon at delta after `rounds` rounds (default: the rounds recorded)."""
    rounds = self.rounds if rounds is None else rounds
    if rounds == 0:
      return 0.0
    if self.noise_multiplier == 0:
      return math.inf
    if self._ledger is None:
      eps = float(rdp_privacy_accountant.compute_epsilon(self._orders, rounds * self._rdp, self.delta)[0])
      return math.inf if math.isnan(eps) else eps
    with _quiet_accountant():
      if rounds == self.rounds:
        return self._ledger.epsilon()
      return self._ledger.epsilon_after(self.event, rounds - self.rounds)

  def check_next_round(self) -> float:
    """Epsilon after one more round; PrivacyBudgetExceeded if it would pass the target."""
    eps = self.epsilon(self.rounds + 1)
    if not eps <= self.target_epsilon:
      raise PrivacyBudgetExceeded(
          f"round {self.rounds + 1} would reach epsilon = {eps:.6g} at delta = {self.delta:g} (per {UNIT}, "
          f"{self.scheme} sampling at q = {self.sampling_probability:.4g}), past the target epsilon = "
          f"{self.target_epsilon:g}; currently epsilon = {self.epsilon():.6g} after {self.rounds} rounds")
    return eps

  def record_round(self, count: int = 1) -> None:
    if self._ledger is not None:
      self._ledger.record(self.event, count)
    self.rounds += count

  def summary(self) -> dict:
    return {"epsilon": self.epsilon(), "target_epsilon": self.target_epsilon, "delta": self.delta,
            "unit": UNIT, "accountant": self.accountant, "neighboring_relation": self.neighboring_relation,
            "sampling": self.scheme, "sampling_probability": self.sampling_probability,
            "noise_multiplier": self.noise_multiplier, "rounds": self.rounds}


def calibrate_noise_multiplier(target_epsilon: float, delta: float, rounds: int, scheme: str, *,
                               num_devices: int, clients_per_round: int, max_probability: float,
                               accountant: str = "rdp", tol: float = 1e-4) -> float:
  """Smallest noise multiplier z (within `tol`) with epsilon(rounds) <= target.

  libs.accounting's `calibrate_event_noise_multiplier` over `rounds` compositions of
  `round_event(scheme, z, ...)`, under the scheme's `neighboring_relation`: the same events
  and relation `DeviceAccountant` then accounts.

  Example:
    >>> z = calibrate_noise_multiplier(4.0, 1e-5, 100, "poisson", num_devices=1000,
    ...                                clients_per_round=50, max_probability=0.05)
  """
  check_scheme(scheme, accountant=accountant)
  rounds = dpsgd_accounting.check_steps(rounds, "rounds")
  if rounds == 0:
    raise ValueError("rounds must be > 0 to calibrate a noise multiplier (0 rounds cost nothing)")

  def run_event(z: float) -> dp_accounting.DpEvent:
    step = round_event(scheme, z, num_devices=num_devices, clients_per_round=clients_per_round,
                       max_probability=max_probability)
    return dp_accounting.SelfComposedDpEvent(step, rounds)

  with _quiet_accountant():
    return accounting.calibrate_event_noise_multiplier(
        run_event, target_epsilon, delta, accountant,
        neighboring_relation=neighboring_relation(scheme), tol=tol)
