"""Transducer decoding: greedy search against modified beam search, WER and time, one run.

  python benchmarks/beam_search.py [--workdir workdirs/pate_quick] [--stages public matched/nonprivate [STAGE@i]]
                                   [--beams 4 8] [--merge logadd] [--runs 3] [--max-utterances 0]

Loads trained transducers of a PATE sweep workdir (`<workdir>/<stage>/params.msgpack`, built from
`<workdir>/results.json`'s config) and its in-domain test split (`config.data.synthetic_config`,
generated on first use under the data directory; TSML_DATA_DIR overrides it), then decodes the split
with greedy search (one symbol per frame, and the model's default `max_symbols_per_frame`) and with
`libs.speech.beam_search` at each beam. Each decoder is compiled and run once untimed, then the
decoders are timed round-robin (a load change hits all alike; median of `--runs` passes). The time
is the wall time of the jitted decoder's calls, outputs copied to the host included (features
already in host memory, text decoding excluded), per utterance and as a real-time factor (decoding
seconds per second of audio).

Last lines, for the first stage (then prefixed by the other stages' names, e.g. `nonprivate_`):
greedy1_wer, greedy_wer, beam<K>_wer, beam<K>_time_ratio (beam time / default greedy time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import jax
import ml_collections
from flax import traverse_util

from libs.data import pipeline
from libs.models import asr as asr_lib
from libs.models import transducer as transducer_lib
from libs.speech import beam_search
from libs.speech import evaluate as evaluate_lib
from libs.speech import features as features_lib
from libs.speech import wer as wer_lib
from libs.train import io as io_lib
from projects.pate_asr import data as data_lib

PARAMS_FILE = "params.msgpack"  # What `projects.pate_asr.sweep.save_params` writes in a stage's directory.


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    _fail(f"{path} does not exist: run the PATE sweep first (python -m projects.pate_asr.main "
          f"--config=projects/pate_asr/configs/sweep.py:quick --workdir={workdir})")
  with open(path, encoding="utf-8") as f:
    results = json.load(f)
  if "config" not in results:
    _fail(f"{path} has no 'config' field")
  return ml_collections.ConfigDict(results["config"])


def load_test_split(config, tokenizer, max_utterances: int) -> pipeline.SpeechSplit:
  d = config.data
  if d.corpus != "synthetic":
    _fail(f"config.data.corpus={d.corpus!r}: this benchmark reads the embedded synthetic corpus only")
  data_dir = d.data_dir or pipeline.default_data_dir()
  if not os.path.isdir(os.path.join(data_dir, "synthetic_speech", d.synthetic_config)):
    print(f"corpus {d.synthetic_config!r} is not in {data_dir}: generating it (a few minutes, once)", flush=True)
  builder = data_lib.builder_for(d)
  if d.test_split not in builder.info.splits:
    _fail(f"config.data.test_split={d.test_split!r} is not a split of {builder.name}")
  return pipeline.load_split(builder, d.test_split, tokenizer, max_examples=max_utterances or None)


def decoders(model: transducer_lib.Transducer, beams, merge: str) -> dict:
  """name -> jitted (params, features, lengths) -> (ids, counts)."""
  one = transducer_lib.Transducer(dataclasses.replace(model.config, max_symbols_per_frame=1))
  out = {"greedy1": evaluate_lib.make_decode_fn(one), "greedy": evaluate_lib.make_decode_fn(model)}
  for k in beams:
    out[f"beam{k}"] = beam_search.make_decode_fn(model, beam=k, merge=merge)
  return out


def _parse_stage(text: str) -> tuple[str, int | None]:
  stage, _, member = text.partition("@")
  if member and not member.isdigit():
    _fail(f"--stages {text!r}: the member after '@' must be an index, e.g. {stage}@0")
  return stage, int(member) if member else None


def load_stage_params(model, path: str, member: int | None):
  """The parameters in `path`, checked against the model's shapes; member `member` of a stacked
  file (students, DP-SGD models: a leading axis of members)."""
  expected = traverse_util.flatten_dict(jax.eval_shape(asr_lib.init_fn(model), jax.random.key(0)))
  params = io_lib.load_pytree(path)
  flat = traverse_util.flatten_dict(params)
  if set(flat) != set(expected):
    _fail(f"{path} does not hold parameters of the model that results.json's config builds")
  if all(flat[k].shape == expected[k].shape for k in expected):
    if member is not None:
      _fail(f"{path} holds one model, not stacked members: drop the '@{member}'")
    return params
  members = {flat[k].shape[0] for k in expected if flat[k].ndim == len(expected[k].shape) + 1}
  if not all(flat[k].shape[1:] == expected[k].shape for k in expected) or len(members) != 1:
    _fail(f"{path}: parameter shapes differ from the model that results.json's config builds")
  n = members.pop()
  if member is None or not 0 <= member < n:
    _fail(f"{path} holds {n} stacked members: pass its stage as STAGE@i with 0 <= i < {n}")
  return jax.tree.map(lambda x: x[member], params)


def _pass(decode, params, batches):
  """(seconds spent in the decoder, [(index, ids, counts)]) over every batch."""
  seconds, outputs = 0.0, []
  for batch in batches:
    start = time.perf_counter()
    ids, counts = jax.device_get(decode(params, batch["features"], batch["feature_lengths"]))
    seconds += time.perf_counter() - start
    outputs.append((batch["index"], ids, counts))
  return seconds, outputs


def _hypotheses(outputs, tokenizer, num: int) -> list[str]:
  hyps = [""] * num
  for index, ids, counts in outputs:
    for row, i in enumerate(index):
      if i >= 0:
        hyps[i] = tokenizer.decode(ids[row, : counts[row]]).strip()
  return hyps


def measure(decode_fns: dict, params, split: pipeline.SpeechSplit, tokenizer, batch_size: int, runs: int) -> dict:
  """name -> {"wer", "seconds"} for one set of parameters."""
  buckets = pipeline.frame_buckets(split.feature_lengths, 3)
  batches = list(pipeline.eval_batches(split, batch_size, buckets))
  results = {}
  for name, decode in decode_fns.items():  # Compile and warm up; the WER of this pass.
    _, outputs = _pass(decode, params, batches)
    hyps = _hypotheses(outputs, tokenizer, len(split))
    results[name] = {"wer": wer_lib.word_error_rate(split.transcripts, hyps), "times": []}
  for _ in range(runs):
    for name, decode in decode_fns.items():
      results[name]["times"].append(_pass(decode, params, batches)[0])
  return {name: {"wer": r["wer"], "seconds": statistics.median(r["times"])} for name, r in results.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="workdirs/pate_quick", help="a PATE sweep's workdir")
  parser.add_argument("--stages", nargs="+", default=["public", "matched/nonprivate"],
                      help="stage directories under the workdir holding params.msgpack; STAGE@i: member i "
                           "of a stacked one (e.g. matched/students@0)")
  parser.add_argument("--beams", nargs="+", type=int, default=[4, 8])
  parser.add_argument("--merge", default="logadd", choices=beam_search.MERGES)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--runs", type=int, default=3, help="timed passes per decoder (median)")
  parser.add_argument("--max-utterances", type=int, default=0, help="0: the whole test split")
  args = parser.parse_args()
  if any(k < 1 for k in args.beams):
    _fail(f"--beams must be positive, got {args.beams}")

  if args.workdir == parser.get_default("workdir") and not os.path.exists(os.path.join(args.workdir, "results.json")):
    # `make bench` on a fresh clone: the models this compares come from `make run`.
    print(f"skipped: {args.workdir}/results.json does not exist yet (run `make run` first, then this script)")
    return
  config = load_config(args.workdir)
  if config.model.name != "transducer":
    _fail(f"config.model.name={config.model.name!r} in {args.workdir}/results.json: beam search needs a transducer")
  stages = [_parse_stage(stage) for stage in args.stages]
  params_paths = [os.path.join(args.workdir, stage, PARAMS_FILE) for stage, _ in stages]
  missing = [p for p in params_paths if not os.path.exists(p)]
  if missing:
    _fail(f"missing trained parameters: {', '.join(missing)} (rerun the sweep on {args.workdir}, or pass "
          "--stages with the stages that have them)")
  tokenizer = data_lib.make_tokenizer(config)
  model = asr_lib.build_model(config.model, tokenizer.vocab_size)
  all_params = [load_stage_params(model, path, member) for (_, member), path in zip(stages, params_paths)]
  split = load_test_split(config, tokenizer, args.max_utterances)
  feature_cfg = features_lib.FeatureConfig()
  audio_seconds = float(split.feature_lengths.sum()) * feature_cfg.hop_ms / 1000
  fns = decoders(model, args.beams, args.merge)
  print(f"{args.workdir}: {config.model.encoder} transducer ({config.model.get('units', 'chars')} units, "
        f"vocabulary {tokenizer.vocab_size}); {config.data.synthetic_config}/{config.data.test_split}: "
        f"{len(split)} utterances, {audio_seconds:.0f} s of audio; batch {args.batch_size}, "
        f"beam merge {args.merge!r}; {jax.devices()[0].platform} backend")

  headline = []
  for i, ((stage, member), path, params) in enumerate(zip(stages, params_paths, all_params)):
    params = jax.device_put(params)
    res = measure(fns, params, split, tokenizer, args.batch_size, args.runs)
    base = res["greedy"]["seconds"]
    print(f"\n{args.stages[i]} ({path})")
    print(f"  {'decoder':<9s} {'WER':>7s} {'ms/utt':>7s} {'RTF':>8s} {'time/greedy':>11s}")
    for name, r in res.items():
      print(f"  {name:<9s} {100 * r['wer']:6.2f}% {1000 * r['seconds'] / len(split):7.3f} "
            f"{r['seconds'] / audio_seconds:8.5f} {r['seconds'] / base:11.2f}")
    prefix = "" if i == 0 else os.path.basename(stage.rstrip("/")) + ("" if member is None else str(member)) + "_"
    headline += [(f"{prefix}{name}_wer", f"{r['wer']:.4f}") for name, r in res.items()]
    headline += [(f"{prefix}beam{k}_time_ratio", f"{res[f'beam{k}']['seconds'] / base:.2f}") for k in args.beams]
  print()
  for name, value in headline:
    print(f"{name} = {value}")


if __name__ == "__main__":
  main()
