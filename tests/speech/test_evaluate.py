"""Running ASR models: per-utterance NLL against the losses on the model's own outputs, the
weighted loss, greedy decoding, and WER evaluation of a split (order, padding, groups)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from libs.data import pipeline
from libs.models import asr, ctc, transducer
from libs.speech import evaluate, features, losses, wer
from libs.speech.tokenizer import CharTokenizer
from libs.train import mesh as mesh_lib

NUM_MELS = 16


def _model(name):
  cfg = ml_collections.ConfigDict(dict(
      name=name, encoder="lstm", subsampling_channels=4, dim=8, num_layers=1, bidirectional=True,
      num_heads=2, conv_kernel=5, dropout=0.0, embed_dim=4, predictor_dim=8, joint_dim=8))
  model = asr.build_model(cfg, 29)
  params = asr.init_params(model, jax.random.key(0), NUM_MELS)
  return model, jax.tree.map(lambda p: p * 2.0, params)  # so greedy decoding emits labels


@pytest.fixture(scope="module", params=asr.MODEL_NAMES)
def model_and_params(request):
  return _model(request.param)


def _batch():
  rng = np.random.default_rng(0)
  return {"features": jnp.asarray(rng.standard_normal((3, 32, NUM_MELS)), jnp.float32),
          "feature_lengths": jnp.array([32, 21, 9], jnp.int32),
          "labels": jnp.asarray(rng.integers(1, 29, (3, 5)), jnp.int32),
          "label_lengths": jnp.array([5, 2, 0], jnp.int32),
          "weights": jnp.array([1.0, 1.0, 0.0])}


def _reference_nll(model, params, batch, feats):
  """The loss of the model's outputs, computed here without `evaluate`."""
  if isinstance(model, transducer.Transducer):
    logits, enc = model.apply({"params": params}, feats, batch["feature_lengths"], batch["labels"],
                              batch["label_lengths"])
    return losses.rnnt_loss(logits, enc, batch["labels"], batch["label_lengths"])
  logits, enc = model.apply({"params": params}, feats, batch["feature_lengths"])
  return losses.ctc_loss(logits, enc, batch["labels"], batch["label_lengths"])


def test_per_example_nll_is_the_loss_of_the_models_outputs(model_and_params):
  model, params = model_and_params
  batch = _batch()
  nll = evaluate.per_example_nll(model, params, batch, None, train=False)
  assert nll.shape == (3,) and np.all(np.isfinite(nll))
  np.testing.assert_allclose(nll, _reference_nll(model, params, batch, batch["features"]), rtol=1e-6)
  # Without dropout (dropout=0) and without SpecAugment a key changes nothing.
  keyed = evaluate.per_example_nll(model, params, batch, jax.random.key(1), train=True)
  np.testing.assert_allclose(keyed, nll, rtol=1e-6)


def test_spec_augment_draws_its_masks_from_the_first_half_of_the_key(model_and_params):
  model, params = model_and_params
  batch = _batch()
  spec = features.SpecAugmentConfig(num_freq_masks=1, max_freq_width=4, num_time_masks=1, max_time_width=5)
  key = jax.random.key(7)
  nll = evaluate.per_example_nll(model, params, batch, key, train=True, spec_augment=spec)
  masked = features.spec_augment(jax.random.split(key)[0], batch["features"], batch["feature_lengths"], spec)
  np.testing.assert_allclose(nll, _reference_nll(model, params, batch, masked), rtol=1e-6)
  again = evaluate.per_example_nll(model, params, batch, key, train=True, spec_augment=spec)
  np.testing.assert_array_equal(nll, again)  # pure: same key, same masks
  # Without a key there is nothing to draw masks with: no augmentation.
  np.testing.assert_array_equal(evaluate.per_example_nll(model, params, batch, None, train=False, spec_augment=spec),
                                evaluate.per_example_nll(model, params, batch, None, train=False))


def test_loss_is_the_weighted_mean_over_real_utterances(model_and_params):
  model, params = model_and_params
  batch = _batch()
  nll = np.asarray(evaluate.per_example_nll(model, params, batch, None, train=False), np.float64)
  loss, aux = evaluate.make_loss_fn(model, None)(params, batch, jax.random.key(1))
  np.testing.assert_allclose(loss, (nll[0] + nll[1]) / 2, rtol=1e-5)
  np.testing.assert_allclose(aux["nll_per_token"], (nll[0] + nll[1]) / (5 + 2), rtol=1e-5)
  empty = dict(batch, weights=jnp.zeros(3))  # an all-padding batch: finite, zero
  loss, aux = evaluate.make_loss_fn(model, None)(params, empty, jax.random.key(1))
  assert float(loss) == 0.0 and float(aux["nll_per_token"]) == 0.0


