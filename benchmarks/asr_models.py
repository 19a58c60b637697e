"""ASR encoders side by side: WER (greedy and beam), speed and compute, on the embedded corpora.

  python benchmarks/asr_models.py [--corpora digits sentences] [--steps 800]
      [--variants lstm ulstm conformer convrnnt transformer amortized] [--workdir workdirs/asr_models]

Trains (or, when its workdir already holds the finished checkpoint, restores) one non-private
transducer per corpus and encoder variant with `projects/pate_asr/configs/nonprivate.py:default`
and `--config.model.encoder=<kind>`, the same steps for all, then on the corpus's test split:
  * WER with greedy search (up to 4 symbols per frame, the model's default), with greedy search at
    one symbol per frame, and with modified beam search (beam 4, `libs.speech.beam_search`), which
    emits at most one symbol per frame: compare it with the one-symbol greedy column;
  * training utterances/s (median of the trainer's logged rates: compiles and evaluation excluded);
  * inference real-time factor: greedy decoding's seconds (compiled; median of 3 passes) per second
    of audio, on this machine;
  * encoder GFLOPs per second of audio: the FLOPs of the encoder's matrix products on an utterance
    of the split's mean length (`libs.speech.compute.encoder_flops`, counted on the jaxpr, scans
    included; elementwise work left out); for the amortized encoder, minus the FLOPs of the
    sub-blocks its arbitrators skipped on the test split (`gated_usage`), which the jitted program
    still computes and masks: a FLOP saving, not a CPU-time one (its RTF shows it).
Variants: lstm (BiLSTM, the baseline), ulstm (unidirectional LSTM: the streaming baseline),
conformer, convrnnt (streaming), transformer (the amortized architecture with
`compute_penalty=0`: the same network without the pressure to skip) and amortized
(`compute_penalty` from the config; `amortized@0.003` sets another).
About 5-8 minutes per variant on `digits` on a 2-core CPU (800 steps), more on `sentences`.

Last lines, `name = value`, for each corpus and variant: <corpus>_<variant>_{wer, greedy1_wer,
beam4_wer, params, train_utt_s, rtf, gflops_per_s}, <corpus>_<variant>_wer_vs_lstm (WER ratio)
with its 95% paired-bootstrap interval over test utterances (_ci_low, _ci_high) and, for the
amortized variants, <corpus>_<variant>_gated_share (gated FLOPs that ran) and
_compute_vs_transformer.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import jax
import numpy as np

from libs.data import pipeline
from libs.models import asr as asr_lib
from libs.speech import beam_search
from libs.speech import compute
from libs.speech import evaluate as evaluate_lib
from libs.speech import features as features_lib
from libs.speech import trainer
from libs.train import compilation_cache
from libs.train import metrics as metrics_lib
from projects.pate_asr import data as data_lib
from projects.pate_asr import validation
from projects.pate_asr.configs import nonprivate

KINDS = {"lstm": "lstm", "ulstm": "lstm", "conformer": "conformer", "convrnnt": "convrnnt",
         "transformer": "amortized", "amortized": "amortized"}


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def variant_config(corpus: str, variant: str, steps: int):
  """The non-private default config with this corpus, encoder variant and number of steps."""
  name, _, penalty = variant.partition("@")
  if name not in KINDS:
    _fail(f"--variants: {variant!r} is not one of {sorted(KINDS)} (amortized@<penalty> sets its penalty)")
  config = nonprivate.get_config("default")
  config.data.synthetic_config = corpus
  config.model.encoder = KINDS[name]
  if name == "transformer":
    config.model.compute_penalty = 0.0
  if name == "ulstm":
    config.model.bidirectional = False
  if penalty:
    try:
      config.model.compute_penalty = float(penalty)
    except ValueError:
      _fail(f"--variants: {variant!r}: the penalty after '@' must be a number")
  config.train.num_steps = steps
  config.train.eval_every = steps
  config.progress = sys.stderr.isatty()
  validation.validate(config)
  return config


def streaming(config) -> str:
  kind = config.model.encoder
  if kind == "lstm":
    return "no (bidirectional)" if config.model.bidirectional else "yes"
  if kind == "conformer":
    return "no (full attention)"
  if kind == "amortized":
    return f"yes ({40 * config.model.chunk} ms chunks)"
  return "yes"


def _timed_pass(decode, params, batches) -> float:
  start = time.perf_counter()
  for batch in batches:
    jax.block_until_ready(decode(params, batch["features"], batch["feature_lengths"]))
  return time.perf_counter() - start


def measure(config, workdir: str) -> dict:
  tokenizer = data_lib.make_tokenizer(config)
  splits = data_lib.load_splits(config, tokenizer)
  model = asr_lib.build_model(config.model, tokenizer.vocab_size)
  result = trainer.train(config, workdir, model, splits.train, None, tokenizer, desc=os.path.basename(workdir))
  if result.preempted:
    _fail(f"stopped by a signal while training {workdir}; rerun the same command to resume")
  params = result.state.params
  test, batch_size = splits.test, config.eval.batch_size
  greedy = evaluate_lib.make_decode_fn(model)
  scored = evaluate_lib.evaluate(greedy, params, test, tokenizer, batch_size=batch_size)
  wer = scored.wer
  one = type(model)(dataclasses.replace(model.config, max_symbols_per_frame=1))
  greedy1_wer = evaluate_lib.evaluate(evaluate_lib.make_decode_fn(one), params, test, tokenizer,
                                      batch_size=batch_size).wer
  beam_wer = evaluate_lib.evaluate(beam_search.make_decode_fn(model, beam=4), params, test, tokenizer,
                                   batch_size=batch_size).wer
  buckets = pipeline.frame_buckets(test.feature_lengths, 3)
  batches = list(pipeline.eval_batches(test, batch_size, buckets))
  hop = features_lib.FeatureConfig().hop_ms / 1000
  audio_seconds = float(test.feature_lengths.sum()) * hop
  rtf = statistics.median(_timed_pass(greedy, params, batches) for _ in range(3)) / audio_seconds
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  rates = [r["train/utterances_per_s"] for r in rows if "train/utterances_per_s" in r]
  mean_frames = int(round(float(test.feature_lengths.mean())))
  dense = compute.encoder_flops(model, params, mean_frames)
  usage = compute.gated_usage(model, params, test, batch_size=batch_size)
  spent = dense
  if usage is not None:
    spent = dense - (1 - usage["executed_share"]) * compute.gated_dense_flops(model, params, mean_frames)
  seconds_per_utterance = mean_frames * hop
  return {"wer": wer, "greedy1_wer": greedy1_wer, "beam4_wer": beam_wer,
          "params": int(sum(x.size for x in jax.tree.leaves(params))),
          "train_utt_s": statistics.median(rates) if rates else float("nan"), "rtf": rtf,
          "gflops_per_s": spent / seconds_per_utterance / 1e9,
          "dense_gflops_per_s": dense / seconds_per_utterance / 1e9,
          "gated_share": None if usage is None else usage["executed_share"],
          "subblock_share": None if usage is None else usage["subblock_share"],
          "streaming": streaming(config), "train_seconds": result.train_seconds, "steps": result.steps,
          "test_utterances": len(test), "test_audio_s": audio_seconds,
          "errors": np.array([e.errors for e in scored.errors]),
          "words": np.array([e.reference_words for e in scored.errors])}


def wer_ratio_ci(r: dict, base: dict, resamples: int = 2000) -> tuple[float, float]:
  """95% paired bootstrap interval (test utterances resampled) of WER(r) / WER(base): how far the
  ratio of two small error counts can be trusted."""
  rng = np.random.default_rng(0)
  idx = rng.integers(0, len(r["errors"]), (resamples, len(r["errors"])))
  num, den = r["errors"][idx].sum(1), base["errors"][idx].sum(1)
  ratios = num / np.maximum(den, 1)  # The words cancel: the same utterances for both.
  return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


def print_table(corpus: str, steps: int, batch_size: int, results: dict) -> None:
  r = next(iter(results.values()))
  print(f"\n{corpus}: {steps} steps of {batch_size} utterances each; test split {r['test_utterances']} utterances, "
        f"{r['test_audio_s']:.0f} s of audio; {jax.devices()[0].platform} backend")
  print(f"  {'encoder':<16s} {'params':>7s} {'streaming':<20s} {'WER':>7s} {'vs lstm [95% CI]':<19s} "
        f"{'greedy1':>7s} {'beam4':>7s} {'utt/s':>6s} {'RTF':>7s} {'GFLOPs/s':>9s} {'gated run':>9s}")
  for variant, r in results.items():
    gated = "" if r["gated_share"] is None else f"{100 * r['gated_share']:.1f}%"
    ratio = ""
    if "lstm" in results and results["lstm"]["wer"] > 0:
      low, high = wer_ratio_ci(r, results["lstm"])
      ratio = f"{r['wer'] / results['lstm']['wer']:.2f} [{low:.2f}, {high:.2f}]"
    print(f"  {variant:<16s} {r['params'] / 1e6:6.2f}M {r['streaming']:<20s} {100 * r['wer']:6.2f}% {ratio:<19s} "
          f"{100 * r['greedy1_wer']:6.2f}% {100 * r['beam4_wer']:6.2f}% {r['train_utt_s']:6.1f} {r['rtf']:7.4f} "
          f"{r['gflops_per_s']:9.3f} {gated:>9s}")


def headline(corpus: str, results: dict) -> list[tuple[str, float]]:
  out = []
  for variant, r in results.items():
    key = f"{corpus}_{variant.replace('@', '_p')}"
    out += [(f"{key}_{name}", r[name])
            for name in ("wer", "greedy1_wer", "beam4_wer", "params", "train_utt_s", "rtf", "gflops_per_s")]
    if "lstm" in results and results["lstm"]["wer"] > 0:
      low, high = wer_ratio_ci(r, results["lstm"])
      out += [(f"{key}_wer_vs_lstm", r["wer"] / results["lstm"]["wer"]), (f"{key}_wer_vs_lstm_ci_low", low),
              (f"{key}_wer_vs_lstm_ci_high", high)]
    if r["gated_share"] is not None:
      out.append((f"{key}_gated_share", r["gated_share"]))
      if "transformer" in results and variant != "transformer":
        out.append((f"{key}_compute_vs_transformer", r["gflops_per_s"] / results["transformer"]["gflops_per_s"]))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--corpora", nargs="+", default=["digits", "sentences"])
  parser.add_argument("--variants", nargs="+",
                      default=["lstm", "ulstm", "conformer", "convrnnt", "transformer", "amortized"])
  parser.add_argument("--steps", type=int, default=800, help="training steps of 32 utterances, every variant")
  parser.add_argument("--workdir", default="workdirs/asr_models", help="<workdir>/<corpus>/<variant>: checkpoints")
  parser.add_argument("--batch-size", type=int, default=0, help="0: the config's (32)")
  args = parser.parse_args()
  if args.steps < 1:
    _fail(f"--steps must be >= 1, got {args.steps}")
  compilation_cache.enable()
  lines = []
  for corpus in args.corpora:
    results = {}
    for variant in args.variants:
      config = variant_config(corpus, variant, args.steps)
      if args.batch_size:
        config.train.batch_size = args.batch_size
      workdir = os.path.join(args.workdir, corpus, variant)
      print(f"== {corpus} / {variant}: {workdir}", flush=True)
      results[variant] = r = measure(config, workdir)
      print(f"   WER {100 * r['wer']:.2f}% (1 symbol/frame: {100 * r['greedy1_wer']:.2f}%, beam 4: "
            f"{100 * r['beam4_wer']:.2f}%), {r['params'] / 1e6:.2f} M params, {r['train_utt_s']:.1f} utt/s training, "
            f"RTF {r['rtf']:.4f}, {r['gflops_per_s']:.3f} GFLOPs/s of audio"
            + ("" if r["gated_share"] is None else f" (gated FLOPs run: {100 * r['gated_share']:.1f}%)"), flush=True)
    print_table(corpus, args.steps, config.train.batch_size, results)
    lines += headline(corpus, results)
  print()
  for name, value in lines:
    print(f"{name} = {value:.4g}" if isinstance(value, float) else f"{name} = {value}")


if __name__ == "__main__":
  main()
