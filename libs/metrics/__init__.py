"""Group metrics, cohort discovery and speaker-verification metrics (host-side NumPy).

- `groups`: per-group values, the worst-group (or a named group's) gap and cluster-bootstrap intervals
  (fairlearn `MetricFrame` conventions).
- `cohorts`: cohort discovery on per-speaker ASR errors (geographic tree, geo-demographic partition,
  k-means on speaker embeddings) and a cohort's held-out WER gap with a speaker-bootstrap interval.
- `verification`: speaker-verification trials, EER, DET curves and per-group EER.

scikit-learn, scipy and matplotlib are imported only by the functions that use them.
"""

from libs.metrics.cohorts import CohortGap
from libs.metrics.cohorts import CohortStats
from libs.metrics.cohorts import CohortTable
from libs.metrics.cohorts import GeoLeaf
from libs.metrics.cohorts import GeoTree
from libs.metrics.cohorts import KMeansCohorts
from libs.metrics.cohorts import Partition
from libs.metrics.cohorts import Split
from libs.metrics.cohorts import best_split
from libs.metrics.cohorts import cohort_gap
from libs.metrics.cohorts import cohort_table
from libs.metrics.cohorts import fit_geo_tree
from libs.metrics.cohorts import geo_demographic_partition
from libs.metrics.cohorts import kmeans_cohorts
from libs.metrics.cohorts import speaker_totals
from libs.metrics.groups import BootstrapResult
from libs.metrics.groups import Gap
from libs.metrics.groups import GroupMetrics
from libs.metrics.groups import Interval
from libs.metrics.groups import bootstrap
from libs.metrics.verification import EerResult
from libs.metrics.verification import EerSummary
from libs.metrics.verification import cosine_scores
from libs.metrics.verification import det_curve
from libs.metrics.verification import eer
from libs.metrics.verification import eer_summary
from libs.metrics.verification import group_eer
from libs.metrics.verification import make_trials
from libs.metrics.verification import plot_det

__all__ = [
    "BootstrapResult", "CohortGap", "CohortStats", "CohortTable", "EerResult", "EerSummary", "Gap",
    "GeoLeaf", "GeoTree", "GroupMetrics", "Interval", "KMeansCohorts", "Partition", "Split", "best_split",
    "bootstrap", "cohort_gap", "cohort_table", "cosine_scores", "det_curve", "eer", "eer_summary",
    "fit_geo_tree", "geo_demographic_partition", "group_eer", "kmeans_cohorts", "make_trials", "plot_det",
    "speaker_totals",
]
