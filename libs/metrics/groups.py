"""Per-group metrics, the worst-group gap and cluster-bootstrap confidence intervals.

`GroupMetrics` follows fairlearn's `MetricFrame` conventions (`overall`, `by_group`, `group_min()`,
`group_max()`, `difference(method)`, `ratio(method)`) for metrics that are a ratio of sums: corpus WER
(total edit errors / total reference words, per group) or a per-example mean such as accuracy (the
denominator is then one per example). It adds the worst-group gap (`gap`) and a vectorised bootstrap
(`bootstrap`) that resamples whole clusters, e.g. all utterances of one speaker together.

Why not `fairlearn.metrics.MetricFrame` itself: its bootstrap resamples rows, so utterances of one
speaker are drawn independently and intervals come out too narrow on clustered speech data; it takes a
legacy `RandomState` seed rather than a `np.random.Generator`; and it builds one MetricFrame per resample
in a Python loop over pandas, far from thousands of resamples per second. A ratio of sums has per-group
sufficient statistics, so every resample here is one matrix product. The point estimates match
MetricFrame's (tests/metrics/test_groups.py checks them against it); metrics that are not a ratio of
sums (AUC, F1) are not supported here: use MetricFrame for those.

Example:
  >>> errors, words = [1, 0, 3, 2], [10, 10, 10, 10]
  >>> gm = GroupMetrics(errors, words, groups=["a", "a", "b", "b"], higher_is_better=False, name="wer")
  >>> gm.by_group
  {'a': 0.05, 'b': 0.25}
  >>> round(gm.gap().relative, 6)  # b's WER is 5x a's: 400% worse than the rest.
  4.0
"""

from __future__ import annotations

import dataclasses
from typing import Any, Hashable, Literal, Sequence

import numpy as np

Method = Literal["between_groups", "to_overall"]
Reference = Literal["rest", "overall"]

# Resamples are drawn in chunks of at most this many cluster draws, which bounds memory (the
# chunk's counts matrix is float64) without giving up vectorisation.
_MAX_DRAWS_PER_CHUNK = 1 << 22


@dataclasses.dataclass(frozen=True)
class Gap:
  """How much worse the worst group (or a named group) is than a reference population.

  Attributes:
    worst_group: the group compared: the one with the worst metric (highest if lower is better, lowest
      otherwise; ties go to the first group in `GroupMetrics.groups` order), or the group named by
      `GroupMetrics.gap(group=...)` (e.g. a bottom cohort chosen on other data), which need not be the
      worst: its gap is then negative when it is better than the reference.
    worst: that group's metric.
    reference: "rest" (all other groups pooled: their summed numerators over their summed denominators)
      or "overall" (all groups pooled, the worst included).
    reference_value: the metric of that reference population.
    absolute: how much worse, in the metric's units, positive when the group is worse:
      `worst - reference_value` if lower is better, `reference_value - worst` otherwise.
    relative: `absolute / |reference_value|` (e.g. 0.5: the group's WER is 50% above the rest's);
      `inf` (`-inf`) when the reference value is 0 and `absolute > 0` (`< 0`), 0 when both are 0.
    example_share: the group's share of the examples (e.g. utterances).
    cluster_share: its share of the clusters (e.g. speakers) that have an example in it.
    denominator_share: its share of the summed denominators (e.g. reference words).
  """
  worst_group: Hashable
  worst: float
  reference: str
  reference_value: float
  absolute: float
  relative: float
  example_share: float
  cluster_share: float
  denominator_share: float


