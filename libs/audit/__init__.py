"""Privacy attacks and audits. So far: the empirical DP-SGD audit (`dpsgd`) and its statistics
(`stats`: Clopper-Pearson bounds, epsilon lower bounds from a membership test's error rates), and
model inversion (`inversion`: reconstruct an input from a model's output under a total-variation
prior; mel-cepstral distortion and speaker-identification metrics of the reconstruction).

Example:
  >>> from libs.audit import dpsgd as dpsgd_audit, stats
  >>> row = dpsgd_audit.audit(dpsgd_audit.CanarySetup(noise_multiplier=2.0), "dpsgd", 2000, rand=DpRandomness())
  >>> row["empirical_epsilon_lower"] <= row["claimed_epsilon"]
"""

from libs.audit import inversion
from libs.audit import stats
from libs.audit.stats import AuditResult, audit_epsilon, clopper_pearson, clopper_pearson_upper
from libs.audit.stats import epsilon_from_rates, epsilon_lower_bound

__all__ = ["AuditResult", "audit_epsilon", "clopper_pearson", "clopper_pearson_upper", "epsilon_from_rates",
           "epsilon_lower_bound", "inversion", "stats"]
