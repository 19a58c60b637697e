"""Group metrics: per-group values, the worst-group gap and cluster-bootstrap intervals.

The repository's one home for group metrics (fairlearn `MetricFrame` conventions); see `groups`.
"""

from libs.metrics.groups import BootstrapResult
from libs.metrics.groups import Gap
from libs.metrics.groups import GroupMetrics
from libs.metrics.groups import Interval
from libs.metrics.groups import bootstrap

__all__ = ["BootstrapResult", "Gap", "GroupMetrics", "Interval", "bootstrap"]
