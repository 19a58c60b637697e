"""`PateLedger`: the running PATE privacy bill of a labelling run (host side, NumPy float64).

It sums the per-query RDP of `pate_rdp` at fixed orders into two totals, a data-independent
one (the formal guarantee, the one to stop on) and a data-dependent one (private: publish it
only through `smooth_sensitivity.release_data_dependent_epsilon`), and round-trips through
JSON for checkpoints.

Example:
  >>> votes = np.array([[240, 5, 5, 0], [130, 120, 0, 0]])       # [Q, C]
  >>> ledger = PateLedger()
  >>> ledger.record_gnmax(votes, sigma=40.0)
  >>> ledger.epsilon(1e-5), ledger.epsilon(1e-5, data_dependent=True)
"""

from __future__ import annotations

from typing import Any, Sequence

from dp_accounting.rdp import rdp_privacy_accountant
import numpy as np

from libs.accounting import _checks
from libs.accounting.pate_rdp import _gnmax_log_q
from libs.accounting.pate_rdp import _gnmax_rdp_from_log_q
from libs.accounting.pate_rdp import _lnmax_log_q
from libs.accounting.pate_rdp import _lnmax_rdp_from_log_q
from libs.accounting.pate_rdp import _threshold_rdp_from_max
from libs.accounting.pate_rdp import DEFAULT_ORDERS
from libs.accounting.pate_rdp import noisy_average_rdp


