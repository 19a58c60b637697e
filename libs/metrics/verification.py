"""Speaker verification metrics: trial lists, equal error rate, DET curves and per-group EER.

A verification trial compares two utterances: a target trial has the same speaker on both sides, a
non-target trial two different speakers; a system scores each trial (e.g. the cosine similarity of two
speaker embeddings) and accepts it when the score reaches a threshold. Its errors are false rejections
(FNR, a.k.a. miss rate, among target trials) and false acceptances (FPR, among non-target trials); the
equal error rate (EER) is where the two are equal. Per-group EER (e.g. by gender or accent, with
non-target trials inside one group) is how speaker-verification fairness is usually reported.

Host-side NumPy and scikit-learn; rates are fractions (0.05 = 5%).

Example:
  >>> i, j, is_target = make_trials(speaker_ids, rng=np.random.default_rng(0), same_attribute=gender)
  >>> scores = cosine_scores(embeddings, i, j)
  >>> eer(scores, is_target).eer
  >>> eer_summary(scores, is_target, gender[i]).to_dict()
  >>> fpr, fnr, _ = det_curve(scores, is_target)
  >>> plot_det({"all": (fpr, fnr)}, f"{workdir}/figures/det.png", title="speaker verification")
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Hashable, Mapping, Sequence

import numpy as np


def _as_1d(name: str, values: Any, dtype=None) -> np.ndarray:
  arr = np.asarray(values, dtype=dtype)
  if arr.ndim != 1:
    raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
  return arr


# Trials ----------------------------------------------------------------------------------------------------

def _sample_pairs(rng: np.random.Generator, members: list[np.ndarray], spk: np.ndarray, m: int,
                  available: np.ndarray) -> np.ndarray:
  """`m` distinct codes `i * n + j` (i < j) drawn uniformly from pairs of different speakers within a group.

  A group is drawn with probability proportional to its number of such pairs, then a uniform pair of
  its members, rejecting same-speaker pairs and repeats: uniform over all allowed pairs, in batches.
  """
  n = spk.shape[0]
  p = available / available.sum()
  flat = np.concatenate(members).astype(np.int64)
  sizes = np.array([mem.size for mem in members])
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  codes = np.zeros(0, np.int64)
  while codes.size < m:
    b = 2 * (m - codes.size) + 64
    g = rng.choice(len(members), size=b, p=p)
    i = flat[offsets[g] + rng.integers(0, sizes[g])]
    j = flat[offsets[g] + rng.integers(0, sizes[g])]
    ok = spk[i] != spk[j]
    lo, hi = np.minimum(i, j)[ok], np.maximum(i, j)[ok]
    both = np.concatenate([codes, lo * n + hi])
    _, first = np.unique(both, return_index=True)
    codes = both[np.sort(first)][:m]  # Distinct, in draw order: deterministic given rng.
  return codes


def make_trials(speaker_ids: Sequence[Hashable], *, rng: np.random.Generator,
                nontarget_per_target: float = 1.0, max_trials: int | None = None,
                same_attribute: Sequence[Hashable] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Verification trials over utterances: all same-speaker pairs and a random sample of the others.

  Target trials are every pair `i < j` of utterances of one speaker. Non-target trials are
  `round(nontarget_per_target * num_targets)` distinct pairs `i < j` of utterances of different
  speakers, drawn uniformly without replacement (all of them if fewer exist). With `same_attribute`,
  non-target pairs are drawn only within one attribute value (e.g. same gender, the standard protocol
  for per-gender EER, since cross-gender pairs are easy); target pairs are unaffected. With
  `max_trials`, if there are more trials than that, targets and non-targets are both subsampled
  (uniformly, without replacement) to `max_trials` in total, keeping their ratio.

  Trials come back as targets then non-targets, each sorted by `(i, j)`; the same `rng` state gives the
  same trials.

  Example:
    >>> i, j, t = make_trials(["a", "a", "b", "b", "b"], rng=np.random.default_rng(0))
    >>> int(t.sum()), int((~t).sum())  # 1 + 3 target pairs, as many non-targets.
    (4, 4)

  Args:
    speaker_ids: each utterance's speaker.
    rng: the NumPy Generator to draw non-target pairs (and subsamples) from.
    nontarget_per_target: non-target trials per target trial (> 0).
    max_trials: the most trials to return (None: no limit).
    same_attribute: each utterance's attribute (e.g. gender); non-target pairs then share it.

  Returns:
    `(i, j, is_target)`: int64 utterance indices with `i < j`, and a bool array.

  Raises:
    ValueError: on bad arguments, no target pairs (no speaker has two utterances), or no non-target pair.
  """
  if not isinstance(rng, np.random.Generator):
    raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng)}")
  if not np.isfinite(nontarget_per_target) or nontarget_per_target <= 0:
    raise ValueError(f"nontarget_per_target must be finite and > 0, got {nontarget_per_target}")
  if max_trials is not None and (int(max_trials) != max_trials or max_trials < 2):
    raise ValueError(f"max_trials must be an integer >= 2 or None, got {max_trials}")
  ids = _as_1d("speaker_ids", speaker_ids)
  n = ids.shape[0]
  _, spk = np.unique(ids, return_inverse=True)
  spk = spk.reshape(-1).astype(np.int64)
  if same_attribute is None:
    attr = np.zeros(n, np.int64)
  else:
    raw = _as_1d("same_attribute", same_attribute)
    if raw.shape[0] != n:
      raise ValueError(f"same_attribute has {raw.shape[0]} entries but speaker_ids has {n}")
    _, attr = np.unique(raw, return_inverse=True)
    attr = attr.reshape(-1)

  # Targets: all pairs within each speaker, in (i, j) order.
  if n == 0:
    raise ValueError("speaker_ids is empty: no utterances")
  by_speaker = np.split(np.argsort(spk, kind="stable"), np.cumsum(np.bincount(spk))[:-1])
  pairs = [np.triu_indices(idx.size, k=1) for idx in by_speaker]
  ti = np.concatenate([idx[a] for idx, (a, _) in zip(by_speaker, pairs)]).astype(np.int64)
  tj = np.concatenate([idx[b] for idx, (_, b) in zip(by_speaker, pairs)]).astype(np.int64)
  if ti.size == 0:
    raise ValueError("speaker_ids has no speaker with two utterances, so there is no target trial")

  # Non-target pairs available per attribute group: all pairs minus same-speaker ones.
  members = [np.flatnonzero(attr == g) for g in range(int(attr.max()) + 1)]
  available = np.zeros(len(members))
  for g, mem in enumerate(members):
    per_spk = np.bincount(spk[mem])
    available[g] = mem.size * (mem.size - 1) / 2 - (per_spk * (per_spk - 1) / 2).sum()
  total = int(available.sum())
  if total == 0:
    what = " with the same attribute" if same_attribute is not None else ""
    raise ValueError(f"speaker_ids has no pair of different speakers{what}, so there is no non-target trial")
  m = min(int(round(nontarget_per_target * ti.size)), total)
  m = max(m, 1)
  if 2 * m >= total:  # Most pairs are wanted: list them all, then choose.
    codes = []
    for mem in members:
      a, b = np.triu_indices(mem.size, k=1)
      keep = spk[mem[a]] != spk[mem[b]]
      codes.append(mem[a][keep].astype(np.int64) * n + mem[b][keep])
    codes = np.concatenate(codes)
    codes = codes[rng.permutation(codes.size)[:m]]
  else:
    codes = _sample_pairs(rng, members, spk, m, available)

  if max_trials is not None and ti.size + codes.size > max_trials:
    keep_t = max(1, int(round(max_trials * ti.size / (ti.size + codes.size))))
    keep_t = min(keep_t, max_trials - 1)
    pick = np.sort(rng.choice(ti.size, keep_t, replace=False))
    ti, tj = ti[pick], tj[pick]
    codes = codes[rng.choice(codes.size, max_trials - keep_t, replace=False)]
  codes = np.sort(codes)
  ni, nj = codes // n, codes % n
  order = np.lexsort((tj, ti))
  i = np.concatenate([ti[order], ni]).astype(np.int64)
  j = np.concatenate([tj[order], nj]).astype(np.int64)
  return i, j, np.concatenate([np.ones(ti.size, bool), np.zeros(codes.size, bool)])


