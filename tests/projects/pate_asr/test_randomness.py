"""PATE-ASR DP randomness: the noise and samples behind every epsilon are secret by default,
never a function of the published config.seed; reproducible only when a config says so."""

import glob
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from libs.dp.randomness import DpRandomness
from projects.pate_asr import dpsgd_train, sweep, validation
from projects.pate_asr.configs import sweep as sweep_configs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
FILES = sorted(c for c in glob.glob(os.path.join(REPO, "projects", "pate_asr", "configs", "*.py"))
               if os.path.basename(c) not in ("__init__.py", "common.py"))


def _module(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# Every variant of every config file (`VARIANTS`, see tests/projects/test_configs.py).
CONFIGS = [(path, v) for path in FILES for v in getattr(_module(path), "VARIANTS", (None,))]


def _load(path, variant):
  module = _module(path)
  return module.get_config() if variant is None else module.get_config(variant)


def _data(key):
  return np.asarray(jax.random.key_data(key))


def _default_rand():
  config = sweep_configs.get_config("tiny")
  return DpRandomness.from_config(config.seed, config.insecure_reproducible_noise), config.seed


def _old_dpsgd_noise_keys(seed, num):
  """What the DP-SGD noise keys were before: a function of config.seed."""
  _, noise_root, _ = jax.random.split(jax.random.fold_in(jax.random.key(seed), 3), 3)
  return jax.random.split(noise_root, num)


@pytest.mark.parametrize("path, variant", CONFIGS,
                         ids=[os.path.relpath(p, REPO) + ("" if v is None else f":{v}") for p, v in CONFIGS])
def test_shipped_configs_default_to_secret_noise(path, variant):
  config = _load(path, variant)
  assert config.get("insecure_reproducible_noise", False) is False
  if config.mode == "sweep":  # Every config that runs a DP stage sets it explicitly.
    assert config.insecure_reproducible_noise is False
    validation.validate_pate(config)
    assert "ss_seed" not in config.pate  # The release noise is not a published seed either.


@pytest.mark.parametrize("value", [1, "False", None, "missing"])
def test_validation_wants_a_bool(value):
  config = sweep_configs.get_config("tiny")
  del config.insecure_reproducible_noise  # A config file could set any type (or none).
  if value != "missing":
    config.insecure_reproducible_noise = value
  with pytest.raises(ValueError, match=r"config\.insecure_reproducible_noise must be a bool"):
    validation.validate_pate(config)


def test_dpsgd_noise_and_sampling_are_not_a_function_of_the_seed():
  (rand_a, seed), (rand_b, _) = _default_rand(), _default_rand()
  assert rand_a.describe() == "os-secret"
  keys_a, sampler_a = dpsgd_train.dp_streams(rand_a, "matched", 2)
  keys_b, sampler_b = dpsgd_train.dp_streams(rand_b, "matched", 2)
  assert keys_a.shape == (2,)
  old = _data(_old_dpsgd_noise_keys(seed, 2))
  for keys in (keys_a, keys_b):
    for k in _data(keys):
      assert not (k == old).all(-1).any()
  assert not (_data(keys_a) == _data(keys_b)).all(-1).any()  # Same config, new secret.
  assert sampler_a != sampler_b and seed not in (sampler_a, sampler_b)
  # Within one run the streams are fixed, and they differ between scenarios.
  np.testing.assert_array_equal(_data(keys_a), _data(dpsgd_train.dp_streams(rand_a, "matched", 2)[0]))
  assert dpsgd_train.dp_streams(rand_a, "mismatched", 2)[1] != sampler_a


def test_pate_aggregation_and_release_noise_are_not_a_function_of_the_seed():
  (rand_a, seed), (rand_b, _) = _default_rand(), _default_rand()
  old = jax.random.fold_in(jax.random.key(seed), 5)
  old_per_method = np.stack([_data(jax.random.fold_in(old, m)) for m in range(5)])
  key_a, key_b = sweep.aggregation_key(rand_a, "matched"), sweep.aggregation_key(rand_b, "matched")
  for key in (key_a, key_b):
    assert not (_data(key) == _data(old)).all()
    for m in range(5):
      assert not (_data(jax.random.fold_in(key, m)) == old_per_method).all(-1).any()
  assert not (_data(key_a) == _data(key_b)).all()
  assert not (_data(key_a) == _data(sweep.aggregation_key(rand_a, "mismatched"))).all()
  # Smooth-sensitivity releases: secret, and independent noise for every released value.
  seeds = {sweep.release_seed(rand_a, "matched", m, t) for m in ("gnmax", "confident_gnmax") for t in (2.0, 10.0)}
  assert len(seeds) == 4 and seed not in seeds and 0 not in seeds
  assert sweep.release_seed(rand_b, "matched", "gnmax", 2.0) not in seeds


def test_reproducible_mode_is_explicit_and_says_so():
  config = sweep_configs.get_config("tiny")
  config.insecure_reproducible_noise = True
  validation.validate_pate(config)
  a = DpRandomness.from_config(config.seed, config.insecure_reproducible_noise)
  b = DpRandomness.from_config(config.seed, config.insecure_reproducible_noise)
  assert a.describe() == b.describe() == "reproducible-insecure"
  keys_a, sampler_a = dpsgd_train.dp_streams(a, "matched", 2)
  keys_b, sampler_b = dpsgd_train.dp_streams(b, "matched", 2)
  np.testing.assert_array_equal(_data(keys_a), _data(keys_b))
  assert sampler_a == sampler_b
  np.testing.assert_array_equal(_data(sweep.aggregation_key(a, "matched")), _data(sweep.aggregation_key(b, "matched")))
  assert sweep.release_seed(a, "matched", "gnmax", 2.0) == sweep.release_seed(b, "matched", "gnmax", 2.0)


def test_train_dpsgd_needs_the_randomness():
  with pytest.raises(TypeError, match="rand"):
    dpsgd_train.train_dpsgd(sweep_configs.get_config("tiny"), "/nonexistent", None, None, [1.0], delta=1e-5, name="matched")


def test_workdir_keeps_the_kind_of_randomness_it_started_with(tmp_path):
  secret, insecure = DpRandomness(), DpRandomness(0)
  fresh = str(tmp_path / "fresh")
  sweep.check_workdir_randomness(fresh, secret)
  sweep.check_workdir_randomness(fresh, DpRandomness())  # A rerun draws a new secret: fine.
  assert json.load(open(os.path.join(fresh, "dp_randomness.json"))) == {"randomness": "os-secret"}
  with pytest.raises(ValueError, match="insecure_reproducible_noise"):
    sweep.check_workdir_randomness(fresh, insecure)
  # A workdir whose DP outputs predate the marker drew its noise from config.seed.
  legacy = tmp_path / "legacy"
  (legacy / "matched" / "labels").mkdir(parents=True)
  with pytest.raises(ValueError, match="reproducible-insecure"):
    sweep.check_workdir_randomness(str(legacy), secret)
  sweep.check_workdir_randomness(str(legacy), insecure)
