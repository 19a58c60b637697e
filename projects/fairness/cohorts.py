"""Cohort discovery (Trinh et al. 2022; Dheram et al. 2022): find on dev, measure on test.

On the base recognizer's per-speaker errors of the dev (discovery) speakers, three methods
each name a bottom cohort:
  geo_tree         the worst leaf of a geographic clustering tree (recursive latitude or
                   longitude splits maximizing the WER difference of the two sides);
  geo_demographic  the higher-WER side of the best binary partition of regions by their
                   majority demographic attributes (majority accent, female share);
  automatic        the highest-WER k-means cluster of speaker embeddings (k by silhouette).
Each rule is then applied to held-out test speakers (by location, region or embedding), and
the test WER gap of the bottom cohort against everyone else is reported with a speaker
bootstrap interval and the cohort's share of test speakers.

Example:
  >>> results = run(get_config("quick"), "/tmp/cohorts")
  >>> [(c["method"], c["wer_gap"], c["bottom_share"]) for c in results["cohorts"]]
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
import threadpoolctl

from libs.metrics import cohorts as cohorts_lib
from libs.metrics import groups as groups_lib
from libs.train import io as io_lib
from projects.fairness import data as data_lib
from projects.fairness import recognizer
from projects.fairness import report
from projects.fairness import speaker as speaker_mod
from projects.fairness import validation

METHODS = ("geo_tree", "geo_demographic", "automatic")


def speaker_sums(table: data_lib.SpeakerTable, scores: recognizer.Scores) -> tuple[np.ndarray, np.ndarray]:
  """Each speaker's summed errors and reference words (rows of `table`)."""
  n = len(table.speaker_ids)
  return (np.bincount(table.utterance_speaker, scores.errors, n), np.bincount(table.utterance_speaker, scores.words, n))


def held_out_gap(config, scores: recognizer.Scores, table: data_lib.SpeakerTable, bottom_speakers: np.ndarray,
                 seed_name: str) -> dict:
  """The test gap of the bottom cohort (a bool per speaker row) against the rest, as a dict."""
  in_bottom = bottom_speakers[table.utterance_speaker]
  if not in_bottom.any() or in_bottom.all():
    side = "no" if not in_bottom.any() else "every"
    return {"wer_gap": None, "bottom_share": float(bottom_speakers.mean()), "wer_gap_ci": None,
            "note": f"{side} test speaker falls in the bottom cohort: its gap is undefined"}
  gap = cohorts_lib.cohort_gap(scores.errors, scores.words, in_bottom, table.speaker_ids[table.utterance_speaker],
                               rng=np.random.default_rng((config.seed, _stable(seed_name))),
                               num_resamples=config.cohorts.bootstrap_resamples,
                               confidence=config.cohorts.confidence)
  return gap.to_dict()


def composition(table: data_lib.SpeakerTable, bottom_speakers: np.ndarray) -> dict:
  """Who is in a bottom cohort: its speakers' shares by accent and gender, next to everyone's.

  A cohort discovered without attributes is only interpretable through such a breakdown
  (e.g. a k-means cluster that is one voice type, with the population's accent mix).
  """
  out = {}
  for key in ("accent", "gender"):
    values = getattr(table, key)
    levels = sorted(set(values.tolist()))
    inside = values[bottom_speakers]
    out[key] = {str(v): {"cohort": float(np.mean(inside == v)) if inside.size else 0.0,
                         "everyone": float(np.mean(values == v))} for v in levels}
  return out


def _stable(name: str) -> int:
  return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little")


def discover(config, dev_table, dev_scores, dev_speaker_emb, region_table):
  """The three cohort rules, fitted on the dev speakers."""
  c = config.cohorts
  errors, words = speaker_sums(dev_table, dev_scores)
  tree = cohorts_lib.fit_geo_tree(dev_table.latitude, dev_table.longitude, errors, words,
                                  min_speakers=c.tree_min_speakers, max_depth=c.tree_max_depth)
  partition = cohorts_lib.geo_demographic_partition(dev_table.region, errors, words, region_table,
                                                    min_speakers=c.demographic_min_speakers)
  with threadpoolctl.threadpool_limits(1):  # sklearn's pool next to JAX's threads oversubscribes 2 cores.
    kmeans = cohorts_lib.kmeans_cohorts(dev_speaker_emb, errors, words, k_values=tuple(c.k_values),
                                        seed=config.seed, min_cluster_speakers=c.min_cluster_speakers)
  return tree, partition, kmeans


