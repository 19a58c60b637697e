"""Cohort discovery on per-speaker ASR errors, and the held-out gap of a discovered cohort.

Fairness studies of ASR often have no protected attribute to group speakers by, so they discover
cohorts of speakers on whom the recognizer does worst, and then measure the gap on held-out speakers:
- Trinh et al. 2022 ("Towards measuring fairness in speech recognition: fair-speech ..."), geographic
  cohorts: a binary tree on speakers' home latitude/longitude whose splits separate high- and low-WER
  areas (`fit_geo_tree`), and geo-demographic cohorts: regions split by a census attribute
  (`geo_demographic_partition`).
- Dheram et al. 2022 ("Toward fairness in speech recognition: discovery and mitigation of performance
  disparities"), automatic cohorts: k-means on speaker embeddings (`kmeans_cohorts`).
- `cohort_gap`: the relative WER gap of the bottom cohort to the rest on held-out speakers, with a
  speaker-cluster bootstrap interval (built on `libs.metrics.groups`); `cohort_table`: per-cohort WERs
  and their mean, max and variance (the summary of the EWC study).

Everything here runs in NumPy (and scikit-learn for k-means) on the host. WER is always corpus WER,
`sum(errors) / sum(words)` over the utterances (or speakers) of a set. Discovery functions take
per-speaker arrays (one entry per speaker; `speaker_totals` makes them from per-utterance arrays);
`cohort_gap` and `cohort_table` take per-utterance arrays.

Example:
  >>> spk, err, wrd, lat, lon = speaker_totals(speaker_ids, errors, words, latitude, longitude)
  >>> tree = fit_geo_tree(lat, lon, err, wrd, min_speakers=20, max_depth=3)
  >>> worst = tree.leaves[0]; print(worst.describe(), worst.wer)
  >>> test_leaf = tree.assign(test_lat_per_utt, test_lon_per_utt)
  >>> gap = cohort_gap(test_errors, test_words, test_leaf == worst.id, test_speakers,
  ...                  rng=np.random.default_rng(0))
  >>> gap.to_dict()["wer_gap"], gap.wer_gap_ci
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from libs.metrics.groups import GroupMetrics
from libs.metrics.groups import bootstrap

_AXES = ("lat", "lon")


# Shared helpers -----------------------------------------------------------------------------------------

def _as_1d(name: str, values: Any, dtype=None) -> np.ndarray:
  arr = np.asarray(values, dtype=dtype)
  if arr.ndim != 1:
    raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
  return arr


def _check_len(name: str, arr: np.ndarray, n: int, what: str):
  if arr.shape[0] != n:
    raise ValueError(f"{name} has {arr.shape[0]} entries but there are {n} {what}")


def _finite(name: str, values: Any, n: int | None = None, what: str = "speakers") -> np.ndarray:
  arr = _as_1d(name, values, float)
  if n is not None:
    _check_len(name, arr, n, what)
  bad = np.flatnonzero(~np.isfinite(arr))
  if bad.size:
    raise ValueError(f"{name}[{bad[0]}] is {arr[bad[0]]}; {name} must be finite")
  return arr


def _counts(errors: Any, words: Any, what: str = "speakers") -> tuple[np.ndarray, np.ndarray]:
  """Validated float64 `errors` and `words` (same length, finite, >= 0, words summing above 0)."""
  err = _finite("errors", errors)
  wrd = _finite("words", words, err.shape[0], what)
  if err.shape[0] == 0:
    raise ValueError(f"errors is empty: no {what}")
  for name, arr in (("errors", err), ("words", wrd)):
    neg = np.flatnonzero(arr < 0)
    if neg.size:
      raise ValueError(f"{name}[{neg[0]}] is {arr[neg[0]]}; {name} must be >= 0")
  if wrd.sum() <= 0:
    raise ValueError("words sum to zero, so the WER is undefined")
  return err, wrd


def _wer(errors: float, words: float) -> float:
  """Corpus WER; NaN for a set without reference words (its WER is undefined)."""
  return float(errors / words) if words > 0 else float("nan")


def _relative_gap(high: float, low: float) -> float:
  """`(high - low) / low`, with x/0 = inf for x > 0 and 0/0 = 0."""
  if low > 0:
    return (high - low) / low
  return float("inf") if high > low else 0.0


def _midpoint(lo: float, hi: float) -> float:
  """A threshold t with lo <= t < hi, halfway where floats allow (adjacent floats: lo)."""
  t = lo + (hi - lo) / 2
  return float(t if lo <= t < hi else lo)


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
  if int(value) != value or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
  return int(value)


def speaker_totals(speaker_ids: Sequence[Hashable], errors: Sequence[float], words: Sequence[float],
                   *attrs: Sequence[Any]) -> tuple[np.ndarray, ...]:
  """Per-speaker sums of per-utterance errors and words, and each attribute's first value per speaker.

  Example:
    >>> spk, err, wrd, lat = speaker_totals(["b", "a", "b"], [1, 2, 3], [10, 10, 10], [5.0, 7.0, 5.0])
    >>> spk.tolist(), err.tolist(), wrd.tolist(), lat.tolist()
    (['a', 'b'], [2.0, 4.0], [10.0, 20.0], [7.0, 5.0])

  Args:
    speaker_ids: each utterance's speaker.
    errors: each utterance's edit errors.
    words: each utterance's reference words.
    *attrs: per-utterance attribute arrays (e.g. latitude, longitude, region, an embedding matrix with
      one row per utterance); a speaker's value is that of its first utterance (in input order).

  Returns:
    `(speakers, errors, words, *attrs)`, one entry per speaker, sorted by speaker id.

  Raises:
    ValueError: on length mismatches, no utterances, or non-finite or negative counts.
  """
  spk = _as_1d("speaker_ids", speaker_ids)
  n = spk.shape[0]
  if n == 0:
    raise ValueError("speaker_ids is empty: no utterances")
  err = _finite("errors", errors, n, "utterances")
  wrd = _finite("words", words, n, "utterances")
  for name, arr in (("errors", err), ("words", wrd)):
    if (arr < 0).any():
      raise ValueError(f"{name} must be >= 0")
  speakers, first, inverse = np.unique(spk, return_index=True, return_inverse=True)
  inverse = inverse.reshape(-1)
  out = [speakers, np.bincount(inverse, err, speakers.size), np.bincount(inverse, wrd, speakers.size)]
  for k, a in enumerate(attrs):
    a = np.asarray(a)
    if a.ndim == 0 or a.shape[0] != n:
      raise ValueError(f"attrs[{k}] has shape {a.shape} but there are {n} utterances")
    out.append(a[first])
  return tuple(out)


# Geographic clustering tree ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Split:
  """A binary split of speakers on one coordinate: `left` is `coordinate <= threshold`.

  Attributes:
    axis: "lat" or "lon".
    threshold: the midpoint between the two consecutive distinct values the split falls between.
    gap: `|wer_left - wer_right|`, the quantity the split maximizes.
    wer_left, wer_right: corpus WER of each side.
    num_left, num_right: speakers on each side.
  """
  axis: str
  threshold: float
  gap: float
  wer_left: float
  wer_right: float
  num_left: int
  num_right: int

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _check_geo(latitude: Any, longitude: Any, errors: Any, words: Any):
  err, wrd = _counts(errors, words)
  n = err.shape[0]
  return _finite("latitude", latitude, n), _finite("longitude", longitude, n), err, wrd


def _best_split(coords: tuple[np.ndarray, np.ndarray], err: np.ndarray, wrd: np.ndarray,
                min_speakers: int) -> Split | None:
  """`best_split` without argument checks (the tree calls it on every node)."""
  n = err.shape[0]
  best: Split | None = None
  for axis, values in zip(_AXES, coords):
    order = np.argsort(values, kind="stable")
    v, e, w = values[order], err[order], wrd[order]
    # Splitting after sorted position k - 1 puts the first k speakers on the left.
    k = np.arange(1, n)
    ok = (v[1:] > v[:-1]) & (k >= min_speakers) & (n - k >= min_speakers)
    ce, cw = np.cumsum(e)[:-1], np.cumsum(w)[:-1]
    re, rw = e.sum() - ce, w.sum() - cw
    ok &= (cw > 0) & (rw > 0)  # Both sides need reference words for their WER to exist.
    if not ok.any():
      continue
    k, ce, cw, re, rw = k[ok], ce[ok], cw[ok], re[ok], rw[ok]
    wl, wr = ce / cw, re / rw
    gaps = np.abs(wl - wr)
    i = int(np.argmax(gaps))  # Ties: the smallest threshold.
    if best is None or gaps[i] > best.gap:  # Ties across axes: latitude.
      best = Split(axis=axis, threshold=_midpoint(v[k[i] - 1], v[k[i]]), gap=float(gaps[i]), wer_left=float(wl[i]),
                   wer_right=float(wr[i]), num_left=int(k[i]), num_right=int(n - k[i]))
  return best


def best_split(latitude: Sequence[float], longitude: Sequence[float], errors: Sequence[float],
               words: Sequence[float], *, min_speakers: int) -> Split | None:
  """The split on latitude or longitude that maximizes the WER difference between its two sides.

  Candidate thresholds are the midpoints between consecutive distinct sorted values of each coordinate;
  a candidate is valid when each side has at least `min_speakers` speakers and some reference words.
  Ties go to latitude, then to the smaller threshold.

  Example:
    >>> s = best_split([0, 1, 2, 3], [0, 0, 0, 0], [0, 0, 5, 5], [10, 10, 10, 10], min_speakers=1)
    >>> s.axis, s.threshold, s.gap
    ('lat', 1.5, 0.5)

  Args:
    latitude, longitude: each speaker's home coordinates.
    errors, words: each speaker's total edit errors and reference words.
    min_speakers: the fewest speakers allowed on either side.

  Returns:
    The best `Split`, or None if no candidate is valid.
  """
  min_speakers = _positive_int("min_speakers", min_speakers)
  lat, lon, err, wrd = _check_geo(latitude, longitude, errors, words)
  return _best_split((lat, lon), err, wrd, min_speakers)


@dataclasses.dataclass(frozen=True)
class GeoLeaf:
  """A leaf (cohort) of a `GeoTree`.

  Attributes:
    id: the leaf's id, as returned by `GeoTree.assign` (leaves are numbered left to right, left being
      the `<=` side of each split).
    rules: the path's conditions, root first: `(axis, op, threshold)` with op "<=" or ">".
    box: the bounding box the rules define: lat_min < lat <= lat_max and lon_min < lon <= lon_max
      (infinite where unbounded).
    num_speakers: fitting speakers in the leaf.
    errors, words: their summed errors and reference words.
    wer: their corpus WER.
  """
  id: int
  rules: tuple[tuple[str, str, float], ...]
  box: dict[str, float]
  num_speakers: int
  errors: float
  words: float
  wer: float

  def describe(self) -> str:
    """The leaf's conditions, readable, e.g. "lat <= 45.2 and lon > -80.1" ("all" for the root)."""
    # The box, not the raw path: repeated splits on one axis fold into one bound per side.
    parts = []
    for axis in _AXES:
      lo, hi = self.box[f"{axis}_min"], self.box[f"{axis}_max"]
      if np.isfinite(lo):
        parts.append(f"{axis} > {lo:.6g}")
      if np.isfinite(hi):
        parts.append(f"{axis} <= {hi:.6g}")
    return " and ".join(parts) or "all"

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["rules"] = [list(r) for r in self.rules]
    out["box"] = {k: (v if np.isfinite(v) else None) for k, v in self.box.items()}  # JSON has no inf.
    out["description"] = self.describe()
    return out


