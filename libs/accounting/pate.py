"""Privacy analysis of PATE aggregators (Papernot et al. 2017, 2018): NumPy float64, host side.

Neighbouring datasets differ in one training example, hence in the vote of at most one
teacher (teachers see disjoint partitions): one vote moves between classes (or to/from
an abstention), so each count changes by at most 1, the histogram by at most 2 in L1 and
sqrt(2) in L2, and max(votes) by at most 1.

Per query, everything is Renyi DP (RDP) at an array of orders lambda > 1: a mechanism M is
(lambda, eps)-RDP if D_lambda(M(D) || M(D')) <= eps for all neighbours D, D'.

  * Data-independent bounds hold for every pair of neighbours: they are the formal,
    worst-case guarantee. GNMax: lambda / sigma^2; Confident-GNMax selection:
    lambda / (2 sigma_t^2); LNMax: min(eps, lambda eps^2 / 2) with eps = 2 / scale;
    noisy averaging: lambda / sigma^2.
  * Data-dependent bounds bound D_lambda(M(D) || M(D')) for the *actual* dataset D (its
    vote histograms) and all its neighbours D'. They are much smaller when teachers agree,
    but are functions of the private data: publishing them as-is leaks, and they are not a
    DP guarantee. Papernot et al. 2018 publish a noisy version with smooth sensitivity
    (`release_data_dependent_epsilon`), whose release has its own formal RDP cost.

What is exact and what is an upper bound:
  * gnmax_log_q / lnmax_log_q: upper bounds on Pr[answer != argmax] (union bounds of exact
    pairwise probabilities, capped at 1 - 1/C since the argmax is the likeliest answer).
  * gnmax_rdp / lnmax_rdp: min(data-independent, data-dependent theorem bound): bounds.
  * threshold_rdp: the data-dependent part is the exact Renyi divergence between the two
    Bernoulli outputs for max-count m vs m +- 1 (max over both; an upper bound when m +- 1 is
    not actually reachable by a neighbour).
  * gnmax_local_sensitivity: a provably valid, looser-than-Algorithm-3 bound (see there).

Where each job lives (this module re-exports all of it, so `from libs.accounting import
pate` keeps working):
  * `pate_rdp`: per-query data-independent and data-dependent RDP (GNMax, LNMax, threshold,
    noisy averaging), DEFAULT_ORDERS.
  * `smooth_sensitivity`: local and smooth sensitivity of the data-dependent cost, the GNSS
    release (`release_data_dependent_epsilon`, `ReleasedEpsilon`).
  * `pate_ledger`: `PateLedger`, the running data-independent / data-dependent totals.
  * `_checks`: input checks shared with the rest of libs.accounting and libs.dp.sampling.

Example:
  >>> votes = np.array([[240, 5, 5, 0], [130, 120, 0, 0]])       # [Q, C]
  >>> ledger = PateLedger()
  >>> ledger.record_gnmax(votes, sigma=40.0)
  >>> ledger.epsilon(1e-5), ledger.epsilon(1e-5, data_dependent=True)
"""


# Re-exports: the public names of the PATE analysis, plus the two vectorised kernels that
# tests compare against brute-force references.
# pylint: disable=unused-import
from libs.accounting.pate_ledger import PateLedger
from libs.accounting.pate_rdp import _gnmax_rdp_from_log_q
from libs.accounting.pate_rdp import _lnmax_rdp_from_log_q
from libs.accounting.pate_rdp import DEFAULT_ORDERS
from libs.accounting.pate_rdp import dp_accounting_gnmax_rdp
from libs.accounting.pate_rdp import gnmax_log_q
from libs.accounting.pate_rdp import gnmax_rdp
from libs.accounting.pate_rdp import gnmax_rdp_batch
from libs.accounting.pate_rdp import lnmax_log_q
from libs.accounting.pate_rdp import lnmax_pure_epsilon
from libs.accounting.pate_rdp import lnmax_rdp
from libs.accounting.pate_rdp import log_pr_answered
from libs.accounting.pate_rdp import noisy_average_rdp
from libs.accounting.pate_rdp import threshold_rdp
from libs.accounting.smooth_sensitivity import gnmax_local_sensitivity
from libs.accounting.smooth_sensitivity import gnmax_smooth_sensitivity
from libs.accounting.smooth_sensitivity import gnss_rdp
from libs.accounting.smooth_sensitivity import release_data_dependent_epsilon
from libs.accounting.smooth_sensitivity import ReleasedEpsilon
from libs.accounting.smooth_sensitivity import smooth_sensitivity
from libs.accounting.smooth_sensitivity import threshold_local_sensitivity
from libs.accounting.smooth_sensitivity import total_local_sensitivity
# pylint: enable=unused-import

__all__ = [
    "DEFAULT_ORDERS",
    "dp_accounting_gnmax_rdp",
    "gnmax_local_sensitivity",
    "gnmax_log_q",
    "gnmax_rdp",
    "gnmax_rdp_batch",
    "gnmax_smooth_sensitivity",
    "gnss_rdp",
    "lnmax_log_q",
    "lnmax_pure_epsilon",
    "lnmax_rdp",
    "log_pr_answered",
    "noisy_average_rdp",
    "PateLedger",
    "release_data_dependent_epsilon",
    "ReleasedEpsilon",
    "smooth_sensitivity",
    "threshold_local_sensitivity",
    "threshold_rdp",
    "total_local_sensitivity",
]
