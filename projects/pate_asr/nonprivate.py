"""Non-private ASR baseline: train on the sensitive (training) speakers, report test WER.

Example:
  >>> results = run(get_config(), "/tmp/workdir")
  >>> results["test_wer"]
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np

from libs.metrics import groups as groups_lib
from libs.models import asr as asr_lib
from libs.speech import evaluate as evaluate_lib
from libs.speech import trainer
from libs.train import io as io_lib
from libs.train import metrics as metrics_lib
from libs.train import plots
from projects.pate_asr import data as data_lib
from projects.pate_asr import validation


def run(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """Trains, evaluates and writes `results.json` and `figures/training_curve.png`.

  Returns the results, or None when the run was stopped by a signal (it resumes from its
  checkpoint when rerun with the same workdir).
  """
  validation.validate(config)
  wall_start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  tokenizer = data_lib.make_tokenizer(config)
  splits = data_lib.load_splits(config, tokenizer)
  model = asr_lib.build_model(config.model, tokenizer.vocab_size)
  result = trainer.train(config, workdir, model, splits.train, splits.dev, tokenizer, desc="nonprivate")
  if result.preempted:
    return None
  decode_fn = evaluate_lib.make_decode_fn(model)
  dev = result.dev or evaluate_lib.evaluate(decode_fn, result.state.params, splits.dev, tokenizer,
                                            batch_size=config.eval.batch_size)
  test = evaluate_lib.evaluate(decode_fn, result.state.params, splits.test, tokenizer,
                               batch_size=config.eval.batch_size)
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  figure = plots.plot_training_curves(rows, os.path.join(workdir, "figures", "training_curve.png"),
                                      title=f"{config.model.name} ({config.model.encoder}) on "
                                            f"{config.data.corpus}/{config.data.synthetic_config}")
  results = {
      "test_wer": test.wer,
      "dev_wer": dev.wer,
      "train_seconds": result.train_seconds,
      "wall_seconds_this_run": time.perf_counter() - wall_start,
      "steps": result.steps,
      "num_params": int(sum(x.size for x in jax.tree.leaves(result.state.params))),
      "devices": [str(d) for d in jax.devices()],
      "num_train_utterances": len(splits.train),
      "config": config.to_dict(),
      "examples": [{"reference": r, "hypothesis": h}
                   for r, h in list(zip(splits.test.transcripts, test.hypotheses))[:10]],
  }
  meta = splits.test.metadata
  for key in ("accent", "gender"):
    if key in meta:
      results[f"test_wer_by_{key}"] = test.group_wer(meta[key])
      if "speaker_id" in meta and len(set(meta[key].tolist())) > 1:
        # Worst-group gap with 95% intervals from a speaker-level bootstrap (libs.metrics.groups).
        gm = test.group_metrics(meta[key], meta["speaker_id"])
        ci = groups_lib.bootstrap(gm, rng=np.random.default_rng(0), num_resamples=1000)
        gap = gm.gap()
        results[f"test_wer_gap_by_{key}"] = {
            "worst_group": str(gap.worst_group), "relative_gap_vs_rest": gap.relative,
            "relative_gap_ci95": [ci.gap_relative.low, ci.gap_relative.high],
            "absolute_gap": gap.absolute, "absolute_gap_ci95": [ci.gap_absolute.low, ci.gap_absolute.high],
            "speaker_share": gap.cluster_share, "bootstrap": "1000 speaker resamples within groups"}
  io_lib.write_results(workdir, results, sort_keys=True)
  print(f"\nnon-private {config.model.name}: dev WER {100 * dev.wer:.2f}%  test WER {100 * test.wer:.2f}%"
        f"  ({result.steps} steps, {results['train_seconds']:.0f} s training)")
  if "test_wer_by_accent" in results:
    print("test WER by accent: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in results["test_wer_by_accent"].items()))
  print(f"results: {os.path.join(workdir, 'results.json')}\nfigure: {figure}")
  return results
