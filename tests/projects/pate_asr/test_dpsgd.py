"""DP-SGD baseline on the shared training loop: per-step epsilon metrics (never a loss),
preemption and resume to the same parameters; speaker-level DP-SGD from given parameters."""

import json
import os
import signal

import jax
import numpy as np
import pytest

from libs import accounting
from libs.dp import sampling
from libs.dp.randomness import DpRandomness
from libs.models import asr as asr_lib
from libs.speech.tokenizer import CharTokenizer
from libs.train import metrics as metrics_lib
from projects.pate_asr import data as data_lib
from projects.pate_asr import dpsgd_train
from projects.pate_asr import ensemble
from projects.pate_asr.configs import sweep as sweep_configs

pytestmark = pytest.mark.slow  # end-to-end: `make test-fast` skips it

TARGETS = [2.0, 10.0]
DELTA = 1e-5


@pytest.fixture(scope="module")
def tiny_run(tiny_corpus_dir):
  config = sweep_configs.get_config("tiny")
  config.data.data_dir = tiny_corpus_dir
  tokenizer = CharTokenizer()
  sensitive = data_lib.load_splits(config, tokenizer).train
  model = asr_lib.build_model(config.model, tokenizer.vocab_size)
  return config, model, sensitive


def _train(tiny_run, workdir):
  config, model, sensitive = tiny_run
  # Reproducible (insecure) noise and samples, so that two runs can be compared.
  return dpsgd_train.train_dpsgd(config, workdir, model, sensitive, TARGETS, delta=DELTA, rand=DpRandomness(0),
                                 name="matched", progress=False)


def _signal_at(step):
  """A PoissonSampler that sends this process SIGTERM while drawing step `step`'s sample."""
  class Sampler(sampling.PoissonSampler):
    def indices(self, s):
      if s == step:
        signal.raise_signal(signal.SIGTERM)
      return super().indices(s)
  return Sampler


def test_dpsgd_logs_only_epsilons_and_resumes_to_the_same_params(tiny_run, tmp_path, monkeypatch):
  num_steps = tiny_run[0].dpsgd.num_steps
  whole = _train(tiny_run, str(tmp_path / "whole"))
  assert not whole.preempted and whole.steps == num_steps and whole.train_seconds > 0
  rows = metrics_lib.read_jsonl(str(tmp_path / "whole" / "metrics.jsonl"))
  names = dpsgd_train.epsilon_metric_names(TARGETS)
  assert names == ["privacy/epsilon/target_2", "privacy/epsilon/target_10"]
  assert [r["step"] for r in rows] == list(range(1, num_steps + 1))
  for row in rows:
    assert set(row) == {"step", *names}  # No loss, nor anything else computed from the data.
  for name, target, final in zip(names, TARGETS, whole.epsilons):
    eps = [r[name] for r in rows]
    assert all(0 < a < b for a, b in zip(eps, eps[1:])), eps
    assert eps[-1] == pytest.approx(final) and final <= target + 1e-6
  assert not os.path.exists(tmp_path / "whole" / "progress.json")  # The checkpoint holds the time.

  # SIGTERM during step 1: the loop finishes that step, saves at 2 and returns.
  workdir = str(tmp_path / "resumed")
  with monkeypatch.context() as m:
    m.setattr(sampling, "PoissonSampler", _signal_at(1))
    first = _train(tiny_run, workdir)
  assert first.preempted and first.steps == 2
  assert first.epsilons[0] < whole.epsilons[0]
  second = _train(tiny_run, workdir)
  assert not second.preempted and second.steps == num_steps
  assert second.train_seconds > first.train_seconds  # Carried over in the checkpoint.
  np.testing.assert_allclose(second.epsilons, whole.epsilons, rtol=1e-9)
  for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(second.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  resumed_rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in resumed_rows] == list(range(1, num_steps + 1))
  for r, w in zip(resumed_rows, rows):
    assert r == pytest.approx(w)
  # A finished run restores and returns without training; its ledgers still count every step.
  again = _train(tiny_run, workdir)
  assert again.steps == num_steps and again.epsilons == pytest.approx(whole.epsilons)