def test_spec_augment_config_reads_the_train_section():
  cfg = ml_collections.ConfigDict(dict(spec_augment=False, freq_masks=2, freq_mask_width=12, time_masks=3,
                                       time_mask_width=20))
  assert evaluate.spec_augment_config(cfg) is None
  cfg.spec_augment = True
  assert evaluate.spec_augment_config(cfg) == features.SpecAugmentConfig(
      num_freq_masks=2, max_freq_width=12, num_time_masks=3, max_time_width=20)


def test_decode_fn_is_the_models_greedy_decoding(model_and_params):
  model, params = model_and_params
  batch = _batch()
  ids, counts = evaluate.make_decode_fn(model)(params, batch["features"], batch["feature_lengths"])
  if isinstance(model, transducer.Transducer):
    ref_ids, ref_counts = model.apply({"params": params}, batch["features"], batch["feature_lengths"],
                                      method=transducer.Transducer.greedy_decode)
  else:
    logits, enc = model.apply({"params": params}, batch["features"], batch["feature_lengths"])
    ref_ids, ref_counts = ctc.greedy_decode(logits, enc, model.config.blank_id)
  np.testing.assert_array_equal(ids, ref_ids)
  np.testing.assert_array_equal(counts, ref_counts)
  assert int(counts.max()) > 0  # the scaled parameters emit labels, so the comparison is not vacuous


def test_group_wer_pools_the_edits_of_each_group():
  refs = ["a b c", "d e", "f g h i", "j", "k l"]
  hyps = ["a x c", "d e", "f h i", "j j", "k l"]
  groups = np.array(["us", "gb", "us", "gb", "in"])
  result = evaluate.EvalResult(wer.word_error_rate(refs, hyps), hyps, wer.utterance_errors(refs, hyps))
  by_group = result.group_wer(groups)
  assert list(by_group) == ["gb", "in", "us"]
  for g, value in by_group.items():
    idx = np.flatnonzero(groups == g)
    np.testing.assert_allclose(value, wer.word_error_rate([refs[i] for i in idx], [hyps[i] for i in idx]))
  assert result.group_wer(np.array([3, 1, 3, 1, 1])) == pytest.approx({"1": 1 / 5, "3": 2 / 7})


def _echo_split(texts, frames):
  """A split whose features carry their own transcript: row 0 the token ids, row 1 the count."""
  tok = CharTokenizer()
  feats = []
  for text, n in zip(texts, frames):
    f = np.zeros((n, NUM_MELS), np.float32)
    ids = tok.encode(text)
    f[0, :len(ids)], f[1, 0] = ids, len(ids)
    feats.append(f)
  return pipeline.SpeechSplit(
      features=feats, labels=[np.asarray(tok.encode(t), np.int32) for t in texts], transcripts=list(texts),
      utterance_ids=[f"u{i}" for i in range(len(texts))], metadata={})


@jax.jit
def _echo_decode(params, feats, lens):
  del params, lens
  return feats[:, 0].astype(jnp.int32), feats[:, 1, 0].astype(jnp.int32)


@pytest.mark.parametrize("use_mesh", [False, True])
def test_transcribe_and_evaluate_keep_split_order_and_drop_padding(use_mesh):
  texts = ["one two", "three", "four five six", "seven", "eight nine", "ten", "eleven twelve", "a b", "c",
           "d e f", "g"]
  frames = [30, 5, 18, 44, 7, 12, 9, 26, 3, 40, 15]  # eval_batches sorts by length: order must be restored
  split = _echo_split(texts, frames)
  mesh = mesh_lib.make_mesh(jax.devices()) if use_mesh else None
  batch_size = 8 if use_mesh else 4  # 11 utterances: the last batch holds padding rows
  hyps = evaluate.transcribe(_echo_decode, None, split, CharTokenizer(), batch_size=batch_size, mesh=mesh)
  assert hyps == texts
  heard = list(texts)
  heard[2], heard[9] = "four six", "d e f x"
  result = evaluate.evaluate(_echo_decode, None, _echo_split(heard, frames), CharTokenizer(),
                             batch_size=batch_size, mesh=mesh)
  assert result.hypotheses == heard
  assert result.wer == wer.word_error_rate(heard, heard) == 0.0  # its own transcripts are the references
  split = pipeline.SpeechSplit(_echo_split(heard, frames).features, split.labels, texts, split.utterance_ids, {})
  result = evaluate.evaluate(_echo_decode, None, split, CharTokenizer(), batch_size=batch_size, mesh=mesh)
  assert result.hypotheses == heard
  assert result.wer == wer.word_error_rate(texts, heard) == pytest.approx(2 / 19)  # 19 reference words
  assert result.errors == wer.utterance_errors(texts, heard)
  assert [e.errors for e in result.errors] == [0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0]
