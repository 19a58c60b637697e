"""The fedlearn results table and figures.

Example:
  >>> print(format_table(results["runs"]))
"""

from __future__ import annotations

import os

def plot_metric(rows: list[dict], results: list[dict], workdir: str, metric: str, ylabel: str, filename: str) -> str:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(7, 4.2))
  for res in results:
    key = f"{res['name']}/{metric}"
    points = [(r["step"], r[key]) for r in rows if key in r]
    if not points:
      continue
    if res["kind"] == "centralized":
      ax.axhline(points[-1][1], ls="--", color="k", label=f"{res['name']} (pooled)")
    else:
      ax.plot(*zip(*points), label=res["name"], marker="." if len(points) < 30 else None)
  ax.set(xlabel="round", ylabel=ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  path = os.path.join(workdir, "figures", filename)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def format_table(results: list[dict]) -> str:
  """A plain-text table of the sub-runs (with the gap to the centralized baseline if any).

  Example:
    >>> print(format_table(results["runs"]))
  """
  central = [r["test_accuracy"] for r in results if r["kind"] == "centralized"]
  header = f"{'run':<28} {'algorithm':<10} {'partition':<9} {'selection':<15} {'acc %':>6} {'loss':>6}"
  if central:
    header += f" {'gap pts':>7}"
  if any("privacy" in r for r in results):
    header += f" {'eps':>6} {'z':>6}"
  if any("mean_period_accuracy" in r for r in results):
    header += f" {'mean period acc %':>17}"
  lines = [header, "-" * len(header)]
  for r in results:
    line = (f"{r['name']:<28} {r['algorithm']:<10} {r.get('partition', ''):<9} {r.get('selection', '-'):<15} "
            f"{100 * r['test_accuracy']:6.2f} {r['test_loss']:6.3f}")
    if central:
      line += f" {100 * (central[0] - r['test_accuracy']):7.2f}"
    if any("privacy" in x for x in results):
      pr = r.get("privacy")
      line += f" {pr['epsilon']:6.2f} {pr['noise_multiplier']:6.3f}" if pr else f" {'inf':>6} {'-':>6}"
    if "mean_period_accuracy" in r:
      line += f" {100 * r['mean_period_accuracy']:17.2f}"
    lines.append(line)
  return "\n".join(lines)
