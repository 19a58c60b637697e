"""DP-SGD baseline on the shared training loop: per-step epsilon metrics (never a loss),
preemption and resume to the same parameters."""

import os
import signal

import jax
import numpy as np
import pytest

from libs.dp import sampling
from libs.dp.randomness import DpRandomness
from libs.models import asr as asr_lib
from libs.speech.tokenizer import CharTokenizer
from libs.train import metrics as metrics_lib
from projects.pate_asr import data as data_lib
from projects.pate_asr import dpsgd_train
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