@dataclasses.dataclass(frozen=True)
class Interval:
  """A percentile bootstrap interval around a point estimate."""
  estimate: float
  low: float
  high: float


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
  """Percentile intervals from a cluster bootstrap, and the resampled statistics they come from.

  Attributes:
    overall: the overall metric.
    by_group: each group's metric, in `GroupMetrics.groups` order.
    gap_absolute: the absolute gap of `gap_group` to `reference`.
    gap_relative: its relative gap.
    gap_group: the group whose gap is resampled: the group named by `bootstrap(group=...)`, or else the
      observed worst group. It is fixed: re-picking the worst group in each resample would bootstrap a
      maximum, which is biased upwards when groups are close and then covers poorly.
    reference: "rest" or "overall", as in `Gap`.
    confidence: e.g. 0.95 for the 2.5% and 97.5% percentiles.
    num_resamples: the number of resamples.
    cluster_unit: what was resampled, e.g. "speaker" or "example".
    stratified: whether clusters were resampled within each group.
    samples: resampled statistics: "overall" (B,), "by_group" (B, G), "gap_absolute" (B,),
      "gap_relative" (B,).
  """
  overall: Interval
  by_group: dict[Hashable, Interval]
  gap_absolute: Interval
  gap_relative: Interval
  gap_group: Hashable
  reference: str
  confidence: float
  num_resamples: int
  cluster_unit: str
  stratified: bool
  samples: dict[str, np.ndarray] = dataclasses.field(repr=False)


def _as_1d(name: str, values: Any, dtype=None) -> np.ndarray:
  arr = np.asarray(values, dtype=dtype)
  if arr.ndim != 1:
    raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
  return arr


def _check_finite(name: str, arr: np.ndarray):
  bad = np.flatnonzero(~np.isfinite(arr))
  if bad.size:
    raise ValueError(f"{name}[{bad[0]}] is {arr[bad[0]]}; {name} must be finite ({bad.size} entries are not)")


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  """`num / den`, with x/0 = inf for x > 0 (-inf for x < 0) and 0/0 = 0, without warnings."""
  num, den = np.broadcast_arrays(np.asarray(num, float), np.asarray(den, float))
  out = np.zeros(num.shape)
  nz = den != 0
  np.divide(num, den, out=out, where=nz)
  out[~nz & (num > 0)] = np.inf
  out[~nz & (num < 0)] = -np.inf
  return out


def _labels(name: str, values: Any, n: int) -> tuple[list[Hashable], np.ndarray]:
  """Sorted unique labels (as Python objects) and each example's label index."""
  arr = _as_1d(name, values)
  if arr.shape[0] != n:
    raise ValueError(f"{name} has {arr.shape[0]} entries but there are {n} examples (numerators)")
  try:
    uniq, inverse = np.unique(arr, return_inverse=True)
  except TypeError as e:  # Mixed, unorderable label types.
    raise ValueError(f"{name} labels must be mutually comparable (e.g. all str or all int): {e}") from e
  return [u.item() if hasattr(u, "item") else u for u in uniq], inverse.reshape(-1)


