"""Input checks shared by every privacy-accounting entry point (one home, one rule).

`libs.accounting` (dpsgd, ledger, the PATE analysis) and `libs.dp.sampling` (the samplers'
`dp_event`) validate with these functions, so the same bad input gets the same ValueError,
naming the argument, whichever caller it went through. The import runs one way only:
`libs.dp` may import `libs.accounting`; `libs.accounting` never imports `libs.dp`.

The rule for numbers:
  * bool is never a number (`True` is not a noise multiplier of 1), and neither are
    strings or None; NumPy scalars are numbers.
  * A noise multiplier (the std of Gaussian noise divided by the sensitivity, handed to
    dp_accounting) must be finite and >= 0. An explicit 0 is a non-private release: it is
    accepted, and accounting reports its epsilon as inf (`epsilon_of_event`,
    `dpsgd_epsilon`). It is never a default anywhere: a mechanism without noise has to be
    asked for. Negative, NaN and inf are errors.
  * A noise *scale* that an analysis divides by (the PATE GNMax / threshold sigma, a Laplace
    scale, the smoothness beta) must be finite and > 0: those bounds have no value at 0.
  * delta in (0, 1); a sampling probability in (0, 1]; a step or record count a
    non-negative integer (an integral float such as 6000.0 is accepted: epochs * N / B is
    often computed in floats).

Example:
  >>> check_noise_multiplier(0)          # non-private, allowed: epsilon will be inf
  0.0
  >>> check_noise_multiplier(-1.0)       # ValueError: noise_multiplier must be ...
  >>> check_positive("sigma", 40)
  40.0
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Sequence

import numpy as np


def is_real(x: Any) -> bool:
  """True for a real number (Python or NumPy scalar), False for bool and anything else.

  Example:
    >>> is_real(np.float32(1.0)), is_real(True)
    (True, False)
  """
  return isinstance(x, (numbers.Real, np.floating, np.integer)) and not isinstance(x, bool)


def is_int(x: Any) -> bool:
  """True for a Python or NumPy integer, False for bool.

  Example:
    >>> is_int(np.int64(3)), is_int(3.0)
    (True, False)
  """
  return isinstance(x, (numbers.Integral, np.integer)) and not isinstance(x, bool)


# -- scalars -------------------------------------------------------------------------------


def _check_real(name: str, value: Any, holds: Callable[[float], bool], requirement: str) -> float:
  """`value` as a float if it is a finite real number for which `holds`; else ValueError."""
  if not is_real(value) or not math.isfinite(value) or not holds(value):
    raise ValueError(f"{name} must be {requirement}, got {value!r}")
  return float(value)


def check_noise_multiplier(noise_multiplier: Any, name: str = "noise_multiplier") -> float:
  """Finite and >= 0; 0 is a non-private release (epsilon inf), see the module docstring.

  Example:
    >>> check_noise_multiplier(1)
    1.0
  """
  return _check_real(name, noise_multiplier, lambda v: v >= 0, "a finite number >= 0")


def check_positive(name: str, value: Any) -> float:
  """Finite and > 0 (e.g. check_positive("beta", 0.02) == 0.02)."""
  return _check_real(name, value, lambda v: v > 0, "a finite number > 0")


def check_finite(name: str, value: Any) -> float:
  """Any finite real number (e.g. check_finite("threshold", 150) == 150.0)."""
  return _check_real(name, value, lambda v: True, "a finite number")


def check_epsilon(epsilon: Any, name: str = "target_epsilon") -> float:
  """An epsilon budget: finite and > 0 (e.g. check_epsilon(8) == 8.0)."""
  return check_positive(name, epsilon)


def check_delta(delta: Any) -> float:
  """delta in (0, 1) (e.g. check_delta(1e-5) == 1e-05)."""
  return _check_real("delta", delta, lambda v: 0 < v < 1, "in (0, 1)")


def check_sampling_probability(sampling_probability: Any) -> float:
  """A sampling probability in (0, 1] (e.g. 256 / 60000)."""
  return _check_real("sampling_probability", sampling_probability, lambda v: 0 < v <= 1,
                     "in (0, 1]")


def check_count(value: Any, name: str = "steps") -> int:
  """Returns a step / query count as an int; ValueError unless a non-negative integer.

  An integral float is accepted (6000.0), a fractional one or a bool is not.

  Example:
    >>> check_count(15 * 60000 / 150)
    6000
  """
  if is_int(value):
    count = int(value)
  elif is_real(value) and math.isfinite(value) and float(value).is_integer():
    count = int(value)
  else:
    raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
  if count < 0:
    raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
  return count


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
  """Returns a strict int (no floats, no bools) in [low, high]; ValueError otherwise.

  For sizes and indices, where 10.0 examples is more likely a bug than a rounding.

  Example:
    >>> check_int("batch_size", 64, 1, 1000)
    64
  """
  if not is_int(value):
    raise ValueError(f"{name} must be an int, got {value!r}")
  if value < low or (high is not None and value > high):
    bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
    raise ValueError(f"{name} must be {bound}, got {value}")
  return int(value)


def check_positive_int(name: str, value: Any) -> int:
  """Returns `value` as an int; ValueError unless an integer >= 1 (no floats, no bools).

  Example:
    >>> check_positive_int("num_teachers", 250)
    250
  """
  if not is_int(value) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


# -- orders --------------------------------------------------------------------------------


def check_rdp_orders(orders: Sequence[float]) -> tuple[float, ...]:
  """Returns RDP orders as a tuple of floats; all must be finite and > 1, 1-D, non-empty.

  Example:
    >>> check_rdp_orders([2, 4.5])
    (2.0, 4.5)
  """
  arr = np.asarray(orders, dtype=np.float64)
  if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 1):
    raise ValueError(f"orders must be a non-empty 1-D sequence of finite numbers > 1, "
                     f"got {orders!r}")
  return tuple(float(a) for a in arr)


def check_orders_array(orders: Any) -> np.ndarray:
  """Orders as a float64 array of the given shape (scalar or 1-D); all finite and > 1.

  Example:
    >>> check_orders_array(20.0).shape
    ()
  """
  arr = np.asarray(orders, dtype=np.float64)
  if arr.ndim > 1 or arr.size == 0:
    raise ValueError(f"orders must be a scalar or a non-empty 1-D array, got shape {arr.shape}")
  if not np.all(np.isfinite(arr)) or np.any(arr <= 1):
    raise ValueError(f"orders must all be finite and > 1, got {orders!r}")
  return arr


# -- PATE vote histograms ------------------------------------------------------------------


def check_votes(votes: Any, ndim: int, name: str) -> np.ndarray:
  """Vote histograms as float64: [C] (ndim 1) or [Q, C] (ndim 2), >= 2 classes, finite, >= 0.

  Example:
    >>> check_votes([[3, 1]], 2, "votes_batch").dtype
    dtype('float64')
  """
  arr = np.asarray(votes)
  if arr.ndim != ndim:
    what = "1-D [classes]" if ndim == 1 else "2-D [queries, classes]"
    raise ValueError(f"{name} must be {what}, got shape {arr.shape}")
  if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
    raise ValueError(f"{name} must hold integer or float counts, got dtype {arr.dtype}")
  arr = arr.astype(np.float64)
  if arr.shape[-1] < 2:
    raise ValueError(f"{name} needs at least 2 classes, got shape {arr.shape}")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} has non-finite counts")
  if np.any(arr < 0):
    raise ValueError(f"{name} has negative counts")
  return arr


def check_num_teachers(num_teachers: Any, votes: np.ndarray, name: str = "votes") -> int:
  """num_teachers as an int >= 1; ValueError also if a histogram of `votes` sums to more.

  Example:
    >>> check_num_teachers(250, np.array([240.0, 10.0]))
    250
  """
  num_teachers = check_positive_int("num_teachers", num_teachers)
  sums = votes.sum(axis=-1)
  if np.any(sums > num_teachers + 1e-9 * num_teachers):
    raise ValueError(f"{name} sums to more than num_teachers = {num_teachers}")
  return num_teachers


def check_answered_mask(answered_mask: Any, num_queries: int) -> np.ndarray:
  """[Q] boolean mask of answered queries (all True for None; 0/1 integers are accepted).

  Example:
    >>> check_answered_mask([1, 0], 2)
    array([ True, False])
  """
  if answered_mask is None:
    return np.ones(num_queries, dtype=bool)
  mask = np.asarray(answered_mask)
  if mask.shape != (num_queries,):
    raise ValueError(f"answered_mask must have shape ({num_queries},), got {mask.shape}")
  if mask.dtype != bool:
    if not np.all((mask == 0) | (mask == 1)):
      raise ValueError("answered_mask must be boolean (or 0/1)")
    mask = mask.astype(bool)
  return mask
