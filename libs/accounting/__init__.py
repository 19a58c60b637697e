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
from libs.accounting import pate as _pate
# The PATE analysis: every public name of `pate` (its __all__), PATE's Renyi orders
# under a name that cannot be mistaken for DP-SGD's.
from libs.accounting.pate import *  # pylint: disable=wildcard-import,unused-wildcard-import
from libs.accounting.pate import DEFAULT_ORDERS as DEFAULT_PATE_ORDERS

del DEFAULT_ORDERS  # pylint: disable=undefined-variable

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
    "make_accountant",
    "NeighboringRelation",
    "poisson_gaussian_event",
    "PrivacyBudgetExceeded",
    "PrivacyLedger",
] + [name for name in _pate.__all__ if name != "DEFAULT_ORDERS"]
