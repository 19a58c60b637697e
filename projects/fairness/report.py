"""Tables (printed) and figures (`workdir/figures/*.png`) of the three studies."""

from __future__ import annotations

import os

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
from matplotlib import colors as mcolors  # pylint: disable=wrong-import-position
from matplotlib import patches  # pylint: disable=wrong-import-position

from libs.metrics import verification as verification_lib  # pylint: disable=wrong-import-position

# Map panels: (title, longitude range, latitude range); speakers outside every panel are not drawn.
_PANELS = (("North America and the Caribbean", (-125.0, -55.0), (5.0, 52.0)),
           ("Britain", (-8.0, 3.0), (49.0, 60.0)))


def _pct(x) -> str:
  return "n/a" if x is None else f"{100 * x:+.1f}%"


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def cohort_table(results: dict) -> str:
  lines = ["", f"base recognizer: dev WER {100 * results['asr']['dev_wer']:.2f}%, "
               f"test WER {100 * results['asr']['test_wer']:.2f}%",
           "cohort discovery on dev speakers, measured on held-out test speakers:",
           f"{'method':<16} {'test WER gap':>13} {'95% CI':>20} {'bottom share':>13}  rule"]
  for c in results["cohorts"]:
    ci = c["wer_gap_ci"]
    ci_s = "n/a" if ci is None else f"[{_pct(ci[0])}, {_pct(ci[1])}]"
    lines.append(f"{c['method']:<16} {_pct(c['wer_gap']):>13} {ci_s:>20} {100 * c['bottom_share']:>12.1f}%  {c['rule']}")
    if "test_composition" in c:
      lines.append(f"{'':<16} who: {_over_represented(c['test_composition'])}")
  p = results["published"]
  lines.append(f"published ({p['source']}): geo-demographic +{100 * p['geo_demographic']['wer_gap']:.1f}% gap / "
               f"{100 * p['geo_demographic']['bottom_share']:.1f}% share; automatic "
               f"+{100 * p['automatic']['wer_gap']:.1f}% / {100 * p['automatic']['bottom_share']:.1f}%")
  return "\n".join(lines)


def _over_represented(comp: dict) -> str:
  """The accent and gender most over-represented in a cohort, against everyone's shares."""
  parts = []
  for key in ("accent", "gender"):
    v, s = max(comp[key].items(), key=lambda kv: kv[1]["cohort"] - kv[1]["everyone"])
    parts.append(f"{v} {100 * s['cohort']:.0f}% (all test speakers: {100 * s['everyone']:.0f}%)")
  return "; ".join(parts)


def cohort_figures(workdir: str, cohorts: list, *, tree, kmeans, dev_table, test_table, dev_scores, test_scores,
                   speaker_sums) -> dict:
  """The cohort map, the test gaps with intervals, and the silhouette rule for k."""
  if jax.process_index() > 0:
    return {}
  fig_dir = os.path.join(workdir, "figures")
  out = {}
  # Map: the tree's leaves as boxes coloured by their dev WER, speakers as dots coloured by theirs.
  errors, words = speaker_sums(dev_table, dev_scores)
  speaker_wer = errors / np.maximum(words, 1)
  leaves = tree.leaves
  vmax = max(max(l.wer for l in leaves), float(np.quantile(speaker_wer, 0.95)), 1e-3)
  norm, cmap = mcolors.Normalize(0.0, vmax), plt.get_cmap("viridis_r")
  fig, axes = plt.subplots(1, len(_PANELS), figsize=(12, 5), gridspec_kw={"width_ratios": [1.6, 1]},
                           constrained_layout=True)
  for ax, (title, (lon0, lon1), (lat0, lat1)) in zip(axes, _PANELS):
    for leaf in leaves:
      box = leaf.box
      la0, la1 = max(box["lat_min"], lat0), min(box["lat_max"], lat1)
      lo0, lo1 = max(box["lon_min"], lon0), min(box["lon_max"], lon1)
      if la0 >= la1 or lo0 >= lo1:
        continue
      ax.add_patch(patches.Rectangle((lo0, la0), lo1 - lo0, la1 - la0, facecolor=cmap(norm(leaf.wer)), alpha=0.35,
                                     edgecolor="black", linewidth=0.8))
      ax.annotate(f"#{leaf.id}: {100 * leaf.wer:.1f}%", ((lo0 + lo1) / 2, (la0 + la1) / 2), ha="center",
                  va="center", fontsize=7)
    inside = ((dev_table.longitude >= lon0) & (dev_table.longitude <= lon1) & (dev_table.latitude >= lat0)
              & (dev_table.latitude <= lat1))
    ax.scatter(dev_table.longitude[inside], dev_table.latitude[inside], c=speaker_wer[inside], cmap=cmap, norm=norm,
               s=12, edgecolors="black", linewidths=0.3)
    ax.set(xlim=(lon0, lon1), ylim=(lat0, lat1), xlabel="longitude", ylabel="latitude", title=title)
    ax.set_aspect(1.0 / np.cos(np.deg2rad((lat0 + lat1) / 2)))
  fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="dev WER (leaf boxes; speaker dots)",
               shrink=0.8)
  fig.suptitle("geographic clustering tree on the dev speakers' errors (leaf: id and dev WER)")
  out["cohort_map"] = _save(fig, os.path.join(fig_dir, "cohort_map.png"))

  # Test gaps with intervals.
  fig, ax = plt.subplots(figsize=(6.5, 4))
  names = [c["method"] for c in cohorts]
  gaps = [100 * (c["wer_gap"] or 0.0) for c in cohorts]
  lo = [100 * ((c["wer_gap"] or 0) - (c["wer_gap_ci"] or [0, 0])[0]) for c in cohorts]
  hi = [100 * ((c["wer_gap_ci"] or [0, 0])[1] - (c["wer_gap"] or 0)) for c in cohorts]
  bars = ax.bar(names, gaps, yerr=[lo, hi], capsize=5, color=["tab:blue", "tab:orange", "tab:green"][: len(names)])
  for b, c in zip(bars, cohorts):
    ax.annotate(f"share {100 * c['bottom_share']:.1f}%", (b.get_x() + b.get_width() / 2, 0), ha="center",
                va="bottom" if b.get_height() >= 0 else "top", fontsize=8, xytext=(0, 3), textcoords="offset points")
  ax.axhline(0, color="black", linewidth=0.8)
  ax.set(ylabel="test WER of bottom cohort vs rest (%)", title="bottom cohorts on held-out speakers (95% CI)")
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  out["cohort_gaps"] = _save(fig, os.path.join(fig_dir, "cohort_gaps.png"))

  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  ks = sorted(kmeans.silhouette)
  ax.plot(ks, [kmeans.silhouette[k] for k in ks], "o-")
  ax.axvline(kmeans.k, color="tab:red", linestyle="--", label=f"chosen k = {kmeans.k}")
  ax.set(xlabel="k", ylabel="silhouette (dev speaker embeddings)", title="k-means: k by the best silhouette")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  out["kmeans_k"] = _save(fig, os.path.join(fig_dir, "kmeans_k.png"))
  return out


