"""Model inversion on the PATE-ASR models: the sweep's saved parameters (round trip, backfill from a
finished stage's checkpoint), the choice of models from the sweep's records, and a smoke test of
the real entrypoint on the tiny config over a tiny sweep workdir made here (untrained models)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from libs.models import asr as asr_lib
from libs.train import checkpoint as ckpt_lib
from libs.train import io as io_lib
from libs.train.state import TrainState
from projects.pate_asr import data as data_lib
from projects.pate_asr import inversion
from projects.pate_asr import sweep
from projects.pate_asr.configs import inversion as inversion_configs
from projects.pate_asr.configs import sweep as sweep_configs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CONFIG = os.path.join(REPO, "projects", "pate_asr", "configs", "inversion.py") + ":tiny"


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"dense": {"kernel": rng.normal(size=(3, 2)).astype(np.float32), "bias": np.zeros(2, np.float32)}}


def test_params_round_trip_and_missing_file_names_it(tmp_path):
  stage = str(tmp_path / "stage")
  sweep.save_params(stage, _params())
  loaded = sweep.load_params(stage)
  jax.tree.map(np.testing.assert_array_equal, loaded, _params())
  with pytest.raises(FileNotFoundError, match="other/params.msgpack"):
    sweep.load_params(str(tmp_path / "other"))


def test_a_finished_stage_without_params_gets_them_from_its_final_checkpoint(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  stage = "nonprivate"  # Relative, as a --workdir may be.
  ckpt = ckpt_lib.Checkpointer(os.path.join(stage, "checkpoints"), save_every=1)
  state = TrainState.create(_params(1), optax.adam(1e-3)).replace(step=np.int32(5))
  ckpt.maybe_save({"state": state, "train_seconds": np.float64(1.0)}, step=5, force=True)
  ckpt.close()
  sweep._backfill_params(stage, os.path.join(stage, "checkpoints"), 5)  # pylint: disable=protected-access
  assert not os.path.exists(sweep.params_path(stage))  # Not finished (no done.json): nothing.
  io_lib.write_done(stage, {"test_wer": 0.5})
  sweep._backfill_params(stage, os.path.join(stage, "checkpoints"), 7)  # pylint: disable=protected-access
  assert not os.path.exists(sweep.params_path(stage))  # No checkpoint at the final step: nothing.
  sweep._backfill_params(stage, os.path.join(stage, "checkpoints"), 5)  # pylint: disable=protected-access
  jax.tree.map(np.testing.assert_array_equal, sweep.load_params(stage), _params(1))


def _record(method, target, wer, kind="formal"):
  return {"method": method, "scenario": "matched", "unit": "speaker", "target_epsilon": target,
          "epsilon": 0.9 * target, "epsilon_kind": kind, "epsilon_data_independent": target, "delta": 1e-5,
          "accountant": "rdp", "wer": wer}


def fake_sweep(workdir: str, target: float = 2.0) -> None:
  """A tiny sweep workdir as the sweep leaves it (untrained tiny models, one target epsilon)."""
  config = sweep_configs.get_config("tiny")
  config.pate.target_epsilons, config.pate.query_utterances = (target,), (2,)
  tokenizer = data_lib.make_tokenizer(config)
  model = asr_lib.build_model(config.model, tokenizer.vocab_size)
  init = jax.jit(asr_lib.init_fn(model))
  one = lambda k: jax.device_get(init(jax.random.key(k)))
  stack = lambda *ps: jax.tree.map(lambda *x: np.stack(x), *ps)
  scenario = os.path.join(workdir, "matched")
  sweep.save_params(os.path.join(workdir, "public"), one(0))
  sweep.save_params(os.path.join(scenario, "nonprivate"), one(1))
  sweep.save_params(os.path.join(scenario, "dpsgd_speaker"), stack(one(2)))
  sweep.save_params(os.path.join(scenario, "students"), stack(one(3), one(4)))
  io_lib.write_done(os.path.join(scenario, "privacy"), [
      {"labels": "gnmax_2", "used": [0, 1], "record": {}}, {"labels": "lnmax_2", "used": [], "record": {}}])
  io_lib.write_done(os.path.join(scenario, "students"), {"index": {"plurality_inf|0,1": 0, "gnmax_2|0,1": 1}})
  records = [_record("pate_gnmax", target, 0.4, "data_dependent_released"), _record("pate_lnmax", target, 0.6),
             _record("dpsgd_speaker", target, 0.5), _record("public_only", 0.0, 0.7),
             {**_record("nonprivate", float("inf"), 0.3, "none"), "delta": 0.0, "accountant": "none"}]
  io_lib.write_results(workdir, {"records": records, "config": config.to_dict()})


def test_select_targets_follows_the_sweeps_bookkeeping(tmp_path):
  workdir = str(tmp_path / "sweep")
  fake_sweep(workdir)
  results = io_lib.read_json(os.path.join(workdir, "results.json"))
  targets = inversion.select_targets(results, workdir, "matched", (2.0,))
  by_name = {t.name: t for t in targets}
  assert list(by_name) == ["public_only", "nonprivate", "dpsgd_speaker_eps2", "pate_gnmax_eps2"]
  assert by_name["pate_gnmax_eps2"].member == 1 and by_name["pate_gnmax_eps2"].stage == "matched/students"
  assert by_name["dpsgd_speaker_eps2"].member == 0
  with pytest.raises(ValueError, match="not a target of the sweep"):
    inversion.select_targets(results, workdir, "matched", (5.0,))
  # The best PATE run released nothing: its student is the public model, as the sweep records.
  results["records"][1]["wer"] = 0.1
  lnmax = inversion.select_targets(results, workdir, "matched", (2.0,))[-1]
  assert lnmax.name == "pate_lnmax_eps2" and lnmax.stage == "public" and lnmax.member is None


def test_validate_names_the_field():
  config = inversion_configs.get_config("default")
  inversion.validate(config)
  config.inversion.start = "the_utterance"
  with pytest.raises(ValueError, match=r"config\.inversion\.start must be one of"):
    inversion.validate(config)


@pytest.mark.slow
def test_smoke_entrypoint_on_a_tiny_sweep(tiny_corpus_dir, tmp_path, shared_jax_cache):
  sweep_dir, workdir = str(tmp_path / "sweep"), str(tmp_path / "inversion")
  fake_sweep(sweep_dir)
  env = dict(os.environ, TSML_DATA_DIR=tiny_corpus_dir, PYTHONUNBUFFERED="1", **shared_jax_cache,
             XLA_FLAGS="--xla_backend_optimization_level=0")
  proc = subprocess.run([sys.executable, "-m", "projects.pate_asr.main", f"--config={CONFIG}",
                         f"--workdir={workdir}", "--config.progress=False",
                         f"--config.inversion.sweep_workdir={sweep_dir}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "MCD" in proc.stdout and "[reference] original utterance" in proc.stdout
  results = json.load(open(os.path.join(workdir, "results.json")))
  rows = results["inversion"]
  assert [r["model"] for r in rows] == ["public_only", "nonprivate", "dpsgd_speaker_eps2", "pate_gnmax_eps2"]
  for r in rows:
    assert {"model", "epsilon", "mel_distortion", "speaker_similarity", "unit", "delta", "accountant",
            "epsilon_kind"} <= set(r)
    assert r["unit"] == "speaker" and np.isfinite(r["mel_distortion"]) and -1 <= r["speaker_similarity"] <= 1
  assert rows[1]["epsilon"] is None and rows[2]["epsilon"] == pytest.approx(1.8)
  assert os.path.getsize(os.path.join(workdir, "figures", "inversion.png")) > 10_000
  assert os.path.exists(os.path.join(workdir, "inversion", "nonprivate", "private", "reconstructions.npy"))
  # A rerun reuses every finished stage (the speaker model, each model's inversion).
  again = subprocess.run(proc.args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-4000:]
  assert json.load(open(os.path.join(workdir, "results.json")))["inversion"] == rows