class GroupMetrics:
  """A ratio-of-sums metric overall and per group, with fairlearn `MetricFrame`'s API shape.

  For each group g the metric is `sum(numerators[g]) / sum(denominators[g])`: corpus WER with numerators
  = edit errors and denominators = reference words of each utterance (not the mean of per-utterance
  WERs, which over-weights short utterances); a per-example mean (accuracy, a per-example loss) with
  `denominators=None`. `overall` pools all examples the same way.

  Example:
    >>> gm = GroupMetrics([1, 1, 0, 1], groups=["x", "x", "y", "y"], higher_is_better=True,
    ...                   name="accuracy")
    >>> gm.overall, gm.by_group, gm.difference(), gm.ratio()
    (0.75, {'x': 1.0, 'y': 0.5}, 0.5, 0.5)

  Args:
    numerators: per-example numerators (e.g. edit errors), or per-example values if `denominators` is
      None.
    denominators: per-example denominators (e.g. reference words), >= 0; None for a per-example mean.
    groups: each example's group label (str or int).
    clusters: each example's cluster for the bootstrap (e.g. speaker id): a cluster's examples are
      resampled together. None: each example is its own cluster.
    higher_is_better: whether a higher metric is better (accuracy) or worse (WER); decides the worst
      group.
    name: the metric's name, for messages and results.
    cluster_unit: what a cluster is, for results (e.g. "speaker").
    levels: the groups expected, in the order wanted; a level without examples, or an example whose
      group is not listed, is an error. None: the sorted labels found in `groups`.

  Raises:
    ValueError: on length mismatches, no examples, non-finite values, negative denominators, a level
      without examples, or a group whose denominators sum to zero (the message names the group).
  """

  def __init__(self, numerators: Sequence[float], denominators: Sequence[float] | None = None, *,
               groups: Sequence[Hashable], clusters: Sequence[Hashable] | None = None,
               higher_is_better: bool, name: str = "metric", cluster_unit: str | None = None,
               levels: Sequence[Hashable] | None = None):
    num = _as_1d("numerators", numerators, float)
    n = num.shape[0]
    if n == 0:
      raise ValueError(f"{name}: no examples (numerators is empty)")
    _check_finite("numerators", num)
    if denominators is None:
      den = np.ones(n)
    else:
      den = _as_1d("denominators", denominators, float)
      if den.shape[0] != n:
        raise ValueError(f"denominators has {den.shape[0]} entries but numerators has {n}")
      _check_finite("denominators", den)
      neg = np.flatnonzero(den < 0)
      if neg.size:
        raise ValueError(f"denominators[{neg[0]}] is {den[neg[0]]}; denominators must be >= 0")

    found, group_idx = _labels("groups", groups, n)
    if levels is not None:
      levels = list(levels)
      if len(set(levels)) != len(levels):
        raise ValueError(f"levels has duplicates: {levels}")
      unknown = [g for g in found if g not in levels]
      if unknown:
        raise ValueError(f"groups has labels not in levels: {unknown[:5]}")
      pos = {g: i for i, g in enumerate(levels)}
      group_idx = np.array([pos[g] for g in found], dtype=np.int64)[group_idx]
      found = levels
    num_groups = len(found)
    counts = np.bincount(group_idx, minlength=num_groups)
    for g, c in zip(found, counts):
      if c == 0:
        raise ValueError(f"{name}: group {g!r} has no examples")

    if clusters is None:
      cluster_idx = np.arange(n)
      cluster_unit = cluster_unit or "example"
    else:
      _, cluster_idx = _labels("clusters", clusters, n)
      cluster_unit = cluster_unit or "cluster"
    num_clusters = int(cluster_idx.max()) + 1

    self.name = name
    self.higher_is_better = bool(higher_is_better)
    self.cluster_unit = cluster_unit
    self.groups: list[Hashable] = list(found)
    # Sufficient statistics per (cluster, group): every resample is a weighted sum of these rows.
    flat = cluster_idx * num_groups + group_idx
    size = num_clusters * num_groups
    self._cluster_num = np.bincount(flat, num, size).reshape(num_clusters, num_groups)
    self._cluster_den = np.bincount(flat, den, size).reshape(num_clusters, num_groups)
    self._cluster_count = np.bincount(flat, None, size).reshape(num_clusters, num_groups)
    self._group_num = self._cluster_num.sum(0)
    self._group_den = self._cluster_den.sum(0)
    for g, d in zip(self.groups, self._group_den):
      if d <= 0:
        raise ValueError(f"{name}: the denominators of group {g!r} sum to zero, so its metric is undefined")
    self._by_group = self._group_num / self._group_den
    self._overall = float(self._group_num.sum() / self._group_den.sum())

  # MetricFrame's API ----------------------------------------------------------------------------------

  @property
  def overall(self) -> float:
    """The metric pooled over all examples."""
    return self._overall

  @property
  def by_group(self) -> dict[Hashable, float]:
    """Each group's metric, in `groups` order."""
    return {g: float(v) for g, v in zip(self.groups, self._by_group)}

  def group_min(self) -> float:
    return float(self._by_group.min())

  def group_max(self) -> float:
    return float(self._by_group.max())

  def difference(self, method: Method = "between_groups") -> float:
    """`group_max() - group_min()`, or the largest `|group - overall|` ("to_overall"), as in fairlearn."""
    if method == "between_groups":
      return self.group_max() - self.group_min()
    if method == "to_overall":
      return float(np.abs(self._by_group - self._overall).max())
    raise ValueError(f"method must be 'between_groups' or 'to_overall', got {method!r}")

  def ratio(self, method: Method = "between_groups") -> float:
    """`group_min() / group_max()`, or the smallest of min(g/o, o/g) ("to_overall"), as in fairlearn.

    Defined for non-negative metrics; 0/0 counts as 1 (no disparity).
    """
    if min(self.group_min(), self._overall) < 0:
      raise ValueError(f"{self.name}: ratio() needs non-negative metrics")
    if method == "between_groups":
      lo, hi = np.array([self.group_min()]), np.array([self.group_max()])
    elif method == "to_overall":
      lo = np.minimum(self._by_group, self._overall)
      hi = np.maximum(self._by_group, self._overall)
    else:
      raise ValueError(f"method must be 'between_groups' or 'to_overall', got {method!r}")
    return float(np.where(hi == 0, 1.0, _safe_divide(lo, hi)).min())

  # Worst group ----------------------------------------------------------------------------------------

  @property
  def worst_group(self) -> Hashable:
    """The group with the worst metric (ties: the first in `groups` order)."""
    return self.groups[self._worst_index()]

  def _worst_index(self) -> int:
    return int(np.argmax(self._by_group) if not self.higher_is_better else np.argmin(self._by_group))

  def _gap_arrays(self, num: np.ndarray, den: np.ndarray, w: int, reference: Reference):
    """Absolute and relative gap of group `w` from per-group sums `num`, `den` (..., G)."""
    worst = num[..., w] / den[..., w]
    if reference == "rest":
      ref = _safe_divide(num.sum(-1) - num[..., w], den.sum(-1) - den[..., w])
    elif reference == "overall":
      ref = num.sum(-1) / den.sum(-1)
    else:
      raise ValueError(f"reference must be 'rest' or 'overall', got {reference!r}")
    absolute = ref - worst if self.higher_is_better else worst - ref
    return worst, ref, absolute, _safe_divide(absolute, np.abs(ref))

  def _group_index(self, group: Hashable | None) -> int:
    """The index of `group` in `groups`, or of the worst group if `group` is None."""
    if group is None:
      return self._worst_index()
    for i, g in enumerate(self.groups):
      if g == group:
        return i
    raise ValueError(f"{self.name}: group {group!r} is not one of the groups {self.groups}")

  def gap(self, reference: Reference = "rest", group: Hashable | None = None) -> Gap:
    """How much worse the worst group (or `group`) is than the rest of the examples (or all of them).

    With `reference="rest"`, the bottom group is compared with all other groups pooled, the
    bottom-cohort-vs-rest comparison of fairness studies in ASR: for WER, `absolute = WER_worst -
    WER_rest` and `relative = absolute / WER_rest`, where `WER_rest` is the corpus WER of every utterance
    outside the worst group. `reference="overall"` compares with the overall metric instead (which
    includes the worst group, so the gap is smaller). See `Gap` for every field.

    With `group` given, that group is compared instead of the worst one, e.g. a bottom cohort found on
    training speakers and evaluated on held-out ones; its gap is reported as it is, negative if it
    turns out better than the reference (`Gap.worst_group` then holds `group`).

    Example:
      >>> gm = GroupMetrics([2, 1, 0, 0], [10, 10, 5, 5], groups=["a", "b", "c", "c"],
      ...                   higher_is_better=False)
      >>> g = gm.gap()
      >>> g.worst_group, g.worst, g.reference_value, round(g.relative, 6), g.example_share
      ('a', 0.2, 0.05, 3.0, 0.25)
      >>> round(gm.gap(group="c").relative, 6)  # c's WER is 0, the rest's 0.15: 100% better.
      -1.0

    Args:
      reference: "rest" or "overall" (see above).
      group: the group to compare; None (the default) for the worst group.

    Raises:
      ValueError: with fewer than two groups (with "rest"), or if `group` is not one of `groups`.
    """
    if reference == "rest" and len(self.groups) < 2:
      raise ValueError(f"{self.name}: the gap to the rest needs at least two groups, got {self.groups}")
    w = self._group_index(group)
    worst, ref, absolute, relative = self._gap_arrays(self._group_num, self._group_den, w, reference)
    clusters_in = self._cluster_count > 0
    return Gap(worst_group=self.groups[w], worst=float(worst), reference=reference,
               reference_value=float(ref), absolute=float(absolute), relative=float(relative),
               example_share=float(self._cluster_count[:, w].sum() / self._cluster_count.sum()),
               cluster_share=float(clusters_in[:, w].sum() / clusters_in.any(1).sum()),
               denominator_share=float(self._group_den[w] / self._group_den.sum()))

  def summary(self, reference: Reference = "rest") -> dict[str, Any]:
    """A JSON-ready dict (group labels as str) for `results.json`."""
    out: dict[str, Any] = {"metric": self.name, "overall": self.overall,
                           "by_group": {str(g): v for g, v in self.by_group.items()},
                           "difference": self.difference(), "ratio": self.ratio()}
    if len(self.groups) > 1 or reference == "overall":
      gap = dataclasses.asdict(self.gap(reference))
      gap["worst_group"] = str(gap["worst_group"])
      out["gap"] = gap
    return out