@dataclasses.dataclass(frozen=True)
class GeoTree:
  """A fitted geographic clustering tree (see `fit_geo_tree`).

  Attributes:
    axis, threshold, left, right, leaf_id: the nodes as parallel arrays, root at 0 (sklearn's layout):
      an internal node sends `coordinate <= threshold` to `left`, others to `right`; a leaf has
      `axis == -1` and its id in `leaf_id` (-1 for internal nodes). axis 0 is latitude, 1 longitude.
    leaves: the leaves ranked by fitting WER, worst first (leaves[0] is the bottom cohort).
    wer: the corpus WER of all fitting speakers.
    num_speakers: the number of fitting speakers.
    min_speakers, max_depth, min_gap: the fitting parameters.
  """
  axis: np.ndarray
  threshold: np.ndarray
  left: np.ndarray
  right: np.ndarray
  leaf_id: np.ndarray
  leaves: tuple[GeoLeaf, ...]
  wer: float
  num_speakers: int
  min_speakers: int
  max_depth: int
  min_gap: float

  @property
  def num_leaves(self) -> int:
    return len(self.leaves)

  def leaf(self, leaf_id: int) -> GeoLeaf:
    """The leaf with id `leaf_id`."""
    for lf in self.leaves:
      if lf.id == leaf_id:
        return lf
    raise ValueError(f"leaf_id {leaf_id} is not a leaf id (0 to {self.num_leaves - 1})")

  def assign(self, latitude: Sequence[float], longitude: Sequence[float]) -> np.ndarray:
    """Each point's leaf id (any points: fitting speakers, new speakers, or per-utterance coordinates).

    Example:
      >>> tree.assign([40.7, 51.5], [-74.0, -0.1])
      array([2, 0])
    """
    lat = _finite("latitude", latitude)
    lon = _finite("longitude", longitude, lat.shape[0], "latitudes")
    coords = np.stack([lat, lon])
    node = np.zeros(lat.shape[0], dtype=np.int64)
    cols = np.arange(lat.shape[0])
    for _ in range(self.max_depth + 1):
      inner = self.axis[node] >= 0
      if not inner.any():
        break
      n_in = node[inner]
      go_left = coords[self.axis[n_in], cols[inner]] <= self.threshold[n_in]
      node[inner] = np.where(go_left, self.left[n_in], self.right[n_in])
    return self.leaf_id[node]

  def describe(self) -> str:
    """One line per leaf, worst first: id, rule, speakers and WER (as %)."""
    return "\n".join(f"leaf {lf.id}: {lf.describe()} ({lf.num_speakers} speakers, WER {100 * lf.wer:.2f}%)"
                     for lf in self.leaves)

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready summary (WERs as fractions)."""
    return {"wer": self.wer, "num_speakers": self.num_speakers, "num_leaves": self.num_leaves,
            "min_speakers": self.min_speakers, "max_depth": self.max_depth, "min_gap": self.min_gap,
            "leaves": [lf.to_dict() for lf in self.leaves]}


def fit_geo_tree(latitude: Sequence[float], longitude: Sequence[float], errors: Sequence[float],
                 words: Sequence[float], *, min_speakers: int, max_depth: int,
                 min_gap: float = 0.0) -> GeoTree:
  """Geographic cohorts: recursive binary splits of speakers' homes that separate high and low WER.

  Each node takes `best_split` of its speakers (latitude or longitude, at a midpoint between
  consecutive distinct values, maximizing the absolute difference between the two sides' corpus WERs,
  each side with at least `min_speakers` speakers). A node becomes a leaf at depth `max_depth`, when no
  split is valid, or when the best split's WER difference is below `min_gap` (a fraction, e.g. 0.01 for
  one WER point). Leaves are the cohorts; `GeoTree.leaves[0]` is the worst.

  Example:
    >>> tree = fit_geo_tree(lat, lon, err, wrd, min_speakers=20, max_depth=2)
    >>> print(tree.describe())
    leaf 1: lat <= 45.2 and lon > -80.1 (31 speakers, WER 14.20%)
    ...

  Args:
    latitude, longitude: each speaker's home coordinates (degrees).
    errors, words: each speaker's total edit errors and reference words.
    min_speakers: the fewest speakers a leaf may have.
    max_depth: the most splits from the root to a leaf (0: one leaf).
    min_gap: the smallest WER difference worth splitting for.

  Returns:
    A `GeoTree`.

  Raises:
    ValueError: on bad arguments, length mismatches, non-finite values, negative counts, or no words.
  """
  min_speakers = _positive_int("min_speakers", min_speakers)
  max_depth = _positive_int("max_depth", max_depth, minimum=0)
  if not np.isfinite(min_gap) or min_gap < 0:
    raise ValueError(f"min_gap must be finite and >= 0, got {min_gap}")
  lat, lon, err, wrd = _check_geo(latitude, longitude, errors, words)
  coords = np.stack([lat, lon])
  nodes: list[list[Any]] = []  # [axis, threshold, left, right, leaf_id]
  leaves: list[GeoLeaf] = []
  inf = float("inf")

  def grow(idx: np.ndarray, depth: int, rules: tuple, box: dict[str, float]) -> int:
    node = len(nodes)
    nodes.append([-1, np.nan, -1, -1, -1])
    split = None
    if depth < max_depth:
      split = _best_split((lat[idx], lon[idx]), err[idx], wrd[idx], min_speakers)
      if split is not None and split.gap < min_gap:
        split = None
    if split is None:
      e, w = float(err[idx].sum()), float(wrd[idx].sum())
      nodes[node][4] = len(leaves)
      leaves.append(GeoLeaf(id=len(leaves), rules=rules, box=box, num_speakers=int(idx.size), errors=e,
                            words=w, wer=_wer(e, w)))
      return node
    a = _AXES.index(split.axis)
    go_left = coords[a, idx] <= split.threshold
    box_l = {**box, f"{split.axis}_max": min(box[f"{split.axis}_max"], split.threshold)}
    box_r = {**box, f"{split.axis}_min": max(box[f"{split.axis}_min"], split.threshold)}
    left = grow(idx[go_left], depth + 1, rules + ((split.axis, "<=", split.threshold),), box_l)
    right = grow(idx[~go_left], depth + 1, rules + ((split.axis, ">", split.threshold),), box_r)
    nodes[node][:4] = [a, split.threshold, left, right]
    return node

  grow(np.arange(err.shape[0]), 0, (), {"lat_min": -inf, "lat_max": inf, "lon_min": -inf, "lon_max": inf})
  table = list(zip(*nodes))
  ranked = sorted(leaves, key=lambda lf: (-lf.wer, lf.id))
  return GeoTree(axis=np.array(table[0], np.int64), threshold=np.array(table[1], float),
                 left=np.array(table[2], np.int64), right=np.array(table[3], np.int64),
                 leaf_id=np.array(table[4], np.int64), leaves=tuple(ranked),
                 wer=float(err.sum() / wrd.sum()), num_speakers=int(err.shape[0]),
                 min_speakers=min_speakers, max_depth=max_depth, min_gap=float(min_gap))


# Geo-demographic partition -------------------------------------------------------------------------------

def _is_numeric(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


@dataclasses.dataclass(frozen=True)
class Partition:
  """A binary partition of regions by one attribute; the higher-WER side is the bottom cohort.

  Attributes:
    attribute: the region attribute the rule tests.
    kind: "categorical" or "numeric".
    value: the category (categorical) or the threshold (numeric).
    direction: which side is the bottom: "==" or "!=" (categorical: regions with / without `value`),
      ">" or "<=" (numeric: regions above / at or below the threshold).
    bottom_regions, rest_regions: the fitting regions on each side, sorted.
    wer_bottom, wer_rest: corpus WER of each side's fitting speakers.
    relative_gap: `(wer_bottom - wer_rest) / wer_rest` (inf if wer_rest is 0 and wer_bottom > 0).
    num_speakers_bottom, num_speakers_rest: fitting speakers on each side.
    num_candidates: how many valid candidate partitions were compared.
    table: the region table the rule reads (to place regions in `contains`).
  """
  attribute: str
  kind: str
  value: Any
  direction: str
  bottom_regions: tuple[Hashable, ...]
  rest_regions: tuple[Hashable, ...]
  wer_bottom: float
  wer_rest: float
  relative_gap: float
  num_speakers_bottom: int
  num_speakers_rest: int
  num_candidates: int
  table: Mapping[Hashable, Mapping[str, Any]] = dataclasses.field(repr=False)

  def describe(self) -> str:
    """The bottom cohort's rule, e.g. "majority_accent == 'en-GB-scotland'" or "female_share > 0.52"."""
    value = repr(self.value) if self.kind == "categorical" else f"{self.value:.6g}"
    return f"{self.attribute} {self.direction} {value}"

  def contains(self, regions: Sequence[Hashable]) -> np.ndarray:
    """Whether each region (e.g. each test speaker's or utterance's) is on the bottom side.

    A region need not be a fitting region: its side is read from its attributes in `table`.

    Example:
      >>> part.contains(["Glasgow", "Boston"])
      array([ True, False])

    Raises:
      ValueError: for a region that is not in the table, or whose entry lacks the attribute.
    """
    regions = _as_1d("regions", regions, object)
    cache: dict[Hashable, bool] = {}
    out = np.zeros(regions.shape[0], dtype=bool)
    for i, r in enumerate(regions):
      if r not in cache:
        if r not in self.table:
          raise ValueError(f"regions[{i}] = {r!r} is not in the region table, so its side is unknown")
        attrs = self.table[r]
        if self.attribute not in attrs:
          raise ValueError(f"region {r!r} has no attribute {self.attribute!r} in the region table")
        v = attrs[self.attribute]
        cache[r] = {"==": lambda: v == self.value, "!=": lambda: v != self.value,
                    ">": lambda: v > self.value, "<=": lambda: v <= self.value}[self.direction]()
      out[i] = cache[r]
    return out

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready summary (WERs as fractions; the table left out)."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "table"}
    out["bottom_regions"] = [str(r) for r in self.bottom_regions]
    out["rest_regions"] = [str(r) for r in self.rest_regions]
    out["value"] = self.value if _is_numeric(self.value) else str(self.value)
    out["relative_gap"] = self.relative_gap if np.isfinite(self.relative_gap) else None
    out["description"] = self.describe()
    return out