def ewc_table(results: dict) -> str:
  lines = ["", "fine-tuning on the worst geographic cohorts (test speakers; cohorts = tree leaves):",
           f"{'method':<12} {'overall WER':>12} {'worst cohorts':>14} {'cohort mean':>12} {'cohort max':>11} "
           f"{'cohort var':>11}"]
  for r in results["runs"] + [dict(c, method=c["method"] + "*") for c in results.get("controls", [])]:
    name = r["method"] + (f" ({r['strength']:g})" if "strength" in r else "")
    lines.append(f"{name:<12} {100 * r['overall_wer']:>11.2f}% {100 * r['worst_cohorts_wer']:>13.2f}% "
                 f"{100 * r['cohort_wer_mean']:>11.2f}% {100 * r['cohort_wer_max']:>10.2f}% {r['cohort_wer_var']:>11.2e}")
  lines.append(f"ewc strength: {results['ewc_choice']}")
  if results.get("controls"):
    lines.append("* control: the same fine-tuning steps on all training data, uniformly")
  return "\n".join(lines)


def ewc_figures(workdir: str, summaries: dict, names: list, worst) -> dict:
  if jax.process_index() > 0:
    return {}
  cohorts = sorted(summaries["baseline"]["test"]["cohort_wer"], key=int)
  fig, ax = plt.subplots(figsize=(max(6.5, 0.9 * len(cohorts) + 3), 4))
  width = 0.8 / len(names)
  x = np.arange(len(cohorts) + 1)
  for k, name in enumerate(names):
    t = summaries[name]["test"]
    values = [100 * t["cohort_wer"][c] for c in cohorts] + [100 * t["overall_wer"]]
    ax.bar(x + (k - (len(names) - 1) / 2) * width, values, width, label=name)
  labels = [f"#{c}" + (" (worst)" if int(c) in worst else "") for c in cohorts] + ["overall"]
  ax.set_xticks(x, labels, rotation=30, ha="right")
  ax.set(ylabel="test WER (%)", title="test WER per geographic cohort before and after fine-tuning")
  ax.legend(fontsize=8)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  return {"ewc_cohorts": _save(fig, os.path.join(workdir, "figures", "ewc_cohorts.png"))}


def arw_table(results: dict) -> str:
  lines = ["", "speaker verification on the test speakers (cosine scores):",
           f"{'method':<10} {'EER':>8} {'gender EER gap':>15} {'accent EER std':>15}"]
  for r in results["runs"]:
    cells = [("n/a" if r[k] is None else f"{100 * r[k]:.2f}%") for k in ("gender_eer_gap", "accent_eer_std")]
    lines.append(f"{r['method']:<10} {100 * r['eer']:>7.2f}% {cells[0]:>15} {cells[1]:>15}")
  ch = results["relative_change_arw_vs_baseline"]
  lines.append("arw vs baseline (relative): " + ", ".join(f"{k} {_pct(v)}" for k, v in ch.items()))
  p = results["published"]["relative_change"]
  lines.append(f"published ({results['published']['source']}): " + ", ".join(f"{k} {_pct(v)}" for k, v in p.items()))
  return "\n".join(lines)


def det_figure(workdir: str, curves: dict) -> dict:
  """DET curves per gender for each method (probit axes)."""
  if jax.process_index() > 0:
    return {}
  labelled = {}
  for method, by_gender in curves.items():
    for gender, (fpr, fnr) in by_gender.items():
      labelled[f"{method}, {gender}"] = (fpr, fnr)
  path = os.path.join(workdir, "figures", "det_by_gender.png")
  verification_lib.plot_det(labelled, path, title="DET curves per gender (test trials within gender)")
  return {"det_by_gender": path}
