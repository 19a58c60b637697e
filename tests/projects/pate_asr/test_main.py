"""End-to-end: the real entrypoint on the tiny config (smoke test), SIGTERM + resume gives
the same parameters as an uninterrupted run, and bad configs fail before any work."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

pytestmark = pytest.mark.slow  # end-to-end: `make test-fast` skips it

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TINY = os.path.join(REPO, "projects", "pate_asr", "configs", "nonprivate.py") + ":tiny"


def _env(data_dir, cache):
  """`cache`: the shared compilation cache's environment entries, or "off"."""
  env = dict(os.environ, TSML_DATA_DIR=data_dir, PYTHONUNBUFFERED="1")
  env.update(cache if isinstance(cache, dict) else {"TSML_JAX_CACHE": cache})
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"  # one real CPU device, fast compiles
  return env


def _command(workdir, *overrides):
  return [sys.executable, "-m", "projects.pate_asr.main", f"--config={TINY}", f"--workdir={workdir}",
          "--config.progress=False", *overrides]


@pytest.fixture(scope="module")
def jax_cache(shared_jax_cache):
  return shared_jax_cache


@pytest.fixture(scope="module")
def uninterrupted(tiny_corpus_dir, jax_cache, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  proc = subprocess.run(_command(workdir, "--config.train.num_steps=60"), cwd=REPO,
                        env=_env(tiny_corpus_dir, jax_cache), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


def test_smoke_entrypoint_writes_every_output(uninterrupted):
  workdir, proc = uninterrupted
  assert "test WER" in proc.stdout
  results = json.load(open(os.path.join(workdir, "results.json")))
  for key in ("test_wer", "dev_wer", "train_seconds", "config", "steps", "test_wer_by_accent"):
    assert key in results
  assert results["steps"] == 60 and 0.0 <= results["test_wer"] <= 2.0 and results["train_seconds"] > 0
  assert results["config"]["model"]["name"] == "transducer"
  by_accent = results["test_wer_by_accent"]
  if len(by_accent) > 1:  # worst-group gap with a speaker-bootstrap interval around it
    gap = results["test_wer_gap_by_accent"]
    assert by_accent[gap["worst_group"]] == max(by_accent.values())
    low, high = gap["absolute_gap_ci95"]
    assert low <= gap["absolute_gap"] <= high and 0 < gap["speaker_share"] < 1
  assert os.path.getsize(os.path.join(workdir, "figures", "training_curve.png")) > 10_000
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert any("dev/wer" in r for r in rows) and any("train/loss" in r for r in rows)
  assert ocp.CheckpointManager(os.path.join(workdir, "checkpoints")).latest_step() == 60


def _final_params(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.StandardRestore())
  return step, restored["state"]["params"]  # train_loop saves {"state", "train_seconds"}.


def test_sigterm_then_resume_matches_uninterrupted(uninterrupted, tiny_corpus_dir, jax_cache, tmp_path):
  reference_dir, _ = uninterrupted
  workdir = str(tmp_path / "interrupted")
  env = _env(tiny_corpus_dir, jax_cache)
  args = _command(workdir, "--config.train.num_steps=60", "--config.train.log_every=1")
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics_path) and sum(1 for _ in open(metrics_path)) >= 12:
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the run finished before it could be interrupted"
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 3, err[-3000:]
  assert "resume" in err
  stopped_at = ocp.CheckpointManager(os.path.join(workdir, "checkpoints")).latest_step()
  # Nothing is lost: the step that was running when the signal came is the one saved.
  announced = int(re.search(r"checkpointed step (\d+)", out + err).group(1))
  assert stopped_at == announced and 12 <= stopped_at < 60
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  resumed = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  step_a, params_a = _final_params(reference_dir)
  step_b, params_b = _final_params(workdir)
  assert step_a == step_b == 60
  leaves_a, leaves_b = jax.tree.leaves(params_a), jax.tree.leaves(params_b)
  assert len(leaves_a) == len(leaves_b) > 0
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_invalid_config_fails_fast_naming_the_field(tmp_path):
  proc = subprocess.run(_command(str(tmp_path / "w"), "--config.train.learning_rate=-0.1"), cwd=REPO,
                        env=_env(str(tmp_path / "no_data"), "off"), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert "config.train.learning_rate" in proc.stderr
  # Rejected before generating any data (the property; how long that takes is no test on a shared machine).
  assert not os.path.exists(tmp_path / "no_data")


@pytest.mark.parametrize("key, value, field", [
    ("model.name", "lstm_lm", "config.model.name"),
    ("train.batch_size", 0, "config.train.batch_size"),
])
def test_invalid_config_exit_code_and_message_in_process(key, value, field, tmp_path, capsys):
  # The same path as the entrypoint after flag parsing (`app.run_config`), without a new process.
  from libs.train import app  # pylint: disable=import-outside-toplevel
  from projects.pate_asr import main  # pylint: disable=import-outside-toplevel
  from projects.pate_asr.configs import nonprivate  # pylint: disable=import-outside-toplevel
  config = nonprivate.get_config("tiny")
  config.data.data_dir = str(tmp_path / "no_data")
  section, name = key.split(".")
  config[section][name] = value
  assert app.run_config(main.RUNNERS, config, str(tmp_path / "w")) == app.EXIT_CODES["bad_config"]
  assert field in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "no_data")
