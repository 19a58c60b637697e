"""Host-side privacy accounting (NumPy / float64, never inside jit).

* `dpsgd`: (epsilon, delta) of DP-SGD via dp_accounting (RDP or PLD), noise calibration
  (for DP-SGD, and for any event factory z -> DpEvent under any neighbouring relation).
* `ledger`: a checkpointable budget ledger that refuses a step before it overspends.
* `pate`: the PATE analysis, re-exported from `pate_rdp` (data-independent and
  data-dependent RDP of GNMax, LNMax, Confident-GNMax selection, noisy averaging),
  `smooth_sensitivity` (local / smooth sensitivity and the GNSS release) and `pate_ledger`.
* `_checks`: the argument checks every entry point above (and libs.dp.sampling) shares.
  Noise multiplier 0 is a non-private release with epsilon inf; negative, NaN, inf and
  bool are errors.

Example:
  >>> from libs import accounting
  >>> accounting.dpsgd_epsilon(1.3, 150 / 60000, 6000, 1e-5)   # ~0.724
  >>> ledger = accounting.PrivacyLedger(target_epsilon=1.0, delta=1e-5)
"""

from libs.accounting.dpsgd import calibrate_event_noise_multiplier
from libs.accounting.dpsgd import calibrate_noise_multiplier
from libs.accounting.dpsgd import DEFAULT_PLD_DISCRETIZATION
from libs.accounting.dpsgd import DEFAULT_RDP_ORDERS
from libs.accounting.dpsgd import dpsgd_epsilon
from libs.accounting.dpsgd import epsilon_of_event
from libs.accounting.dpsgd import make_accountant
from libs.accounting.dpsgd import NeighboringRelation
from libs.accounting.dpsgd import poisson_gaussian_event
from libs.accounting.ledger import event_from_dict
from libs.accounting.ledger import event_to_dict
from libs.accounting.ledger import PrivacyBudgetExceeded
from libs.accounting.ledger import PrivacyLedger
from libs.accounting.pate import DEFAULT_ORDERS as DEFAULT_PATE_ORDERS
from libs.accounting.pate import gnmax_local_sensitivity
from libs.accounting.pate import gnmax_log_q
from libs.accounting.pate import gnmax_rdp
from libs.accounting.pate import gnmax_rdp_batch
from libs.accounting.pate import gnmax_smooth_sensitivity
from libs.accounting.pate import gnss_rdp
from libs.accounting.pate import lnmax_log_q
from libs.accounting.pate import lnmax_pure_epsilon
from libs.accounting.pate import lnmax_rdp
from libs.accounting.pate import log_pr_answered
from libs.accounting.pate import noisy_average_rdp
from libs.accounting.pate import PateLedger
from libs.accounting.pate import release_data_dependent_epsilon
from libs.accounting.pate import ReleasedEpsilon
from libs.accounting.pate import smooth_sensitivity
from libs.accounting.pate import threshold_local_sensitivity
from libs.accounting.pate import threshold_rdp
from libs.accounting.pate import total_local_sensitivity

__all__ = [
    "calibrate_event_noise_multiplier",
    "calibrate_noise_multiplier",
    "DEFAULT_PATE_ORDERS",
    "DEFAULT_PLD_DISCRETIZATION",
    "DEFAULT_RDP_ORDERS",
    "dpsgd_epsilon",
    "epsilon_of_event",
    "event_from_dict",
    "event_to_dict",
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
    "make_accountant",
    "NeighboringRelation",
    "noisy_average_rdp",
    "PateLedger",
    "poisson_gaussian_event",
    "PrivacyBudgetExceeded",
    "PrivacyLedger",
    "release_data_dependent_epsilon",
    "ReleasedEpsilon",
    "smooth_sensitivity",
    "threshold_local_sensitivity",
    "threshold_rdp",
    "total_local_sensitivity",
]