def bootstrap(metrics: GroupMetrics, *, rng: np.random.Generator, num_resamples: int = 1000,
              confidence: float = 0.95, stratify: bool = True, reference: Reference = "rest",
              group: Hashable | None = None) -> BootstrapResult:
  """Percentile bootstrap intervals for the overall metric, each group's metric and the worst-group gap.

  Each resample draws clusters (e.g. speakers) with replacement and keeps all their examples, so the
  intervals account for examples of one cluster being correlated; resampling examples instead
  (`clusters=None`) treats them as independent and gives too narrow intervals on speech data.
  With `stratify=True` (the default) each group's clusters are resampled within the group, so every
  group keeps its number of clusters and never vanishes from a resample; this needs each cluster to sit
  in one group (true for speakers grouped by accent or gender). With `stratify=False` clusters are drawn
  from all groups at once (for clusters that span groups); a resample in which a group gets no
  denominator is then an error, since its metric is undefined.

  Resamples are vectorised over per-cluster sums (gathers, or a count-matrix product when unstratified):
  1000 resamples of 10k utterances by 500 speakers take well under 0.1 s.

  Example:
    >>> gm = GroupMetrics([1, 0, 2, 3, 0, 1], [9, 8, 7, 9, 8, 9], groups=list("aaabbb"),
    ...                   clusters=["s1", "s1", "s2", "s3", "s3", "s4"], higher_is_better=False)
    >>> ci = bootstrap(gm, rng=np.random.default_rng(0), num_resamples=200)
    >>> ci.overall.low <= gm.overall <= ci.overall.high
    True

  Args:
    metrics: the `GroupMetrics` to resample (its `clusters` define the resampling unit).
    rng: the NumPy Generator to draw from (seeded by the caller for reproducibility).
    num_resamples: the number of bootstrap resamples.
    confidence: the interval's coverage, in (0, 1).
    stratify: resample clusters within each group (see above).
    reference: the gap's reference population, "rest" or "overall" (see `GroupMetrics.gap`).
    group: the group whose gap is resampled (see `GroupMetrics.gap`); None for the observed worst group.

  Returns:
    A `BootstrapResult`.

  Raises:
    ValueError: on bad arguments (including a `group` that is not one of the groups), a cluster in two
      groups with `stratify=True`, or a resample in which a group's denominators sum to zero.
  """
  # Long mostly by its docstring and argument checks; the resampling itself is a few vectorised lines.
  # pylint: disable=protected-access  # This module's own class: its per-cluster sums.
  if not isinstance(rng, np.random.Generator):
    raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng)}")
  if int(num_resamples) != num_resamples or num_resamples < 1:
    raise ValueError(f"num_resamples must be a positive integer, got {num_resamples}")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  gap_point = metrics.gap(reference, group=group)
  w = metrics._group_index(group)
  num_resamples = int(num_resamples)

  present = metrics._cluster_count > 0
  num_clusters, num_groups = present.shape
  if stratify:
    multi = np.flatnonzero(present.sum(1) > 1)
    if multi.size:
      raise ValueError(
          f"{multi.size} {metrics.cluster_unit}(s) have examples in more than one group (e.g. the one at "
          f"sorted position {multi[0]}); stratify=True needs each cluster in one group: use "
          "stratify=False or clusters nested in groups")
  cnum, cden = metrics._cluster_num, metrics._cluster_den
  # Each group draws from its own clusters, as many as it has: their (numerator, denominator) sums.
  blocks = [(cnum[present[:, g], g], cden[present[:, g], g]) for g in range(num_groups)]
  group_num = np.empty((num_resamples, num_groups))
  group_den = np.empty((num_resamples, num_groups))
  chunk = max(1, _MAX_DRAWS_PER_CHUNK // num_clusters)
  for start in range(0, num_resamples, chunk):
    rows = slice(start, min(start + chunk, num_resamples))
    b = rows.stop - rows.start
    if stratify:
      # A cluster feeds one group only: a group's resampled sum is a sum of gathered cluster totals.
      for g, (bnum, bden) in enumerate(blocks):
        draws = rng.integers(0, bnum.size, size=(b, bnum.size), dtype=np.int32)
        group_num[rows, g] = np.take(bnum, draws).sum(1)
        group_den[rows, g] = np.take(bden, draws).sum(1)
    else:
      draws = rng.integers(0, num_clusters, size=(b, num_clusters))
      # How often each cluster is drawn in each resample (one bincount over row-offset ids), then
      # one product with the per-(cluster, group) sums.
      flat = (draws + (np.arange(b) * num_clusters)[:, None]).ravel()
      weights = np.bincount(flat, minlength=b * num_clusters).reshape(b, num_clusters).astype(float)
      group_num[rows] = weights @ cnum
      group_den[rows] = weights @ cden

  empty = (group_den <= 0).sum(0)
  for g, e in zip(metrics.groups, empty):
    if e:
      raise ValueError(
          f"{metrics.name}: group {g!r} has zero denominator in {e} of {num_resamples} resamples, so its "
          "metric is undefined there; use stratify=True (clusters nested in groups)")

  samples = {"overall": group_num.sum(1) / group_den.sum(1), "by_group": group_num / group_den}
  _, _, samples["gap_absolute"], samples["gap_relative"] = metrics._gap_arrays(group_num, group_den, w,
                                                                               reference)

  alpha = (1 - confidence) / 2
  def interval(estimate: float, s: np.ndarray) -> Interval:
    # Order statistics, not interpolation: a few inf relative gaps (rest WER 0) then give inf, not NaN.
    lo = float(np.quantile(s, alpha, method="lower"))
    hi = float(np.quantile(s, 1 - alpha, method="higher"))
    if np.isnan(lo) or np.isnan(hi):
      raise FloatingPointError(f"{metrics.name}: a bootstrap interval is NaN")
    return Interval(float(estimate), lo, hi)

  by_group = {g: interval(v, samples["by_group"][:, i]) for i, (g, v) in enumerate(metrics.by_group.items())}
  return BootstrapResult(
      overall=interval(metrics.overall, samples["overall"]), by_group=by_group,
      gap_absolute=interval(gap_point.absolute, samples["gap_absolute"]),
      gap_relative=interval(gap_point.relative, samples["gap_relative"]),
      gap_group=gap_point.worst_group, reference=reference, confidence=float(confidence),
      num_resamples=num_resamples, cluster_unit=metrics.cluster_unit, stratified=bool(stratify),
      samples=samples)
