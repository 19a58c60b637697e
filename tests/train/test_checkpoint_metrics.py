"""Checkpoint round trip, preemption flag, metric writers (TensorBoard events + jsonl)."""

import glob
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from libs.train import checkpoint, metrics
from libs.train.state import TrainState


def test_checkpointer_saves_every_n_and_restores(tmp_path):
  opt = optax.adam(1e-2)
  state = TrainState.create({"w": jnp.arange(3.0)}, opt)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), save_every=2)
  assert ckpt.restore_or(state) is state  # nothing saved yet
  for _ in range(3):
    state = state.apply_gradients({"w": jnp.ones(3)}, opt)
    ckpt.maybe_save(state)
  ckpt.close()
  again = checkpoint.Checkpointer(str(tmp_path / "ckpt"), save_every=2)
  assert again.latest_step() == 2
  fresh = TrainState.create({"w": jnp.zeros(3)}, opt)
  restored = again.restore_or(fresh)
  assert int(restored.step) == 2
  expected = TrainState.create({"w": jnp.arange(3.0)}, opt)
  for _ in range(2):
    expected = expected.apply_gradients({"w": jnp.ones(3)}, opt)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b)
  again.close()


def test_resuming_a_different_model_names_the_checkpoint_and_keeps_it(tmp_path):
  import pytest  # pylint: disable=import-outside-toplevel
  opt = optax.adam(1e-2)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), save_every=1)
  ckpt.maybe_save(TrainState.create({"w": jnp.arange(3.0)}, opt).apply_gradients({"w": jnp.ones(3)}, opt))
  ckpt.close()
  other = checkpoint.Checkpointer(str(tmp_path / "ckpt"), save_every=1)
  with pytest.raises(checkpoint.CheckpointMismatch, match="ckpt .step 1. does not fit") as info:
    other.restore_or(TrainState.create({"v": jnp.zeros(3)}, opt))
  assert len(str(info.value).splitlines()) < 15  # a readable message, not orbax's full tree diff
  assert other.latest_step() == 1  # nothing was deleted
  other.close()


def test_preemption_guard_turns_sigterm_into_a_flag():
  with checkpoint.PreemptionGuard() as guard:
    assert not guard.stop_requested
    signal.raise_signal(signal.SIGTERM)
    assert guard.stop_requested and guard.received == "SIGTERM"
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_writer_writes_tensorboard_events_and_jsonl(tmp_path):
  writer = metrics.create_writer(str(tmp_path))
  writer.write_hparams({"lr": 0.1, "model": "transducer"})
  writer.write_scalars(1, {"train/loss": 2.5})
  writer.write_scalars(2, {"train/loss": 1.5, "privacy/epsilon": 0.3})
  writer.flush()
  writer.close()
  rows = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert rows == [{"step": 1, "train/loss": 2.5}, {"step": 2, "train/loss": 1.5, "privacy/epsilon": 0.3}]
  events = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  assert events and os.path.getsize(events[0]) > 0
  # The event file holds our scalars (read back with tensorboardX's own protobufs).
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  import struct  # pylint: disable=import-outside-toplevel
  data = open(events[0], "rb").read()
  tags, pos = [], 0
  while pos < len(data):
    (length,) = struct.unpack("<Q", data[pos: pos + 8])
    event = event_pb2.Event.FromString(data[pos + 12: pos + 12 + length])
    tags += [(event.step, v.tag, round(v.simple_value, 3)) for v in event.summary.value]
    pos += 16 + length
  assert (2, "privacy/epsilon", 0.3) in tags and (1, "train/loss", 2.5) in tags


def test_writer_refuses_nan_naming_the_step_and_metric_and_writes_nothing(tmp_path):
  writer = metrics.create_writer(str(tmp_path))
  writer.write_scalars(3, {"run/test/loss": 2.5, "run/privacy/epsilon": float("inf")})  # inf epsilon is legit
  with pytest.raises(metrics.NonFiniteMetricError, match=r"step 4: non-finite metric\(s\) run/test/loss=nan"):
    writer.write_scalars(4, {"run/test/loss": np.float32("nan"), "run/test/accuracy": 0.5})
  with pytest.raises(metrics.NonFiniteMetricError, match="run/train/loss=inf"):
    writer.write_scalars(5, {"run/train/loss": float("inf")})
  with pytest.raises(metrics.NonFiniteMetricError, match="run/privacy/epsilon=nan"):
    writer.write_scalars(6, {"run/privacy/epsilon": float("nan")})
  writer.close()
  rows = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [3]  # nothing of the refused steps reached the file
