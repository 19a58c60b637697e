"""Every config file imports, builds and validates; validation names the bad field."""

import glob
import importlib.util
import os
import re

import pytest

from projects.pate_asr import validation

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "projects", "*", "configs", "*.py")))
CONFIGS = [c for c in CONFIGS if not c.endswith("__init__.py")]


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(c, REPO) for c in CONFIGS])
def test_config_builds_and_validates(path):
  config = _load(path)
  assert config.mode
  if "pate_asr" in path:
    validation.validate(config)
    if config.mode == "sweep":
      validation.validate_pate(config)  # the pate, teachers, students and dpsgd sections
  if "fedlearn" in path:
    from projects.fedlearn import validation as fl_validation  # pylint: disable=import-outside-toplevel
    assert fl_validation.sub_runs(config)  # every sub-run merges and validates
  assert "python -m projects." in open(path).read()  # the docstring holds the command


def test_at_least_the_known_configs_exist():
  names = {os.path.relpath(c, REPO) for c in CONFIGS}
  assert "projects/pate_asr/configs/nonprivate.py" in names


@pytest.mark.parametrize("field, value, message", [
    ("train.learning_rate", -1.0, "config.train.learning_rate must be > 0"),
    ("train.learning_rate", 0.0, "config.train.learning_rate must be > 0"),
    ("model.name", "rnn", "config.model.name must be one of"),
    ("model.encoder", "gru", "config.model.encoder must be one of"),
    ("train.batch_size", 0, "config.train.batch_size must be an integer >= 1"),
    ("train.num_steps", -5, "config.train.num_steps must be an integer >= 1"),
    ("model.dropout", 1.0, "config.model.dropout must be in"),
    ("data.corpus", "timit", "config.data.corpus must be one of"),
    ("data.synthetic_config", "poems", "config.data.synthetic_config must be one of"),
])
def test_validation_names_the_field(field, value, message):
  config = _load(os.path.join(REPO, "projects", "pate_asr", "configs", "nonprivate.py"))
  section, key = field.split(".")
  config[section][key] = value
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    validation.validate(config)


def test_librispeech_needs_a_directory():
  config = _load(os.path.join(REPO, "projects", "pate_asr", "configs", "nonprivate.py"))
  config.data.corpus = "librispeech"
  with pytest.raises(ValueError, match=r"config\.data\.librispeech_dir"):
    validation.validate(config)


@pytest.mark.parametrize("field, value, message", [
    ("pate.num_teachers", 0, "config.pate.num_teachers must be an integer >= 1"),
    ("pate.delta", 1.5, "config.pate.delta must be in (0, 1)"),
    ("pate.gnmax_sigma", 0.0, "config.pate.gnmax_sigma must be > 0"),
    ("dpsgd.l2_clip_norm", -1.0, "config.dpsgd.l2_clip_norm must be > 0"),
    ("dpsgd.num_steps", 0, "config.dpsgd.num_steps must be an integer >= 1"),
    ("teachers.learning_rate", 0.0, "config.teachers.learning_rate must be > 0"),
])
def test_sweep_sections_are_validated_naming_the_field(field, value, message):
  config = _load(os.path.join(REPO, "projects", "pate_asr", "configs", "quick.py"))
  validation.validate_pate(config)
  section, key = field.split(".")
  config[section][key] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    validation.validate_pate(config)
