"""End-to-end: the real fedlearn entrypoint on the tiny config writes every output; a rerun
skips finished sub-runs and resumes unfinished ones from their checkpoints to the same result.

The runs use the real single CPU device, with a compilation cache shared with the rerun, and
XLA's CPU backend at optimisation level 0 (what some machines effectively run: the DP-FedAvg
sub-run turned NaN there when the intent model's max pooling divided by zero in its gradient).
Resuming to the same result needs reproducible DP noise, so these runs ask for it
(`dp.insecure_reproducible_noise`) and check that results say so; the secret default is
tested in tests/projects/fedlearn/test_core.py.
"""

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

pytestmark = pytest.mark.slow  # end-to-end: `make test-fast` skips it

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TINY = os.path.join(REPO, "projects", "fedlearn", "configs", "dp.py") + ":tiny"
FED_RUNS = ("fedavg_activity", "dp_fedavg")
ALL_RUNS = ("centralized",) + FED_RUNS
_ROOT = tempfile.mkdtemp(prefix="fedlearn_main_")
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


def _env():
  # One compilation cache for this file's entrypoint runs, every program stored (not only slow ones).
  env = dict(os.environ, TSML_JAX_CACHE=os.path.join(_ROOT, "jax_cache"), TSML_JAX_CACHE_MIN_SECONDS="0",
             PYTHONUNBUFFERED="1")
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"  # one real CPU device, fast compiles
  return env


def _command(workdir, *overrides):
  return [sys.executable, "-m", "projects.fedlearn.main", f"--config={TINY}", f"--workdir={workdir}",
          "--config.progress=False", "--config.dp.insecure_reproducible_noise=True", *overrides]


def _start_first_run():
  workdir = os.path.join(_ROOT, "first")
  proc = subprocess.Popen(_command(workdir), cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  atexit.register(lambda: proc.poll() is None and proc.kill())
  return workdir, proc


@pytest.fixture(scope="module")
def first_run():
  workdir, proc = _start_first_run()
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  return workdir, stdout


def _results(workdir):
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    return json.load(f)


def test_smoke_entrypoint_writes_every_output(first_run):
  workdir, stdout = first_run
  assert "acc %" in stdout and all(name in stdout for name in ALL_RUNS)
  results = _results(workdir)
  runs = {r["name"]: r for r in results["runs"]}
  assert tuple(runs) == ALL_RUNS
  for r in runs.values():
    assert 0.0 <= r["test_accuracy"] <= 1.0 and r["test_loss"] > 0 and r["wall_seconds"] > 0
  assert results["config"]["fl"]["rounds"] == 4 and results["table"] in stdout
  privacy = runs["dp_fedavg"]["privacy"]
  assert privacy["unit"] == "device" and privacy["sampling"] == "poisson"
  assert 0 < privacy["epsilon"] <= privacy["target_epsilon"] == 8.0 and privacy["rounds"] == 4
  assert privacy["noise_multiplier"] > 0 and privacy["clip_norm_final"] > 0
  assert privacy["randomness"] == "reproducible-insecure" and privacy["guarantee"] == "formal"
  assert privacy["accountant"] == "rdp" and privacy["delta"] == 1e-5
  for name in ("test_accuracy", "train_loss", "epsilon"):
    assert os.path.getsize(os.path.join(workdir, "figures", f"{name}.png")) > 5_000
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8")]
  assert sorted(r["step"] for r in rows if "fedavg_activity/train/loss" in r) == [1, 2, 3, 4]
  # A DP run logs only private quantities: no exact training loss, participant count or
  # clipped fraction of the sampled devices.
  dp_keys = {k for r in rows for k in r if k.startswith("dp_fedavg/")}
  assert dp_keys == {"dp_fedavg/privacy/epsilon", "dp_fedavg/dp/clip_norm", "dp_fedavg/dp/noisy_unclipped_fraction",
                     "dp_fedavg/test/loss", "dp_fedavg/test/accuracy"}, dp_keys
  for name in FED_RUNS:
    assert sum(f"{name}/test/accuracy" in r for r in rows) == 2  # eval_every = 2
    assert sorted(os.listdir(os.path.join(workdir, name, "checkpoints")))[-1] == "4"
  eps = [r["dp_fedavg/privacy/epsilon"] for r in rows if "dp_fedavg/privacy/epsilon" in r]
  assert len(eps) == 4 and all(a < b for a, b in zip(eps, eps[1:]))
  for name in ALL_RUNS:
    assert os.path.exists(os.path.join(workdir, name, "done.json"))


def test_rerun_skips_finished_and_resumes_unfinished_to_the_same_result(first_run, tmp_path):
  source, _ = first_run
  workdir = str(tmp_path / "resumed")
  shutil.copytree(source, workdir)
  # Make the federated sub-runs look interrupted after round 2: their last checkpoint and
  # their done markers are gone (as after a kill between the round-2 and round-4 saves).
  for name in FED_RUNS:
    os.remove(os.path.join(workdir, name, "done.json"))
    shutil.rmtree(os.path.join(workdir, name, "checkpoints", "4"))
  os.remove(os.path.join(workdir, "results.json"))
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    lines_before = len(f.readlines())
  proc = subprocess.run(_command(workdir), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "[centralized] finished earlier" in proc.stdout
  assert "[fedavg_activity] finished earlier" not in proc.stdout
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    new_rows = [json.loads(line) for line in f.readlines()[lines_before:]]
  # Only rounds 3 and 4 of the two federated runs were trained again.
  assert sorted({r["step"] for r in new_rows}) == [3, 4]
  first = {r["name"]: r for r in _results(source)["runs"]}
  again = {r["name"]: r for r in _results(workdir)["runs"]}
  for name in ALL_RUNS:
    assert again[name]["test_accuracy"] == pytest.approx(first[name]["test_accuracy"], abs=1e-6)
    assert again[name]["test_loss"] == pytest.approx(first[name]["test_loss"], rel=1e-5)
  assert again["dp_fedavg"]["privacy"]["epsilon"] == pytest.approx(first["dp_fedavg"]["privacy"]["epsilon"])