def bottom_masks(tree, partition, kmeans, table: data_lib.SpeakerTable, speaker_emb: np.ndarray) -> dict:
  """For each method, which speakers of `table` fall in its bottom cohort."""
  return {
      "geo_tree": tree.assign(table.latitude, table.longitude) == tree.leaves[0].id,
      "geo_demographic": partition.contains(table.region),
      "automatic": kmeans.assign(speaker_emb) == kmeans.bottom,
  }


def run(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  validation.validate(config)
  wall_start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  data = data_lib.load(config)
  base = recognizer.base_and_scores(config, workdir, data)
  if base is None:
    return None
  params, dev_scores, test_scores = base.params, base.dev, base.test
  spk = speaker_mod.train(config, os.path.join(workdir, "speaker"), data.train, arw=False)
  if spk is None:
    return None
  dev_table, test_table = data_lib.speaker_table(data.dev), data_lib.speaker_table(data.test)
  dev_emb = speaker_mod.speaker_means(speaker_mod.embed(config, spk.params, data.dev), dev_table.utterance_speaker,
                                      len(dev_table.speaker_ids))
  test_emb = speaker_mod.speaker_means(speaker_mod.embed(config, spk.params, data.test),
                                       test_table.utterance_speaker, len(test_table.speaker_ids))

  tree, partition, kmeans = discover(config, dev_table, dev_scores, dev_emb, data.region_table)
  dev_masks = bottom_masks(tree, partition, kmeans, dev_table, dev_emb)
  test_masks = bottom_masks(tree, partition, kmeans, test_table, test_emb)
  rules = {"geo_tree": f"leaf {tree.leaves[0].id}: {tree.leaves[0].describe()}", "geo_demographic": partition.describe(),
           "automatic": f"k-means cluster {kmeans.bottom} of k={kmeans.k} (best silhouette)"}
  cohorts = []
  for method in METHODS:
    dev_gap = held_out_gap(config, dev_scores, dev_table, dev_masks[method], f"dev/{method}")
    test_gap = held_out_gap(config, test_scores, test_table, test_masks[method], f"test/{method}")
    cohorts.append({"method": method, "wer_gap": test_gap["wer_gap"], "bottom_share": test_gap["bottom_share"],
                    "wer_gap_ci": test_gap["wer_gap_ci"], "rule": rules[method], "test": test_gap,
                    "discovery_dev": dev_gap, "test_composition": composition(test_table, test_masks[method])})

  group_summaries = {}
  for key in ("accent", "gender", "region"):
    gm = groups_lib.GroupMetrics(test_scores.errors, test_scores.words, groups=list(data.test.metadata[key]),
                                 clusters=data.test.metadata["speaker_id"], higher_is_better=False, name="wer",
                                 cluster_unit="speaker")
    group_summaries[key] = gm.summary()
  figures = report.cohort_figures(workdir, cohorts, tree=tree, kmeans=kmeans, dev_table=dev_table,
                                  test_table=test_table, dev_scores=dev_scores, test_scores=test_scores,
                                  speaker_sums=speaker_sums)
  results = {
      "cohorts": cohorts,
      "published": {"source": "Dheram et al., Interspeech 2022", "geo_demographic": {"wer_gap": 0.417, "bottom_share": 0.008},
                    "automatic": {"wer_gap": 0.650, "bottom_share": 0.100}},
      "asr": {"dev_wer": dev_scores.wer, "test_wer": test_scores.wer,
              "num_params": int(sum(x.size for x in jax.tree.leaves(params)))},
      "test_wer_by_group": group_summaries,
      "geo_tree": tree.to_dict(), "geo_demographic": partition.to_dict(), "automatic": kmeans.to_dict(),
      "speakers": {"train": int(len(np.unique(data.train.metadata["speaker_id"]))),
                   "dev": int(len(dev_table.speaker_ids)), "test": int(len(test_table.speaker_ids))},
      "speaker_model": {"steps": spk.steps, "train_seconds": spk.train_seconds},
      "figures": figures,
      "wall_seconds_this_run": time.perf_counter() - wall_start,
      "config": config.to_dict(),
  }
  io_lib.write_results(workdir, results)
  print(report.cohort_table(results))
  print(f"results: {os.path.join(workdir, 'results.json')}")
  return results
