"""Privacy attacks and audits:
  * `dpsgd`: the empirical DP-SGD audit, and `stats` (Clopper-Pearson bounds, epsilon lower
    bounds from a membership test's error rates);
  * `membership`: loss-threshold and LiRA membership inference, ROC metrics, the TPR bounds DP implies;
  * `canaries`: canary exposure (Carlini et al. 2019) and white-box extraction from classifiers
    (Parikh et al. 2022);
  * `inversion`: reconstruct an input from a model's output under a total-variation prior;
    mel-cepstral distortion and speaker-identification metrics of the reconstruction.

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
