"""Continual federated learning: what each device holds as time passes.

A device produces examples period by period and keeps at most `storage_budget` of them,
deleting the oldest first (by period; within a period, by row order, which `data.py` makes
chronological). The client set stays the same: a device with nothing yet is an empty client.

Example:
  >>> data = generate_population(1000, seed=0, num_periods=4)
  >>> now = available(data, period=2, storage_budget=50)   # what devices hold after period 2
  >>> fresh = period_slice(data, period=2)                 # only period 2's examples
"""

from __future__ import annotations

import numpy as np

from projects.fedlearn.data import FederatedData


def _keep(data: FederatedData, keep: np.ndarray) -> FederatedData:
  rows = np.nonzero(keep)[0]
  return data.regroup(rows, np.bincount(data.device_of_rows()[rows], minlength=data.num_devices))


def period_slice(data: FederatedData, period: int) -> FederatedData:
  """Only the examples produced in `period`; every device stays (possibly empty).

  Example:
    >>> period_slice(data, 0).num_devices == data.num_devices
    True
  """
  if period < 0:
    raise ValueError(f"period must be >= 0, got {period}")
  return _keep(data, data.periods == period)


def available(data: FederatedData, period: int, storage_budget: int | None) -> FederatedData:
  """What each device holds at the end of `period`: its examples of periods <= `period`,
  only the newest `storage_budget` of them (None: unlimited). Rows stay chronological.

  Example:
    >>> held = available(data, period=1, storage_budget=10)
    >>> bool((held.num_examples() <= 10).all())
    True
  """
  if period < 0:
    raise ValueError(f"period must be >= 0, got {period}")
  if storage_budget is not None and (int(storage_budget) != storage_budget or storage_budget < 1):
    raise ValueError(f"storage_budget must be a positive integer or None, got {storage_budget}")
  device = data.device_of_rows()
  # Chronological order within each device, even if rows were not stored sorted by period.
  order = np.lexsort((data.periods, device))
  seen = data.periods[order] <= period
  held = np.bincount(device[order][seen], minlength=data.num_devices)
  if storage_budget is None:
    keep_sorted = seen
  else:
    # Position of each seen row among its device's seen rows, counted from the newest.
    starts = np.concatenate([[0], np.cumsum(held)[:-1]])
    dev_seen = device[order][seen]
    from_newest = held[dev_seen] - 1 - (np.arange(len(dev_seen)) - starts[dev_seen])
    keep_sorted = seen.copy()
    keep_sorted[np.nonzero(seen)[0]] = from_newest < storage_budget
  rows = order[keep_sorted]
  return data.regroup(rows, np.bincount(device[rows], minlength=data.num_devices))