def cosine_scores(embeddings: Any, i: Sequence[int], j: Sequence[int]) -> np.ndarray:
  """The cosine similarity of embeddings `i[t]` and `j[t]` for each trial t.

  Example:
    >>> cosine_scores([[1, 0], [1, 1], [0, 2]], [0, 0], [1, 2]).round(4)
    array([0.7071, 0.    ])
  """
  x = np.asarray(embeddings, float)
  if x.ndim != 2:
    raise ValueError(f"embeddings must be two-dimensional (utterances, dims), got shape {x.shape}")
  norm = np.linalg.norm(x, axis=1)
  zero = np.flatnonzero(norm == 0)
  if zero.size:
    raise ValueError(f"embeddings[{zero[0]}] is all zeros, so its cosine similarity is undefined")
  x = x / norm[:, None]
  i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
  return np.einsum("td,td->t", x[i], x[j])


# EER and DET ------------------------------------------------------------------------------------------------

def _check_scores(scores: Any, is_target: Any) -> tuple[np.ndarray, np.ndarray]:
  s = _as_1d("scores", scores, float)
  t = _as_1d("is_target", is_target)
  if t.shape[0] != s.shape[0]:
    raise ValueError(f"is_target has {t.shape[0]} entries but scores has {s.shape[0]}")
  if t.dtype != bool:
    if not np.isin(t, (0, 1)).all():
      raise ValueError("is_target must be boolean (or 0/1)")
    t = t.astype(bool)
  bad = np.flatnonzero(~np.isfinite(s))
  if bad.size:
    raise ValueError(f"scores[{bad[0]}] is {s[bad[0]]}; scores must be finite ({bad.size} are not)")
  if not t.any():
    raise ValueError("is_target has no target trial, so the false rejection rate is undefined")
  if t.all():
    raise ValueError("is_target has no non-target trial, so the false acceptance rate is undefined")
  return s, t