def geo_demographic_partition(speaker_regions: Sequence[Hashable], errors: Sequence[float],
                              words: Sequence[float], table: Mapping[Hashable, Mapping[str, Any]], *,
                              min_speakers: int) -> Partition:
  """Geo-demographic cohorts: the one-attribute partition of regions with the largest relative WER gap.

  Candidates, over the regions that have speakers (attributes in sorted name order):
  - a categorical attribute (str, bool, ...): for each value, the regions with that value vs the rest;
  - a numeric attribute (int or float): for each midpoint between consecutive sorted distinct values,
    the regions above it vs those at or below it.
  A candidate is valid when both sides have at least `min_speakers` speakers and some reference words.
  The chosen one maximizes the relative gap `(WER_high - WER_low) / WER_low` (inf when WER_low is 0 and
  WER_high > 0); ties go to the first candidate in the order above (values and thresholds ascending).
  Its higher-WER side is the bottom cohort (on a WER tie, the side the rule selects: `==` or `>`).

  Example:
    >>> table = {"north": {"accent": "scot", "female_share": 0.5},
    ...          "south": {"accent": "rp", "female_share": 0.4}, ...}
    >>> part = geo_demographic_partition(regions, err, wrd, table, min_speakers=30)
    >>> part.describe(), part.relative_gap, part.contains(test_regions)

  Args:
    speaker_regions: each speaker's region (a key of `table`).
    errors, words: each speaker's total edit errors and reference words.
    table: region -> {attribute name: value}; every region with speakers must have every attribute.
    min_speakers: the fewest speakers allowed on either side.

  Returns:
    A `Partition`.

  Raises:
    ValueError: on length mismatches, a speaker's region missing from the table, a region lacking an
      attribute, an attribute mixing numeric and other values, or no valid candidate.
  """
  min_speakers = _positive_int("min_speakers", min_speakers)
  err, wrd = _counts(errors, words)
  reg = _as_1d("speaker_regions", speaker_regions, object)
  _check_len("speaker_regions", reg, err.shape[0], "speakers (errors)")
  regions: list[Hashable] = []
  pos: dict[Hashable, int] = {}
  spk_region = np.empty(reg.shape[0], np.int64)
  for i, r in enumerate(reg):
    if r not in pos:
      if r not in table:
        raise ValueError(f"speaker_regions[{i}] = {r!r} is not in the region table")
      pos[r] = len(regions)
      regions.append(r)
    spk_region[i] = pos[r]
  num_regions = len(regions)
  r_err = np.bincount(spk_region, err, num_regions)
  r_wrd = np.bincount(spk_region, wrd, num_regions)
  r_spk = np.bincount(spk_region, None, num_regions)
  attributes = sorted({a for r in regions for a in table[r]})
  for a in attributes:
    for r in regions:
      if a not in table[r]:
        raise ValueError(f"region {r!r} has no attribute {a!r} in the region table")

  # Each candidate: (attribute, kind, value, mask of regions on the "==" or ">" side).
  candidates: list[tuple[str, str, Any, np.ndarray]] = []
  for a in attributes:
    vals = [table[r][a] for r in regions]
    numeric = [_is_numeric(v) for v in vals]
    if all(numeric):
      x = np.asarray(vals, float)
      if not np.isfinite(x).all():
        raise ValueError(f"attribute {a!r} has a non-finite value in the region table")
      u = np.unique(x)
      for lo, hi in zip(u[:-1], u[1:]):
        t = _midpoint(lo, hi)
        candidates.append((a, "numeric", t, x > t))
    elif any(numeric):
      raise ValueError(f"attribute {a!r} mixes numeric and non-numeric values in the region table")
    else:
      for v in sorted(set(vals), key=repr):
        candidates.append((a, "categorical", v, np.array([w == v for w in vals])))

  best = None
  num_valid = 0
  for a, kind, value, side in candidates:
    s_spk, o_spk = r_spk[side].sum(), r_spk[~side].sum()
    s_wrd, o_wrd = r_wrd[side].sum(), r_wrd[~side].sum()
    if min(s_spk, o_spk) < min_speakers or s_wrd <= 0 or o_wrd <= 0:
      continue
    num_valid += 1
    s_wer, o_wer = r_err[side].sum() / s_wrd, r_err[~side].sum() / o_wrd
    bottom_is_side = s_wer >= o_wer
    rel = _relative_gap(max(s_wer, o_wer), min(s_wer, o_wer))
    if best is None or rel > best[0]:
      best = (rel, a, kind, value, side, bottom_is_side)
  if best is None:
    raise ValueError(f"no candidate partition of the {num_regions} regions has >= min_speakers="
                     f"{min_speakers} speakers on both sides")
  rel, a, kind, value, side, bottom_is_side = best
  bottom = side if bottom_is_side else ~side
  direction = {("categorical", True): "==", ("categorical", False): "!=", ("numeric", True): ">",
               ("numeric", False): "<="}[(kind, bool(bottom_is_side))]
  names = np.array(regions, dtype=object)
  return Partition(
      attribute=a, kind=kind, value=value, direction=direction,
      bottom_regions=tuple(sorted(names[bottom].tolist(), key=repr)),
      rest_regions=tuple(sorted(names[~bottom].tolist(), key=repr)),
      wer_bottom=float(r_err[bottom].sum() / r_wrd[bottom].sum()),
      wer_rest=float(r_err[~bottom].sum() / r_wrd[~bottom].sum()), relative_gap=float(rel),
      num_speakers_bottom=int(r_spk[bottom].sum()), num_speakers_rest=int(r_spk[~bottom].sum()),
      num_candidates=num_valid, table=table)


