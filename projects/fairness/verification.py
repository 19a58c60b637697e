"""Speaker verification fairness (Jin et al. 2022): adversarial reweighting against the baseline.

Two speaker-embedding models are trained on the training speakers from the same
initialization and batches (`projects.fairness.speaker`): `baseline` (unweighted pairwise
loss) and `arw` (adversarially reweighted pairs). Verification trials among the test speakers
(every same-speaker pair, and `verification.nontargets_per_target` different-speaker pairs per
same-speaker pair) are scored by cosine similarity. Reported: EER overall; EER per gender
(different-speaker trials within the gender) and the gender EER gap; EER per accent (trials
within the accent) and its standard deviation across accents.

Example:
  >>> results = run(get_config("quick"), "/tmp/arw")
  >>> {r["method"]: (r["eer"], r["gender_eer_gap"], r["accent_eer_std"]) for r in results["runs"]}
"""

from __future__ import annotations

import os
import time

import ml_collections
import numpy as np

from libs.metrics import verification as verification_lib
from libs.train import io as io_lib
from projects.fairness import data as data_lib
from projects.fairness import report
from projects.fairness import speaker as speaker_mod
from projects.fairness import validation


def evaluate(config, embeddings: np.ndarray, meta: dict) -> tuple[dict, dict]:
  """EER overall, per gender and per accent of the test trials (cosine scores), and the DET
  curves per gender.

  A group's EER uses the trials within the group (its same-speaker pairs, and different-speaker
  pairs of two of its speakers), the usual protocol for demographic EER gaps; a group with a
  single speaker has no such non-target trial and is listed under `unscored_*` instead.
  """
  ratio = config.verification.nontarget_per_target

  def trials(name: str, rows: np.ndarray, same=None):
    rng = np.random.default_rng((config.seed, sum(map(ord, name))))
    i, j, target = verification_lib.make_trials(meta["speaker_id"][rows], rng=rng, nontarget_per_target=ratio,
                                                same_attribute=None if same is None else same[rows])
    i, j = rows[i], rows[j]
    return verification_lib.cosine_scores(embeddings, i, j), target, i

  everyone = np.arange(len(embeddings))
  scores, target, _ = trials("all", everyone)
  out = {"eer": verification_lib.eer(scores, target).eer,
         "num_trials": {"target": int(target.sum()), "nontarget": int((~target).sum())}}
  curves = {}
  for key in ("gender", "accent"):
    values = meta[key]
    speakers_of = {g: len(np.unique(meta["speaker_id"][values == g])) for g in np.unique(values)}
    scored = sorted(g for g, n in speakers_of.items() if n >= 2)
    out[f"unscored_{key}s"] = sorted(str(g) for g, n in speakers_of.items() if n < 2)
    out[f"eer_by_{key}"] = {}
    if not scored:
      continue
    scores, target, i = trials(key, np.flatnonzero(np.isin(values, scored)), values)
    groups = values[i]
    summary = verification_lib.eer_summary(scores, target, groups)
    out[f"eer_by_{key}"] = {str(g): float(v) for g, v in sorted(summary.by_group.items())}
    if key == "gender":
      for g in scored:
        sel = groups == g
        curves[str(g)] = verification_lib.det_curve(scores[sel], target[sel])[:2]
  genders = list(out["eer_by_gender"].values())
  accents = list(out["eer_by_accent"].values())
  out["gender_eer_gap"] = float(max(genders) - min(genders)) if len(genders) >= 2 else None  # absolute
  out["accent_eer_std"] = float(np.std(accents)) if len(accents) >= 2 else None  # population std (ddof=0)
  return out, curves


def run(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  validation.validate(config)
  wall_start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  data = data_lib.load(config)
  rows, curves, details = [], {}, {}
  for method, arw in (("baseline", False), ("arw", True)):
    trained = speaker_mod.train(config, os.path.join(workdir, f"speaker_{method}"), data.train, arw=arw)
    if trained is None:
      return None
    emb = speaker_mod.embed(config, trained.params, data.test)
    metrics, curves[method] = evaluate(config, emb, data.test.metadata)
    rows.append({"method": method, "eer": metrics["eer"], "gender_eer_gap": metrics["gender_eer_gap"],
                 "accent_eer_std": metrics["accent_eer_std"]})
    details[method] = {**metrics, "steps": trained.steps, "train_seconds": trained.train_seconds}
  base, arw_row = rows
  change = {k: (arw_row[k] - base[k]) / base[k] if base[k] and arw_row[k] is not None else None
            for k in ("eer", "gender_eer_gap", "accent_eer_std")}
  results = {
      "runs": rows,
      "relative_change_arw_vs_baseline": change,
      "details": details,
      "published": {"source": "Jin et al., Interspeech 2022",
                    "relative_change": {"eer": -0.076, "gender_eer_gap": -0.17, "accent_eer_std": -0.10}},
      "figures": report.det_figure(workdir, curves),
      "test_speakers": int(len(np.unique(data.test.metadata["speaker_id"]))),
      "wall_seconds_this_run": time.perf_counter() - wall_start,
      "config": config.to_dict(),
  }
  io_lib.write_results(workdir, results)
  print(report.arw_table(results))
  print(f"results: {os.path.join(workdir, 'results.json')}")
  return results