@dataclasses.dataclass(frozen=True)
class EerResult:
  """The equal error rate and the score threshold where it occurs.

  Attributes:
    eer: the rate (a fraction) at which the false acceptance and false rejection rates are equal,
      linearly interpolated between the two ROC points where they cross.
    threshold: the score threshold there (trials with score >= threshold are accepted), interpolated
      the same way.
    num_target, num_nontarget: the trials it was measured on.
  """
  eer: float
  threshold: float
  num_target: int
  num_nontarget: int

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def eer(scores: Sequence[float], is_target: Sequence[bool]) -> EerResult:
  """The equal error rate of verification scores (higher score: more likely the same speaker).

  On the ROC over every distinct score threshold (accept when score >= threshold), the false rejection
  rate FNR falls and the false acceptance rate FPR rises as the threshold decreases; the EER is where
  FNR - FPR changes sign, linearly interpolated between the last point with FNR > FPR and the first
  with FNR <= FPR.

  Example:
    >>> r = eer([0.9, 0.8, 0.3, 0.7, 0.2, 0.1], [1, 1, 1, 0, 0, 0])
    >>> round(r.eer, 4)  # One target below one non-target: 1/3 of each.
    0.3333

  Raises:
    ValueError: on length mismatches, non-finite scores, no target or no non-target trials.
  """
  from sklearn.metrics import roc_curve  # pylint: disable=import-outside-toplevel  # Keep imports light.
  s, t = _check_scores(scores, is_target)
  fpr, tpr, thr = roc_curve(t, s, drop_intermediate=False)
  fnr = 1 - tpr
  d = fnr - fpr  # Decreasing from 1 (threshold +inf) to -1.
  k = int(np.argmax(d <= 0))  # The first crossing point; k >= 1 since d[0] = 1.
  d0, d1 = d[k - 1], d[k]
  w = d0 / (d0 - d1)  # In (0, 1]: d0 > 0 >= d1.
  rate = fpr[k - 1] + w * (fpr[k] - fpr[k - 1])
  t0, t1 = thr[k - 1], thr[k]
  threshold = (1 - w) * t0 + w * t1 if np.isfinite(t0) else t1  # thr[0] is +inf: accept nothing.
  return EerResult(eer=float(rate), threshold=float(threshold), num_target=int(t.sum()),
                   num_nontarget=int((~t).sum()))