# Automatic cohorts (k-means on speaker embeddings) --------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CohortStats:
  """One cohort's size and corpus WER.

  Attributes:
    cohort: the cohort's id or label.
    wer: its corpus WER (NaN if it has no reference words).
    num_speakers: its speakers.
    errors, words: its summed edit errors and reference words.
    num_utterances: its utterances (None where only per-speaker totals were given).
  """
  cohort: Hashable
  wer: float
  num_speakers: int
  errors: float
  words: float
  num_utterances: int | None = None

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    c = self.cohort
    out["cohort"] = int(c) if isinstance(c, (int, np.integer)) and not isinstance(c, bool) else str(c)
    out["wer"] = self.wer if np.isfinite(self.wer) else None
    return out


def _l2_normalize(name: str, embeddings: Any) -> np.ndarray:
  x = np.asarray(embeddings, float)
  if x.ndim != 2:
    raise ValueError(f"{name} must be two-dimensional (speakers, dims), got shape {x.shape}")
  bad = np.flatnonzero(~np.isfinite(x).all(1))
  if bad.size:
    raise ValueError(f"{name}[{bad[0]}] has a non-finite value")
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  zero = np.flatnonzero(norm[:, 0] == 0)
  if zero.size:
    raise ValueError(f"{name}[{zero[0]}] is all zeros, so it has no direction to normalize")
  return x / norm


