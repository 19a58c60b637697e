"""Field checks for ml_collections configs; every error names the field and the value.

Example:
  >>> positive_int(config, "fl.rounds")
  >>> number(config, "dp.delta", 0.0, 1.0, low_open=True, high_open=True)
  >>> require(config.task.name in TASKS, "task.name", f"must be one of {TASKS}", config.task.name)
"""

from __future__ import annotations

import math
from typing import Any


def require(ok: bool, field: str, message: str, value: Any) -> None:
  """Raises ValueError("config.<field> <message>, got <value>") unless `ok`."""
  if not ok:
    raise ValueError(f"config.{field} {message}, got {value!r}")


def get(config, field: str) -> Any:
  """The value at a dotted path ("fl.rounds")."""
  value = config
  for part in field.split("."):
    value = value[part]
  return value


def positive_int(config, field: str, minimum: int = 1) -> None:
  """An int (not a bool) >= minimum."""
  value = get(config, field)
  require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum, field,
          f"must be an integer >= {minimum}", value)


def number(config, field: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> None:
  """A finite int or float (not a bool) in the interval, open or closed at each end."""
  value = get(config, field)
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
  lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
  require(ok, field, f"must be a number in {lo}{low:g}, {high:g}{hi}", value)


def one_of(config, field: str, choices: tuple) -> None:
  """A value among `choices`."""
  value = get(config, field)
  require(value in choices, field, f"must be one of {choices}", value)
