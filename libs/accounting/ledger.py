"""A privacy budget ledger for training loops: check before spending, checkpointable.

The ledger composes dp_accounting DpEvents and refuses (PrivacyBudgetExceeded) any event
that would take epsilon at `delta` past `target_epsilon`, before recording anything.

With the RDP accountant it is cheap per step: the RDP curve of each distinct event is
computed once and cached; the total is sum_e count_e * rdp_e (RDP composes additively, and
this is exactly what dp_accounting's RdpAccountant computes), so check/record cost
O(#distinct events * #orders), independent of the number of steps. With the PLD accountant
each epsilon of a new state costs one PLD self-composition per distinct event (~0.1-0.5 s
for thousands of DP-SGD steps): fine for occasional checks, slow once per step.

Example:
  >>> ledger = PrivacyLedger(target_epsilon=1.0, delta=1e-5)
  >>> step = dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.1))
  >>> for _ in range(num_steps):
  ...   ledger.spend(step)          # raises PrivacyBudgetExceeded before overspending
  ...   train_step(...)
  >>> state = ledger.state_dict()   # JSON-serialisable; PrivacyLedger.from_state_dict(state)
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import attr
import dp_accounting
from dp_accounting import dp_event as dp_event_lib
from dp_accounting.rdp import rdp_privacy_accountant
import numpy as np

from libs.accounting import dpsgd

_STATE_VERSION = 1


class PrivacyBudgetExceeded(RuntimeError):
  """Raised when spending an event would take epsilon past the ledger's target."""


def event_to_dict(event: dp_accounting.DpEvent) -> dict[str, Any]:
  """A JSON-serialisable description of a dp_accounting DpEvent (nested events included).

  Args:
    event: any DpEvent defined in dp_accounting.dp_event.

  Returns:
    {"type": class name, <field>: value, ...}, nested events as dicts.

  Example:
    >>> event_to_dict(dp_accounting.GaussianDpEvent(1.5))
    {'type': 'GaussianDpEvent', 'noise_multiplier': 1.5}
  """
  if not isinstance(event, dp_accounting.DpEvent):
    raise ValueError(f"event must be a dp_accounting.DpEvent, got {type(event).__name__}")
  cls = type(event)
  if getattr(dp_event_lib, cls.__name__, None) is not cls:
    raise ValueError(f"event type {cls.__name__} is not a dp_accounting.dp_event class")
  out: dict[str, Any] = {"type": cls.__name__}
  for field in attr.fields(cls):
    out[field.name] = _value_to_json(getattr(event, field.name))
  return out


def _value_to_json(value: Any) -> Any:
  if isinstance(value, dp_accounting.DpEvent):
    return event_to_dict(value)
  if isinstance(value, (list, tuple)):
    return [_value_to_json(v) for v in value]
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value)  # repr round-trips float64 exactly through JSON
  if isinstance(value, str) or value is None:
    return value
  raise ValueError(f"cannot serialise DpEvent field value {value!r}")


def event_from_dict(d: dict[str, Any]) -> dp_accounting.DpEvent:
  """Inverse of `event_to_dict`.

  Example:
    >>> event_from_dict({"type": "GaussianDpEvent", "noise_multiplier": 1.5})
    GaussianDpEvent(noise_multiplier=1.5)
  """
  if not isinstance(d, dict) or "type" not in d:
    raise ValueError(f"not a serialised DpEvent: {d!r}")
  cls = getattr(dp_event_lib, d["type"], None)
  if not (isinstance(cls, type) and issubclass(cls, dp_accounting.DpEvent)):
    raise ValueError(f"unknown DpEvent type {d['type']!r}")
  kwargs = {k: _value_from_json(v) for k, v in d.items() if k != "type"}
  return cls(**kwargs)


def _value_from_json(value: Any) -> Any:
  if isinstance(value, dict):
    return event_from_dict(value)
  if isinstance(value, list):
    return [_value_from_json(v) for v in value]
  return value


def _event_key(event: dp_accounting.DpEvent) -> str:
  # Canonical text of the event: hashable even when a field is a list (ComposedDpEvent).
  return json.dumps(event_to_dict(event), sort_keys=True)


def _check_count(count: Any) -> int:
  return dpsgd.check_steps(count, name="count")