def test_speaker_batches_pack_each_capped_speaker_into_one_physical_batch():
  speaker_ids = np.array(["a"] * 5 + ["b"] * 1 + ["c"] * 3 + ["d"] * 2 + ["e"] * 4)
  batches = dpsgd_train._SpeakerBatches(speaker_ids, 3, 2, 4, seed=0)
  assert batches.num_speakers == 5 and batches.q == pytest.approx(0.6)
  sizes = []
  for step in range(40):
    phys = batches.batches(step)
    again = batches.batches(step)  # A function of (seed, step).
    assert len(again) == len(phys)
    assert all(np.array_equal(a, c) and np.array_equal(b, d) for (a, b), (c, d) in zip(phys, again))
    seen = set()
    for idx, group in phys:
      assert len(idx) == len(group) <= 4
      for g in np.unique(group):
        speakers = set(speaker_ids[idx[group == g]])
        assert len(speakers) == 1 and len(idx[group == g]) <= 2  # One speaker, capped.
        assert not speakers & seen  # Never split across physical batches.
        seen |= speakers
      assert list(np.unique(group)) == list(range(len(np.unique(group))))  # Batch-local ids 0, 1, ...
    sizes.append(len(seen))
  assert 0 < np.mean(sizes) < 5  # Poisson over speakers: ~q * 5 = 3.
  with pytest.raises(ValueError, match="max_utterances_per_speaker"):
    dpsgd_train._SpeakerBatches(speaker_ids, 3, 5, 4, seed=0)


def test_unknown_unit_and_bad_init_params_raise(tiny_run, tmp_path):
  config, model, sensitive = tiny_run
  with pytest.raises(ValueError, match="unit must be one of"):
    dpsgd_train.train_dpsgd(config, str(tmp_path), model, sensitive, TARGETS, delta=DELTA, rand=DpRandomness(0),
                            name="matched", unit="user")
  with pytest.raises(ValueError, match="init_params must be ONE model"):
    dpsgd_train.train_dpsgd(config, str(tmp_path), model, sensitive, TARGETS, delta=DELTA, rand=DpRandomness(0),
                            name="matched", unit="speaker", init_params={"not": np.zeros(3)})


def test_speaker_level_dpsgd_from_init_params(tiny_run, tmp_path, monkeypatch):
  config, model, sensitive = tiny_run
  num_mels = sensitive.features[0].shape[1]
  init = jax.tree.map(lambda x: np.asarray(x[0]), ensemble.init_stacked(model, jax.random.key(7), 1, num_mels))
  started = []
  real_loop = dpsgd_train.train_loop

  def spy_loop(state, *args, **kwargs):
    started.append(jax.device_get(state.params))  # Before the first step donates the state.
    return real_loop(state, *args, **kwargs)

  monkeypatch.setattr(dpsgd_train, "train_loop", spy_loop)
  workdir = str(tmp_path / "speaker")
  result = dpsgd_train.train_dpsgd(config, workdir, model, sensitive, TARGETS, delta=DELTA, rand=DpRandomness(0),
                                   name="matched", progress=False, unit="speaker", init_params=init)
  num_steps = config.dpsgd.num_steps
  num_speakers = len(np.unique(sensitive.metadata["speaker_id"]))
  q = config.dpsgd.expected_speakers / num_speakers
  assert result.unit == "speaker" and not result.preempted and result.steps == num_steps
  assert result.sampling_probability == pytest.approx(q)
  for sigma, eps, target in zip(result.noise_multipliers, result.epsilons, TARGETS):
    assert 0 < eps <= target + 1e-6
    # Speaker-level accounting: the Poisson-subsampled Gaussian with q over speakers.
    assert eps == pytest.approx(accounting.dpsgd_epsilon(sigma, q, num_steps, DELTA), rel=1e-6)
    assert sigma == pytest.approx(accounting.calibrate_noise_multiplier(target, DELTA, q, num_steps))

  # Every model started from init_params, and then trained.
  (start,) = started
  for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(init)):
    assert a.shape == (len(TARGETS),) + b.shape
    for m in range(len(TARGETS)):
      np.testing.assert_array_equal(a[m], b)
  moved = [not np.allclose(np.asarray(a)[0], b) for a, b in zip(jax.tree.leaves(result.params), jax.tree.leaves(init))]
  assert any(moved) and all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(result.params))

  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  names = dpsgd_train.epsilon_metric_names(TARGETS)
  assert [r["step"] for r in rows] == list(range(1, num_steps + 1))
  assert all(set(r) == {"step", *names} for r in rows)  # Epsilons only, never a loss.
  with open(os.path.join(workdir, "hparams.json"), encoding="utf-8") as f:
    assert json.load(f)["unit"] == "speaker"