class PateLedger:
  """Accumulates PATE per-query RDP at fixed orders: a data-independent and a dd total.

  * `rdp_data_independent`: sum of worst-case per-query RDP -> `epsilon(delta)` is the
    formal (epsilon, delta)-DP guarantee of everything recorded. Stop a labelling loop on
    this one: `would_exceed(target, delta, ...)` before each batch.
  * `rdp_data_dependent`: sum of the per-query bounds at the actual votes ->
    `epsilon(delta, data_dependent=True)`. Private; see `release_data_dependent_epsilon`.

  GNMax is charged only for answered queries (Confident-GNMax). Which queries get answered
  is random, so the data-independent total is a worst-case bound together with a stopping
  rule: an RDP privacy filter (Feldman & Zrnic 2021) lets adaptively chosen per-query costs
  compose up to a per-order budget fixed in advance. GNMax, threshold and noisy-average
  costs are all c * lambda, so stopping before epsilon(delta) would pass a fixed target is
  such a budget; mixing in LNMax (not linear in lambda) is not covered - then record every
  query as answered (answered_mask=None) for a guarantee without the filter argument.

  Counters: `num_answered` counts answers (GNMax, LNMax, noisy average); `num_queries`
  counts queries seen by a selection step plus answers recorded without an answered_mask.

  Example:
    >>> ledger = PateLedger(num_teachers=250)
    >>> if ledger.would_exceed(2.0, 1e-5, num_queries=len(votes), gnmax_sigma=40.0,
    ...                        threshold_sigma=100.0):
    ...   stop()
    >>> ledger.record_confident_gnmax(votes, 150.0, 100.0, 40.0, answered)
    >>> ledger.epsilon(1e-5), ledger.epsilon(1e-5, data_dependent=True)
  """

  def __init__(self, orders: Sequence[float] | None = None, *, num_teachers: int | None = None):
    """Creates an empty ledger.

    Args:
      orders: Renyi orders > 1 (None: DEFAULT_ORDERS).
      num_teachers: optional T; enables the [0, T] clipping of the threshold analysis and
        checks that histograms sum to at most T.

    Example:
      >>> PateLedger().epsilon(1e-5)
      0.0
    """
    orders = DEFAULT_ORDERS if orders is None else orders
    self._orders = np.atleast_1d(_checks.check_orders_array(orders)).copy()
    if num_teachers is not None:
      num_teachers = _checks.check_positive_int("num_teachers", num_teachers)
    self.num_teachers = num_teachers
    self._indep = np.zeros_like(self._orders)
    self._dep = np.zeros_like(self._orders)
    self.num_queries = 0
    self.num_answered = 0

  @property
  def orders(self) -> np.ndarray:
    """The Renyi orders of both totals (a copy)."""
    return self._orders.copy()

  @property
  def rdp_data_independent(self) -> np.ndarray:
    """Worst-case RDP total at each order (a copy): the formal guarantee."""
    return self._indep.copy()

  @property
  def rdp_data_dependent(self) -> np.ndarray:
    """Data-dependent RDP total at each order (a copy): private, see module docstring."""
    return self._dep.copy()

  def _batch(self, votes_batch: Any) -> np.ndarray:
    votes = _checks.check_votes(votes_batch, 2, "votes_batch")
    if self.num_teachers is not None:
      _checks.check_num_teachers(self.num_teachers, votes, "votes_batch")
    return votes

  def record_gnmax(self, votes_batch: Any, sigma: float, answered_mask: Any = None
                   ) -> np.ndarray:
    """Records GNMax answers to the queries where `answered_mask` is True (all if None).

    Args:
      votes_batch: [Q, C] histograms.
      sigma: GNMax noise std.
      answered_mask: [Q] booleans (from the selection step) or None.

    Returns:
      [Q, L] per-query data-dependent RDP (0 for unanswered queries).

    Example:
      >>> ledger.record_gnmax(votes, 40.0)
    """
    votes = self._batch(votes_batch)
    sigma = _checks.check_positive("sigma", sigma)
    mask = _checks.check_answered_mask(answered_mask, votes.shape[0])
    per_query = np.zeros((votes.shape[0], self._orders.size))
    if mask.any():
      per_query[mask] = _gnmax_rdp_from_log_q(_gnmax_log_q(votes[mask], sigma), sigma,
                                              self._orders)
    n = int(mask.sum())
    self._indep += n * self._orders / sigma**2
    self._dep += per_query.sum(axis=0)
    self.num_answered += n
    if answered_mask is None:
      self.num_queries += votes.shape[0]
    return per_query

  def record_lnmax(self, votes_batch: Any, scale: float) -> np.ndarray:
    """Records LNMax answers (Laplace(scale) noise) to every query of the batch.

    Example:
      >>> ledger.record_lnmax(votes, 20.0)
    """
    votes = self._batch(votes_batch)
    scale = _checks.check_positive("scale", scale)
    per_query = _lnmax_rdp_from_log_q(_lnmax_log_q(votes, scale), scale, self._orders)
    eps = 2.0 / scale
    self._indep += votes.shape[0] * np.minimum(eps, self._orders * eps * eps / 2.0)
    self._dep += per_query.sum(axis=0)
    self.num_answered += votes.shape[0]
    self.num_queries += votes.shape[0]
    return per_query

  def record_threshold(self, votes_batch: Any, threshold: float, sigma_threshold: float
                       ) -> np.ndarray:
    """Records the Confident-GNMax selection step on every query of the batch.

    Example:
      >>> ledger.record_threshold(votes, 150.0, 100.0)
    """
    votes = self._batch(votes_batch)
    threshold = _checks.check_finite("threshold", threshold)
    sigma_t = _checks.check_positive("sigma_threshold", sigma_threshold)
    per_query = _threshold_rdp_from_max(votes.max(axis=1), threshold, sigma_t, self._orders,
                                        self.num_teachers)
    self._indep += votes.shape[0] * self._orders / (2.0 * sigma_t**2)
    self._dep += per_query.sum(axis=0)
    self.num_queries += votes.shape[0]
    return per_query

  def record_confident_gnmax(self, votes_batch: Any, threshold: float, sigma_threshold: float,
                             sigma: float, answered_mask: Any) -> np.ndarray:
    """record_threshold on all queries + record_gnmax on the answered ones; returns the sum.

    Example:
      >>> ledger.record_confident_gnmax(votes, 150.0, 100.0, 40.0, answered)
    """
    if answered_mask is None:
      raise ValueError("answered_mask is required for Confident-GNMax")
    per_query = self.record_threshold(votes_batch, threshold, sigma_threshold)
    return per_query + self.record_gnmax(votes_batch, sigma, answered_mask)

  def record_noisy_average(self, num_queries: int, sigma: float) -> None:
    """Records `num_queries` noisy-average (soft-vote) answers with noise std `sigma`.

    No data-dependent analysis: both totals get num_queries * lambda / sigma^2.

    Example:
      >>> ledger.record_noisy_average(100, 60.0)
    """
    num_queries = _checks.check_count(num_queries, "num_queries")
    rdp = int(num_queries) * noisy_average_rdp(sigma, self._orders)
    self._indep += rdp
    self._dep += rdp
    self.num_answered += int(num_queries)
    self.num_queries += int(num_queries)

  def epsilon(self, delta: float, data_dependent: bool = False) -> float:
    """Epsilon at `delta` of the data-independent (default) or data-dependent total.

    Example:
      >>> ledger.epsilon(1e-5)
    """
    return self.epsilon_and_order(delta, data_dependent)[0]

  def epsilon_and_order(self, delta: float, data_dependent: bool = False
                        ) -> tuple[float, float]:
    """(epsilon, optimal order) via dp_accounting.rdp.compute_epsilon (improved conversion).

    Example:
      >>> eps, order = ledger.epsilon_and_order(1e-5)
    """
    delta = _checks.check_delta(delta)
    rdp = self._dep if data_dependent else self._indep
    eps, order = rdp_privacy_accountant.compute_epsilon(self._orders, rdp, delta)
    return float(eps), float(order)

  def would_exceed(self, target_epsilon: float, delta: float, *, num_queries: int = 1,
                   gnmax_sigma: float | None = None, threshold_sigma: float | None = None,
                   lnmax_scale: float | None = None,
                   noisy_average_sigma: float | None = None) -> bool:
    """Whether `num_queries` more queries could take the data-independent epsilon past target.

    Worst case: every query is charged every given mechanism (all answered). Records nothing.

    Args:
      target_epsilon: budget, > 0.
      delta: delta in (0, 1).
      num_queries: queries in the next batch.
      gnmax_sigma / threshold_sigma / lnmax_scale / noisy_average_sigma: the mechanisms each
        query will go through (at least one).

    Returns:
      True if the data-independent epsilon after the batch could exceed target_epsilon.

    Example:
      >>> ledger.would_exceed(2.0, 1e-5, num_queries=100, gnmax_sigma=40.0, threshold_sigma=100.0)
    """
    _checks.check_epsilon(target_epsilon)
    delta = _checks.check_delta(delta)
    num_queries = _checks.check_count(num_queries, "num_queries")
    per_query = np.zeros_like(self._orders)
    given = False
    if gnmax_sigma is not None:
      per_query += self._orders / _checks.check_positive("gnmax_sigma", gnmax_sigma)**2
      given = True
    if threshold_sigma is not None:
      sigma_t = _checks.check_positive("threshold_sigma", threshold_sigma)
      per_query += self._orders / (2.0 * sigma_t**2)
      given = True
    if lnmax_scale is not None:
      eps = 2.0 / _checks.check_positive("lnmax_scale", lnmax_scale)
      per_query += np.minimum(eps, self._orders * eps * eps / 2.0)
      given = True
    if noisy_average_sigma is not None:
      sigma_avg = _checks.check_positive("noisy_average_sigma", noisy_average_sigma)
      per_query += self._orders / sigma_avg**2
      given = True
    if not given:
      raise ValueError("give at least one of gnmax_sigma, threshold_sigma, lnmax_scale, "
                       "noisy_average_sigma")
    rdp = self._indep + int(num_queries) * per_query
    eps = rdp_privacy_accountant.compute_epsilon(self._orders, rdp, delta)[0]
    return not eps <= target_epsilon

  def summary(self, delta: float) -> dict[str, Any]:
    """Dict for logs: both epsilons (with their orders) and the query counters.

    Example:
      >>> ledger.summary(1e-5)["epsilon_data_independent"]
    """
    eps_i, order_i = self.epsilon_and_order(delta)
    eps_d, order_d = self.epsilon_and_order(delta, data_dependent=True)
    return {"delta": float(delta), "epsilon_data_independent": eps_i,
            "order_data_independent": order_i, "epsilon_data_dependent": eps_d,
            "order_data_dependent": order_d, "num_queries": self.num_queries,
            "num_answered": self.num_answered}

  def state_dict(self) -> dict[str, Any]:
    """JSON-serialisable state (orders, both totals, counters).

    Example:
      >>> PateLedger.from_state_dict(ledger.state_dict())
    """
    return {"orders": self._orders.tolist(), "num_teachers": self.num_teachers,
            "rdp_data_independent": self._indep.tolist(),
            "rdp_data_dependent": self._dep.tolist(), "num_queries": self.num_queries,
            "num_answered": self.num_answered}

  @classmethod
  def from_state_dict(cls, state: dict[str, Any]) -> "PateLedger":
    """Inverse of `state_dict` (also after a JSON round trip).

    Example:
      >>> restored = PateLedger.from_state_dict(json.loads(json.dumps(ledger.state_dict())))
    """
    ledger = cls(state["orders"], num_teachers=state["num_teachers"])
    indep = np.asarray(state["rdp_data_independent"], dtype=np.float64)
    dep = np.asarray(state["rdp_data_dependent"], dtype=np.float64)
    if indep.shape != ledger._orders.shape or dep.shape != ledger._orders.shape:
      raise ValueError("state totals do not match its orders")
    ledger._indep, ledger._dep = indep, dep
    ledger.num_queries = int(state["num_queries"])
    ledger.num_answered = int(state["num_answered"])
    return ledger