class PrivacyLedger:
  """Tracks spent privacy against an (epsilon, delta) budget.

  Attributes:
    target_epsilon: the epsilon budget at `delta`.
    delta: the target delta.
    accountant: "rdp" or "pld".
    unit: what a neighbouring dataset differs in ("example", "speaker", ...); reported in
      messages so nobody mistakes a per-example guarantee for a per-user one.
  """

  def __init__(self, target_epsilon: float, delta: float, accountant: str = "rdp",
               unit: str = "example", *, orders: Sequence[float] | None = None,
               pld_discretization: float = dpsgd.DEFAULT_PLD_DISCRETIZATION):
    """Creates an empty ledger.

    Args:
      target_epsilon: budget, > 0.
      delta: target delta in (0, 1).
      accountant: "rdp" (fast per step) or "pld".
      unit: privacy unit, for messages and the summary.
      orders: RDP orders (None: dpsgd.DEFAULT_RDP_ORDERS).
      pld_discretization: PLD discretisation interval.

    Example:
      >>> PrivacyLedger(8.0, 1e-5, unit="speaker").epsilon()
      0.0
    """
    self.target_epsilon = dpsgd.check_epsilon(target_epsilon)
    self.delta = dpsgd.check_delta(delta)
    self.accountant = dpsgd.check_accountant(accountant)
    if not isinstance(unit, str) or not unit:
      raise ValueError(f"unit must be a non-empty string, got {unit!r}")
    self.unit = unit
    self._orders = dpsgd.check_rdp_orders(orders)
    self._pld_discretization = dpsgd.check_pld_discretization(pld_discretization)
    self._log: list[list[Any]] = []  # [[key, event, count], ...], consecutive repeats merged
    self._counts: dict[str, int] = {}  # event key -> total count
    self._key_event: dict[str, dp_accounting.DpEvent] = {}
    self._rdp_cache: dict[str, np.ndarray] = {}
    self._eps_cache: dict[tuple[tuple[str, int], ...], float] = {}

  # -- accounting -------------------------------------------------------------------------

  def _validate_event(self, event: Any) -> str:
    if not isinstance(event, dp_accounting.DpEvent):
      raise ValueError(f"event must be a dp_accounting.DpEvent, got {type(event).__name__}")
    key = _event_key(event)
    if key not in self._key_event:
      acct = dpsgd.make_accountant(self.accountant, orders=self._orders,
                                   pld_discretization=self._pld_discretization)
      if not acct.supports(event):
        raise ValueError(f"event {event} is not supported by the {self.accountant!r} accountant")
    return key

  def _event_rdp(self, key: str) -> np.ndarray:
    if key not in self._rdp_cache:
      acct = dp_accounting.rdp.RdpAccountant(list(self._orders))
      self._rdp_cache[key] = acct.compose(self._key_event[key]).rdp
    return self._rdp_cache[key]

  def _epsilon_of_counts(self, counts: dict[str, int]) -> float:
    items = tuple(sorted((k, c) for k, c in counts.items() if c > 0))
    if not items:
      return 0.0
    if items in self._eps_cache:
      return self._eps_cache[items]
    if self.accountant == "rdp":
      total = np.zeros(len(self._orders))
      for key, count in items:
        total = total + count * self._event_rdp(key)
      eps = float(rdp_privacy_accountant.compute_epsilon(self._orders, total, self.delta)[0])
    else:
      acct = dpsgd.make_accountant("pld", pld_discretization=self._pld_discretization)
      for key, count in items:
        acct.compose(self._key_event[key], count)
      eps = float(acct.get_epsilon(self.delta))
    if math.isnan(eps):
      eps = math.inf  # Never report an undefined epsilon as "within budget".
    if len(self._eps_cache) > 64:
      self._eps_cache.clear()
    self._eps_cache[items] = eps
    return eps

  def _counts_after(self, key: str, count: int) -> dict[str, int]:
    counts = dict(self._counts)
    counts[key] = counts.get(key, 0) + count
    return counts

  def epsilon(self) -> float:
    """Epsilon at `delta` spent so far.

    Example:
      >>> ledger.epsilon()   # e.g. 0.42
    """
    return self._epsilon_of_counts(self._counts)

  def epsilon_after(self, event: dp_accounting.DpEvent, count: int = 1) -> float:
    """Epsilon the ledger would reach after recording `event` `count` times (records nothing).

    Example:
      >>> ledger.epsilon_after(step, 10) <= ledger.target_epsilon
    """
    count = _check_count(count)
    key = self._validate_event(event)
    self._key_event.setdefault(key, event)
    return self._epsilon_of_counts(self._counts_after(key, count))

  def check(self, event: dp_accounting.DpEvent, count: int = 1) -> float:
    """Raises PrivacyBudgetExceeded if recording `event` `count` times would pass the target.

    Nothing is recorded either way.

    Args:
      event: the DpEvent about to run.
      count: how many times it will run.

    Returns:
      The epsilon after the event, when within budget.

    Raises:
      PrivacyBudgetExceeded: epsilon after the event would exceed target_epsilon.

    Example:
      >>> ledger.check(step)   # then run the step, then ledger.record(step)
    """
    eps = self.epsilon_after(event, count)
    if not eps <= self.target_epsilon:
      raise PrivacyBudgetExceeded(
          f"recording {count} x {event} would reach epsilon = {eps:.6g} at delta = "
          f"{self.delta:g} (per {self.unit}), past the target epsilon = "
          f"{self.target_epsilon:g}; currently epsilon = {self.epsilon():.6g}")
    return eps

  def record(self, event: dp_accounting.DpEvent, count: int = 1) -> None:
    """Records `event` composed `count` times, without checking the budget.

    Example:
      >>> ledger.record(step, count=100)
    """
    count = _check_count(count)
    key = self._validate_event(event)
    if count == 0:
      return
    self._key_event.setdefault(key, event)
    self._counts[key] = self._counts.get(key, 0) + count
    if self._log and self._log[-1][0] == key:
      self._log[-1][2] += count  # Merge repeats so the log stays small over long runs.
    else:
      self._log.append([key, event, count])

  def spend(self, event: dp_accounting.DpEvent, count: int = 1) -> float:
    """`check` then `record`; returns the new epsilon.

    Example:
      >>> ledger.spend(step)
    """
    eps = self.check(event, count)
    self.record(event, count)
    return eps

  def would_exceed(self, event: dp_accounting.DpEvent, count: int = 1) -> bool:
    """Whether recording `event` `count` times would pass the target (records nothing).

    Example:
      >>> if ledger.would_exceed(step, 100): stop_training()
    """
    return not self.epsilon_after(event, count) <= self.target_epsilon

  # -- introspection and checkpointing ---------------------------------------------------

  @property
  def events(self) -> list[tuple[dp_accounting.DpEvent, int]]:
    """Recorded (event, count) pairs in order, consecutive repeats of one event merged.

    Example:
      >>> ledger.events
      [(PoissonSampledDpEvent(...), 300)]
    """
    return [(e, c) for _, e, c in self._log]

  @property
  def remaining_epsilon(self) -> float:
    """target_epsilon - epsilon(), floored at 0 (epsilon is not additive: only a hint)."""
    return max(0.0, self.target_epsilon - self.epsilon())

  def summary(self) -> dict[str, Any]:
    """A small dict for logs: epsilon spent, target, delta, unit, accountant, #events.

    Example:
      >>> ledger.summary()["epsilon"] <= ledger.summary()["target_epsilon"]
      True
    """
    return {
        "epsilon": self.epsilon(),
        "target_epsilon": self.target_epsilon,
        "delta": self.delta,
        "unit": self.unit,
        "accountant": self.accountant,
        "num_events": int(sum(self._counts.values())),
        "num_distinct_events": len([c for c in self._counts.values() if c > 0]),
    }

  def state_dict(self) -> dict[str, Any]:
    """JSON-serialisable state; `from_state_dict` restores an equivalent ledger.

    Example:
      >>> json.dumps(ledger.state_dict())
    """
    return {
        "version": _STATE_VERSION,
        "target_epsilon": self.target_epsilon,
        "delta": self.delta,
        "accountant": self.accountant,
        "unit": self.unit,
        "orders": list(self._orders),
        "pld_discretization": self._pld_discretization,
        "events": [{"event": event_to_dict(e), "count": int(c)} for _, e, c in self._log],
    }

  @classmethod
  def from_state_dict(cls, state: dict[str, Any]) -> "PrivacyLedger":
    """Rebuilds a ledger from `state_dict()` output (e.g. after a JSON round trip).

    Example:
      >>> restored = PrivacyLedger.from_state_dict(json.loads(json.dumps(ledger.state_dict())))
    """
    if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
      raise ValueError(f"state must be a PrivacyLedger.state_dict() of version {_STATE_VERSION}")
    ledger = cls(state["target_epsilon"], state["delta"], state["accountant"], state["unit"],
                 orders=state["orders"], pld_discretization=state["pld_discretization"])
    for item in state["events"]:
      ledger.record(event_from_dict(item["event"]), item["count"])
    return ledger

  def __repr__(self) -> str:
    return (f"PrivacyLedger(epsilon={self.epsilon():.4g}, target_epsilon={self.target_epsilon:g}, "
            f"delta={self.delta:g}, accountant={self.accountant!r}, unit={self.unit!r})")
