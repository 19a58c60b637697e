"""Figures written to `workdir/figures/`.

Example:
  >>> plot_training_curves(read_jsonl(f"{workdir}/metrics.jsonl"), f"{workdir}/figures/training_curve.png")
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position


def plot_training_curves(rows: Sequence[dict], path: str, *, title: str = "") -> str:
  """Training loss and dev WER against the step, from metrics.jsonl rows (process 0 draws it)."""
  if jax.process_index() > 0:  # Every host has the same rows; one writes the shared workdir.
    return path
  loss = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
  wer = [(r["step"], 100 * r["dev/wer"]) for r in rows if "dev/wer" in r]
  fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
  if loss:
    ax[0].plot(*zip(*loss), color="tab:blue")
    ax[0].set_yscale("log")
  ax[0].set(xlabel="step", ylabel="training loss (nats / utterance)", title="training loss")
  if wer:
    ax[1].plot(*zip(*wer), "o-", color="tab:red")
    for s, w in wer[-1:]:
      ax[1].annotate(f"{w:.1f}%", (s, w), textcoords="offset points", xytext=(-10, 8))
  ax[1].set(xlabel="step", ylabel="dev WER (%)", title="dev word error rate")
  for a in ax:
    a.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  return save_figure(fig, path)


def save_figure(fig, path: str) -> str:
  """Lays out `fig`, writes it to `path` (creating its folder) at 120 dpi, closes it; returns `path`."""
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