def det_curve(scores: Sequence[float], is_target: Sequence[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The detection error tradeoff curve: `(fpr, fnr, thresholds)` (sklearn.metrics.det_curve).

  Example:
    >>> fpr, fnr, thr = det_curve([0.9, 0.8, 0.3, 0.7, 0.2, 0.1], [1, 1, 1, 0, 0, 0])

  Raises:
    ValueError: as `eer`.
  """
  from sklearn import metrics  # pylint: disable=import-outside-toplevel
  s, t = _check_scores(scores, is_target)
  fpr, fnr, thr = metrics.det_curve(t, s)
  return fpr, fnr, thr


# Per-group EER ------------------------------------------------------------------------------------------------

def group_eer(scores: Sequence[float], is_target: Sequence[bool],
              trial_groups: Sequence[Hashable]) -> dict[Hashable, float]:
  """The EER of each group's trials (e.g. `gender[i]` with same-gender non-targets), groups sorted.

  Example:
    >>> group_eer(scores, is_target, gender[i])
    {'female': 0.041, 'male': 0.028}

  Raises:
    ValueError: on length mismatches, or a group without target or non-target trials (named).
  """
  s, t = _check_scores(scores, is_target)
  g = _as_1d("trial_groups", trial_groups)
  if g.shape[0] != s.shape[0]:
    raise ValueError(f"trial_groups has {g.shape[0]} entries but scores has {s.shape[0]}")
  labels, inv = np.unique(g, return_inverse=True)
  inv = inv.reshape(-1)
  out = {}
  for k, label in enumerate(labels):
    label = label.item() if hasattr(label, "item") else label
    sel = inv == k
    try:
      out[label] = eer(s[sel], t[sel]).eer
    except ValueError as e:
      raise ValueError(f"trial_groups: group {label!r}: {e}") from e
  return out


@dataclasses.dataclass(frozen=True)
class EerSummary:
  """Overall and per-group EER, and how far apart the groups are.

  Attributes:
    overall: the EER of all trials.
    by_group: each group's EER (groups sorted).
    worst_group, best_group: the groups with the highest and lowest EER (ties: first in order).
    max_min_gap: `max - min` of the group EERs.
    relative_gap: `max_min_gap / min` (inf when the best group's EER is 0 and the gap > 0; 0 if both 0).
    std: the population standard deviation (ddof=0) of the group EERs.
  """
  overall: float
  by_group: dict[Hashable, float]
  worst_group: Hashable
  best_group: Hashable
  max_min_gap: float
  relative_gap: float
  std: float

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict (rates as fractions, group labels as str, an infinite relative gap as None)."""
    out = dataclasses.asdict(self)
    out["by_group"] = {str(k): v for k, v in self.by_group.items()}
    out["worst_group"], out["best_group"] = str(self.worst_group), str(self.best_group)
    out["relative_gap"] = self.relative_gap if np.isfinite(self.relative_gap) else None
    return out


def eer_summary(scores: Sequence[float], is_target: Sequence[bool],
                trial_groups: Sequence[Hashable]) -> EerSummary:
  """Overall EER, EER per group, the max-min gap, the relative gap and the spread across groups.

  Example:
    >>> eer_summary(scores, is_target, gender[i]).to_dict()

  Raises:
    ValueError: as `group_eer`.
  """
  by_group = group_eer(scores, is_target, trial_groups)
  labels = list(by_group)
  v = np.array([by_group[k] for k in labels])
  lo, hi = float(v.min()), float(v.max())
  gap = hi - lo
  rel = gap / lo if lo > 0 else (float("inf") if gap > 0 else 0.0)
  return EerSummary(overall=eer(scores, is_target).eer, by_group=by_group,
                    worst_group=labels[int(np.argmax(v))], best_group=labels[int(np.argmin(v))],
                    max_min_gap=gap, relative_gap=rel, std=float(v.std()))


# DET plot -----------------------------------------------------------------------------------------------------

_DET_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4)


def plot_det(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str, *,
             title: str = "") -> str:
  """DET curves on normal-deviate (probit) axes, ticks in %: one line per label, to a PNG at `path`.

  Example:
    >>> fpr, fnr, _ = det_curve(scores, is_target)
    >>> plot_det({"all": (fpr, fnr)}, f"{workdir}/figures/det.png", title="speaker verification")

  Args:
    curves: label -> (fpr, fnr) arrays (fractions), e.g. from `det_curve`.
    path: the output file (its folder is created).
    title: the figure's title.

  Returns:
    `path`.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from scipy.stats import norm  # pylint: disable=import-outside-toplevel

  if not curves:
    raise ValueError("curves is empty: nothing to plot")
  lo, hi = _DET_TICKS[0] / 2, 0.5
  eps = 1e-6  # Rates of exactly 0 or 1 sit at the edge of the axes instead of at infinity.
  fig, ax = plt.subplots(figsize=(5.2, 5.0))
  for label, (fpr, fnr) in curves.items():
    fpr, fnr = np.asarray(fpr, float), np.asarray(fnr, float)
    if fpr.shape != fnr.shape or fpr.ndim != 1:
      raise ValueError(f"curves[{label!r}]: fpr and fnr must be 1-D of one length, got {fpr.shape}, {fnr.shape}")
    ax.plot(norm.ppf(np.clip(fpr, eps, 1 - eps)), norm.ppf(np.clip(fnr, eps, 1 - eps)), label=str(label))
  ax.plot(norm.ppf([lo, hi]), norm.ppf([lo, hi]), ":", color="gray", lw=0.8, label="EER line")
  ticks = norm.ppf(_DET_TICKS)
  labels = [f"{100 * t:g}" for t in _DET_TICKS]
  ax.set_xticks(ticks, labels)
  ax.set_yticks(ticks, labels)
  ax.set_xlim(norm.ppf(lo), norm.ppf(hi))
  ax.set_ylim(norm.ppf(lo), norm.ppf(hi))
  ax.set(xlabel="false acceptance rate (%)", ylabel="false rejection rate (%)", title=title or "DET curve")
  ax.grid(alpha=0.3)
  ax.legend(loc="upper right", fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
