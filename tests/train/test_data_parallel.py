"""The same training steps on 1 device and on 8 (fake CPU) devices give the same losses."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from libs.models import encoders, transducer
from libs.speech import losses
from libs.train import mesh as mesh_lib
from libs.train import steps
from libs.train.state import TrainState


def _model():
  return transducer.Transducer(transducer.TransducerConfig(
      vocab_size=7, encoder=encoders.EncoderConfig(subsampling_channels=4, dim=16, num_layers=1, dropout=0.1),
      embed_dim=8, predictor_dim=16, joint_dim=16))


def _batches(num, batch_size=8):
  rng = np.random.default_rng(0)
  for _ in range(num):
    lens = rng.integers(8, 33, batch_size).astype(np.int32)
    ulens = rng.integers(0, 5, batch_size).astype(np.int32)
    yield {
        "features": (rng.standard_normal((batch_size, 32, 80)) * (np.arange(32)[None, :, None] < lens[:, None, None])).astype(np.float32),
        "feature_lengths": lens,
        "labels": rng.integers(1, 7, (batch_size, 4)).astype(np.int32) * (np.arange(4)[None] < ulens[:, None]),
        "label_lengths": ulens,
        "weights": np.ones((batch_size,), np.float32),
    }


def _loss_fn(model):
  def loss_fn(params, batch, key):
    logits, enc_lens = model.apply({"params": params}, batch["features"], batch["feature_lengths"],
                                   batch["labels"], batch["label_lengths"], train=True, rngs={"dropout": key})
    nll = losses.rnnt_loss(logits, enc_lens, batch["labels"], batch["label_lengths"])
    return jnp.mean(nll), {}
  return loss_fn


def _run(devices):
  model = _model()
  mesh = mesh_lib.make_mesh(devices)
  b0 = next(_batches(1))
  params = jax.jit(model.init)({"params": jax.random.key(0)}, b0["features"], b0["feature_lengths"], b0["labels"],
                               b0["label_lengths"])["params"]
  optimizer = optax.adam(3e-3)
  state = mesh_lib.replicate(TrainState.create(params, optimizer), mesh)
  step = steps.jit_data_parallel(steps.make_train_step(_loss_fn(model), optimizer), mesh)
  found = []
  for batch in _batches(4):
    state, metrics = step(state, mesh_lib.shard_batch(batch, mesh), jax.random.key(1))
    found.append(float(metrics["loss"]))
  return found, jax.device_get(state.params), state


def test_one_device_and_eight_devices_agree():
  assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
  single, p1, _ = _run(jax.devices()[:1])
  multi, p8, state8 = _run(jax.devices())
  # The batch really is split over 8 devices and the parameters are replicated.
  leaf = jax.tree.leaves(state8.params)[0]
  assert len(leaf.sharding.device_set) == 8 and leaf.sharding.is_fully_replicated
  np.testing.assert_allclose(single, multi, rtol=2e-5)
  assert single[-1] < single[0]  # it trains
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_batch_size_must_divide_devices():
  import pytest  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="config.train.batch_size=12 must be divisible by the number of devices"):
    mesh_lib.check_batch_size(12, mesh_lib.make_mesh(), "config.train.batch_size")
