"""ASR model building from a config section: dispatch by name, the encoder fields, and the
jitted (vmappable) init."""

import jax
import ml_collections
import numpy as np
import pytest

from libs.models import asr, ctc, encoders, transducer


def _model_cfg(name="transducer", **overrides):
  cfg = ml_collections.ConfigDict(dict(
      name=name, encoder="lstm", subsampling_channels=4, dim=8, num_layers=1, bidirectional=True,
      num_heads=2, conv_kernel=5, dropout=0.0, embed_dim=4, predictor_dim=8, joint_dim=8))
  cfg.update(overrides)
  return cfg


def test_encoder_config_copies_every_field():
  cfg = _model_cfg(encoder="conformer", dim=12, num_layers=3, bidirectional=False, num_heads=3,
                   conv_kernel=7, dropout=0.25, subsampling_channels=6)
  assert asr.encoder_config(cfg) == encoders.EncoderConfig(
      kind="conformer", subsampling_channels=6, dim=12, num_layers=3, bidirectional=False, num_heads=3,
      conv_kernel=7, dropout=0.25)


def test_build_model_dispatches_on_every_model_name():
  built = {name: asr.build_model(_model_cfg(name), 29) for name in asr.MODEL_NAMES}
  assert set(built) == {"transducer", "ctc"}
  t, c = built["transducer"], built["ctc"]
  assert isinstance(t, transducer.Transducer) and isinstance(c, ctc.CTCModel)
  assert t.config == transducer.TransducerConfig(vocab_size=29, encoder=asr.encoder_config(_model_cfg()),
                                                 embed_dim=4, predictor_dim=8, joint_dim=8)
  assert c.config == ctc.CTCConfig(vocab_size=29, encoder=asr.encoder_config(_model_cfg()))


def test_unknown_model_name_names_the_field():
  with pytest.raises(ValueError, match=r"config.model.name must be one of \['ctc', 'transducer'\], got 'rnn'"):
    asr.build_model(_model_cfg("rnn"), 29)


@pytest.mark.parametrize("name", asr.MODEL_NAMES)
def test_init_params_is_jitted_init_fn_and_vmaps_into_distinct_members(name):
  model = asr.build_model(_model_cfg(name), 29)
  params = asr.init_params(model, jax.random.key(3), num_mels=16)
  again = jax.jit(asr.init_fn(model, 16))(jax.random.key(3))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  keys = jax.random.split(jax.random.key(3), 2)
  stacked = jax.jit(jax.vmap(asr.init_fn(model, 16)))(keys)
  first = jax.jit(asr.init_fn(model, 16))(keys[0])
  for s, f, p in zip(jax.tree.leaves(stacked), jax.tree.leaves(first), jax.tree.leaves(params)):
    assert s.shape == (2,) + p.shape
    np.testing.assert_allclose(s[0], f, rtol=1e-6, atol=1e-6)
  assert any(not np.array_equal(s[0], s[1]) for s in jax.tree.leaves(stacked))  # members use their own keys