@dataclasses.dataclass(frozen=True)
class KMeansCohorts:
  """Automatic cohorts: k-means clusters of L2-normalized speaker embeddings (see `kmeans_cohorts`).

  Attributes:
    k: the chosen number of clusters.
    silhouette: the silhouette score of each k tried (NaN where k-means found fewer than two distinct
      clusters), the numbers behind the choice of k.
    centroids: (k, dims) cluster centres in the normalized space.
    labels: each fitting speaker's cluster (its nearest centroid, as `assign` gives).
    clusters: each cluster's `CohortStats` (cohort = cluster id), ranked by WER, worst first
      (clusters without words last).
    bottom: the bottom cohort: the highest-WER cluster with >= `min_cluster_speakers` speakers.
    min_cluster_speakers: the smallest size a bottom cluster may have.
    seed: the k-means random_state.
  """
  k: int
  silhouette: dict[int, float]
  centroids: np.ndarray = dataclasses.field(repr=False)
  labels: np.ndarray = dataclasses.field(repr=False)
  clusters: tuple[CohortStats, ...]
  bottom: int
  min_cluster_speakers: int
  seed: int

  def assign(self, embeddings: Any) -> np.ndarray:
    """The nearest centroid of each (L2-normalized) embedding: cluster ids for any speakers.

    Example:
      >>> cohorts.assign(test_embeddings) == cohorts.bottom  # Test speakers in the bottom cohort.
    """
    x = _l2_normalize("embeddings", embeddings)
    if x.shape[1] != self.centroids.shape[1]:
      raise ValueError(f"embeddings have {x.shape[1]} dims but the centroids have {self.centroids.shape[1]}")
    d2 = (x * x).sum(1)[:, None] - 2 * x @ self.centroids.T + (self.centroids ** 2).sum(1)[None]
    return np.argmin(d2, axis=1)

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready summary (WERs as fractions; no arrays)."""
    return {"k": self.k, "rule": "max silhouette (euclidean on L2-normalized embeddings), ties to smaller k",
            "silhouette": {str(k): (v if np.isfinite(v) else None) for k, v in self.silhouette.items()},
            "clusters": [c.to_dict() for c in self.clusters], "bottom": self.bottom,
            "min_cluster_speakers": self.min_cluster_speakers, "seed": self.seed}


def kmeans_cohorts(embeddings: Any, errors: Sequence[float], words: Sequence[float], *,
                   k_values: Sequence[int] = range(2, 11), seed: int, min_cluster_speakers: int = 1,
                   n_init: int = 10) -> KMeansCohorts:
  """Automatic cohorts: k-means on L2-normalized speaker embeddings, k chosen by silhouette.

  Embeddings are L2-normalized first, so euclidean distances between them are a monotone function of
  cosine similarity (`|a - b|^2 = 2 - 2 cos(a, b)`); k-means then clusters by direction, as speaker
  embeddings are compared. Rule for k: fit sklearn `KMeans(k, n_init=n_init, random_state=seed)` for
  every k in `k_values` (those below the number of speakers) and keep the k with the highest
  `silhouette_score` (euclidean on the normalized embeddings); ties go to the smaller k. Clusters are
  ranked by corpus WER; the bottom cohort is the highest-WER cluster with at least
  `min_cluster_speakers` speakers (a tiny cluster of outliers is a poor cohort).

  Example:
    >>> cohorts = kmeans_cohorts(spk_emb, err, wrd, seed=0, min_cluster_speakers=10)
    >>> cohorts.k, cohorts.silhouette, cohorts.clusters[0].wer
    >>> in_bottom = cohorts.assign(test_emb) == cohorts.bottom

  Args:
    embeddings: (speakers, dims) speaker embeddings (e.g. each speaker's mean utterance embedding).
    errors, words: each speaker's total edit errors and reference words.
    k_values: the numbers of clusters to try (each >= 2).
    seed: the k-means random_state.
    min_cluster_speakers: the smallest size of a bottom cluster.
    n_init: k-means restarts per k (the best inertia is kept).

  Returns:
    A `KMeansCohorts`.

  Raises:
    ValueError: on bad arguments, a zero or non-finite embedding, no k in `k_values` below the number of
      speakers, no k with two distinct clusters, or no cluster with `min_cluster_speakers` speakers.
  """
  # sklearn is imported here: importing `libs.metrics` (e.g. for `groups`) should not load it.
  from sklearn.cluster import KMeans  # pylint: disable=import-outside-toplevel
  from sklearn.metrics import silhouette_score  # pylint: disable=import-outside-toplevel

  x = _l2_normalize("embeddings", embeddings)
  err, wrd = _counts(errors, words)
  _check_len("embeddings", x, err.shape[0], "speakers (errors)")
  min_cluster_speakers = _positive_int("min_cluster_speakers", min_cluster_speakers)
  n_init = _positive_int("n_init", n_init)
  ks = sorted({_positive_int("k_values entries", k, minimum=2) for k in k_values})
  n = x.shape[0]
  usable = [k for k in ks if k < n]  # The silhouette needs 2 <= clusters <= speakers - 1.
  if not usable:
    raise ValueError(f"k_values {ks} has no k below the number of speakers ({n})")

  silhouette: dict[int, float] = {}
  fits = {}
  best_k = None
  for k in usable:
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x)
    labels = km.labels_
    score = float(silhouette_score(x, labels, metric="euclidean")) if np.unique(labels).size >= 2 else np.nan
    silhouette[k] = score
    fits[k] = km.cluster_centers_
    if np.isfinite(score) and (best_k is None or score > silhouette[best_k]):  # Ties: smaller k.
      best_k = k
  if best_k is None:
    raise ValueError("k-means found fewer than two distinct clusters for every k (duplicate embeddings?)")

  centroids = np.asarray(fits[best_k], float)
  result = KMeansCohorts(k=best_k, silhouette=silhouette, centroids=centroids, labels=np.zeros(0, int),
                         clusters=(), bottom=-1, min_cluster_speakers=min_cluster_speakers, seed=seed)
  labels = result.assign(x)
  c_err = np.bincount(labels, err, best_k)
  c_wrd = np.bincount(labels, wrd, best_k)
  c_spk = np.bincount(labels, None, best_k).astype(int)
  stats = [CohortStats(cohort=c, wer=_wer(c_err[c], c_wrd[c]), num_speakers=int(c_spk[c]),
                       errors=float(c_err[c]), words=float(c_wrd[c])) for c in range(best_k)]
  ranked = sorted(stats, key=lambda s: (not np.isfinite(s.wer), -np.nan_to_num(s.wer, nan=0.0), s.cohort))
  eligible = [s for s in ranked if np.isfinite(s.wer) and s.num_speakers >= min_cluster_speakers]
  if not eligible:
    raise ValueError(f"no cluster has >= min_cluster_speakers={min_cluster_speakers} speakers "
                     f"(sizes {c_spk.tolist()})")
  return dataclasses.replace(result, labels=labels, clusters=tuple(ranked), bottom=int(eligible[0].cohort))


# Held-out gap of a cohort, and per-cohort tables ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CohortGap:
  """The bottom cohort's WER gap to the rest on held-out speakers, with a speaker-bootstrap interval.

  Attributes:
    wer_bottom, wer_rest: corpus WER of the bottom cohort's utterances and of all others.
    wer_gap: `(wer_bottom - wer_rest) / wer_rest`, a fraction (0.25: 25% more errors); negative when
      the cohort is not worse on these speakers (reported as it is: groups are never flipped).
    wer_gap_ci: (low, high) percentile bootstrap interval of `wer_gap`, resampling speakers within each
      side (stratified cluster bootstrap, `libs.metrics.groups.bootstrap`).
    wer_gap_absolute: `wer_bottom - wer_rest`.
    wer_gap_absolute_ci: its interval.
    bottom_share: the bottom cohort's share of the speakers.
    num_speakers_bottom, num_speakers_rest: speakers on each side.
    num_utterances_bottom, num_utterances_rest: utterances on each side.
    confidence, num_resamples: the bootstrap's settings.
  """
  wer_bottom: float
  wer_rest: float
  wer_gap: float
  wer_gap_ci: tuple[float, float]
  wer_gap_absolute: float
  wer_gap_absolute_ci: tuple[float, float]
  bottom_share: float
  num_speakers_bottom: int
  num_speakers_rest: int
  num_utterances_bottom: int
  num_utterances_rest: int
  confidence: float
  num_resamples: int

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict (rates as fractions; an infinite interval end, from a resample whose rest has
    no errors, as None)."""
    out = dataclasses.asdict(self)
    for k in ("wer_gap_ci", "wer_gap_absolute_ci"):
      out[k] = [v if np.isfinite(v) else None for v in out[k]]
    return out


def _group_metrics(errors: Any, words: Any, groups: np.ndarray, clusters: Any, levels=None) -> GroupMetrics:
  return GroupMetrics(errors, words, groups=groups, clusters=clusters, higher_is_better=False, name="wer",
                      cluster_unit="speaker", levels=levels)


def cohort_gap(errors: Sequence[float], words: Sequence[float], in_bottom: Sequence[bool],
               clusters: Sequence[Hashable], *, rng: np.random.Generator, num_resamples: int = 1000,
               confidence: float = 0.95) -> CohortGap:
  """The relative WER gap of a bottom cohort to the rest, with a speaker-cluster bootstrap interval.

  Meant for held-out speakers: the cohort is found on some speakers and its gap measured on others, so
  the gap is not inflated by having been selected as the largest.

  Example:
    >>> gap = cohort_gap([3, 1, 1, 1], [10, 10, 10, 10], [True, True, False, False], ["a", "b", "c", "d"],
    ...                  rng=np.random.default_rng(0), num_resamples=200)
    >>> gap.wer_bottom, gap.wer_rest, gap.wer_gap, gap.bottom_share
    (0.2, 0.1, 1.0, 0.5)

  Args:
    errors, words: per-utterance edit errors and reference words.
    in_bottom: per utterance, whether its speaker is in the bottom cohort.
    clusters: per-utterance speaker ids (the bootstrap resamples whole speakers).
    rng: the NumPy Generator the bootstrap draws from.
    num_resamples: bootstrap resamples.
    confidence: the interval's coverage, in (0, 1).

  Returns:
    A `CohortGap`.

  Raises:
    ValueError: on length mismatches, an empty bottom cohort or rest, a speaker with utterances on both
      sides, a side without reference words, or a rest WER of 0 (the relative gap is then undefined).
  """
  err, wrd = _counts(errors, words, "utterances")
  n = err.shape[0]
  flag = _as_1d("in_bottom", in_bottom)
  _check_len("in_bottom", flag, n, "utterances (errors)")
  if flag.dtype != bool:
    raise ValueError(f"in_bottom must be boolean, got dtype {flag.dtype}")
  spk = _as_1d("clusters", clusters)
  _check_len("clusters", spk, n, "utterances (errors)")
  if not flag.any():
    raise ValueError("in_bottom selects no utterance: the bottom cohort is empty")
  if flag.all():
    raise ValueError("in_bottom selects every utterance: the rest is empty, so there is nothing to compare")
  speakers, inv = np.unique(spk, return_inverse=True)
  inv = inv.reshape(-1)
  spk_bottom = np.bincount(inv, flag, speakers.size)
  spk_count = np.bincount(inv, None, speakers.size)
  mixed = np.flatnonzero((spk_bottom > 0) & (spk_bottom < spk_count))
  if mixed.size:
    bad = speakers[mixed[0]]
    bad = bad.item() if hasattr(bad, "item") else bad
    raise ValueError(f"speaker {bad!r} (clusters) has utterances both in and out of the bottom "
                     f"cohort ({mixed.size} such speakers); a cohort is a set of speakers")
  groups = np.where(flag, "bottom", "rest")
  gm = _group_metrics(err, wrd, groups, spk, levels=["bottom", "rest"])
  wer_rest = gm.by_group["rest"]
  if wer_rest == 0:
    raise ValueError("the rest's WER is 0, so the relative gap (wer_bottom - wer_rest) / wer_rest is undefined")
  gap = gm.gap("rest", group="bottom")
  ci = bootstrap(gm, rng=rng, num_resamples=num_resamples, confidence=confidence, group="bottom")
  num_bottom = int((spk_bottom > 0).sum())
  return CohortGap(
      wer_bottom=gm.by_group["bottom"], wer_rest=wer_rest, wer_gap=gap.relative,
      wer_gap_ci=(ci.gap_relative.low, ci.gap_relative.high), wer_gap_absolute=gap.absolute,
      wer_gap_absolute_ci=(ci.gap_absolute.low, ci.gap_absolute.high), bottom_share=gap.cluster_share,
      num_speakers_bottom=num_bottom, num_speakers_rest=int(speakers.size - num_bottom),
      num_utterances_bottom=int(flag.sum()), num_utterances_rest=int(n - flag.sum()),
      confidence=ci.confidence, num_resamples=ci.num_resamples)


@dataclasses.dataclass(frozen=True)
class CohortTable:
  """Per-cohort WERs and their spread (the EWC study's mean, max and variance of cohort WER).

  Attributes:
    cohorts: each cohort's `CohortStats`, in sorted cohort order.
    overall_wer: the corpus WER of all utterances.
    mean_wer, max_wer: the unweighted mean and the maximum of the cohort WERs.
    var_wer: their population variance (ddof=0: the cohorts are all there is, not a sample).
    worst_cohort: the cohort with the highest WER.
  """
  cohorts: tuple[CohortStats, ...]
  overall_wer: float
  mean_wer: float
  max_wer: float
  var_wer: float
  worst_cohort: Hashable

  def to_dict(self) -> dict[str, Any]:
    return {"cohorts": [c.to_dict() for c in self.cohorts], "overall_wer": self.overall_wer,
            "mean_wer": self.mean_wer, "max_wer": self.max_wer, "var_wer": self.var_wer,
            "worst_cohort": str(self.worst_cohort)}


def cohort_table(errors: Sequence[float], words: Sequence[float], cohort_ids: Sequence[Hashable],
                 clusters: Sequence[Hashable]) -> CohortTable:
  """Each cohort's corpus WER and size, and the mean, max and variance of the cohort WERs.

  Example:
    >>> t = cohort_table([1, 3, 2], [10, 10, 10], ["a", "b", "b"], ["s1", "s2", "s3"])
    >>> [(c.cohort, c.wer, c.num_speakers) for c in t.cohorts], t.mean_wer, t.max_wer
    ([('a', 0.1, 1), ('b', 0.25, 2)], 0.175, 0.25)

  Args:
    errors, words: per-utterance edit errors and reference words.
    cohort_ids: each utterance's cohort.
    clusters: each utterance's speaker.

  Raises:
    ValueError: on length mismatches or a cohort without reference words (via `GroupMetrics`).
  """
  err, wrd = _counts(errors, words, "utterances")
  ids = _as_1d("cohort_ids", cohort_ids)
  spk = _as_1d("clusters", clusters)
  _check_len("clusters", spk, err.shape[0], "utterances (errors)")
  gm = _group_metrics(err, wrd, ids, spk)
  # pylint: disable=protected-access  # The sibling module's per-(speaker, group) sums.
  counts = gm._cluster_count
  rows = tuple(CohortStats(cohort=g, wer=float(gm._by_group[i]), num_speakers=int((counts[:, i] > 0).sum()),
                           errors=float(gm._group_num[i]), words=float(gm._group_den[i]),
                           num_utterances=int(counts[:, i].sum())) for i, g in enumerate(gm.groups))
  wers = np.array([r.wer for r in rows])
  return CohortTable(cohorts=rows, overall_wer=gm.overall, mean_wer=float(wers.mean()),
                     max_wer=float(wers.max()), var_wer=float(wers.var()), worst_cohort=gm.worst_group)
