"""Multi-host for real: two processes of two CPU devices each, started through the project
entrypoint with `--multihost` (jax.distributed + gloo collectives over localhost), train the
transducer to the same parameters as one process with four devices on the same global
batches; only process 0 writes the workdir's files."""

import pytest
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

pytestmark = pytest.mark.slow  # end-to-end: `make test-fast` skips it

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "projects", "pate_asr", "configs", "nonprivate.py") + ":tiny"
STEPS = 3
TIMEOUT_S = 240  # Per launch; the whole test takes ~1-2 min on 2 busy CPU cores.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(data_dir: str, num_devices: int) -> dict:
  env = dict(os.environ, TSML_DATA_DIR=data_dir, TSML_JAX_CACHE="off", PYTHONUNBUFFERED="1")
  env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={num_devices} "
                      "--xla_backend_optimization_level=0")
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(name, None)  # The flags alone must be enough.
  return env


def _command(workdir: str, *extra: str) -> list[str]:
  # Batch 8 over 4 devices; few eval utterances, since evaluation is not what is tested.
  return [sys.executable, "-m", "projects.pate_asr.main", f"--config={TINY}", f"--workdir={workdir}",
          "--config.progress=False", f"--config.train.num_steps={STEPS}", "--config.train.log_every=1",
          "--config.train.eval_every=1000", "--config.data.max_eval_examples=8", *extra]


def _start(name, args, env, log_dir):
  log = open(os.path.join(log_dir, f"{name}.log"), "w+", encoding="utf-8")  # pylint: disable=consider-using-with
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
  return name, proc, log


def _wait_all(launched, timeout_s):
  """Waits for every process; on a failure or timeout kills the rest and fails with their logs."""
  deadline = time.time() + timeout_s
  failed = None
  while time.time() < deadline:
    codes = {name: proc.poll() for name, proc, _ in launched}
    failed = next((n for n, c in codes.items() if c not in (None, 0)), None)
    if failed or all(c == 0 for c in codes.values()):
      break
    time.sleep(0.2)
  outputs = {}
  for name, proc, log in launched:
    if proc.poll() is None:
      proc.kill()  # A peer died or the deadline passed: the rest would wait in a collective.
      proc.wait(timeout=30)
    log.seek(0)
    outputs[name] = log.read()
    log.close()
  report = "\n".join(f"--- {n} (exit {p.returncode}):\n{outputs[n][-2500:]}" for n, p, _ in launched)
  assert all(p.returncode == 0 for _, p, _ in launched), (
      f"{failed or 'timeout'}: a process failed or the run exceeded {timeout_s} s\n{report}")
  return outputs


def _final_params(workdir):
  # Read as NumPy: the checkpoint's device topology (4 devices) is not this process's.
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
    step = manager.latest_step()
  path = os.path.join(workdir, "checkpoints", str(step), "default")
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.metadata(path).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  return step, restored["state"]["params"]  # train_loop saves {"state", "train_seconds"}.


def test_two_processes_match_one_process_with_as_many_devices(tiny_corpus_dir, tmp_path):
  single_dir, multi_dir = str(tmp_path / "single"), str(tmp_path / "multi")
  address = f"localhost:{_free_port()}"
  # All three at once: the reference overlaps the multi-host pair on the CPU cores.
  launched = [_start("single", _command(single_dir), _env(tiny_corpus_dir, 4), str(tmp_path))]
  for i in range(2):
    launched.append(_start(f"process{i}", _command(
        multi_dir, "--multihost", f"--coordinator_address={address}", "--num_processes=2",
        f"--process_id={i}"), _env(tiny_corpus_dir, 2), str(tmp_path)))
  outputs = _wait_all(launched, TIMEOUT_S)

  step_a, params_a = _final_params(single_dir)
  step_b, params_b = _final_params(multi_dir)
  assert step_a == step_b == STEPS
  leaves_a, leaves_b = jax.tree.leaves(params_a), jax.tree.leaves(params_b)
  assert len(leaves_a) == len(leaves_b) > 0
  # Same global batches, same math; only the all-reduce order (gloo vs in-process) may differ.
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  single = json.load(open(os.path.join(single_dir, "results.json")))
  multi = json.load(open(os.path.join(multi_dir, "results.json")))
  assert len(single["devices"]) == len(multi["devices"]) == 4
  assert multi["steps"] == STEPS and multi["test_wer"] == single["test_wer"]
  # Both processes evaluated (the test WER is printed by each), but only process 0 wrote.
  assert all("test WER" in outputs[f"process{i}"] for i in range(2))
  rows = [json.loads(l) for l in open(os.path.join(multi_dir, "metrics.jsonl"))]
  assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, STEPS + 1))
  assert not [f for f in os.listdir(multi_dir) if ".tmp" in f]
