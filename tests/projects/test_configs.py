"""Every variant of every config file imports, builds and validates; validation names the bad field.

A config file is a `projects/*/configs/*.py` with `get_config`; one with variants lists them in a
module-level `VARIANTS` tuple (`--config=path.py:variant`, the first is the default) and each is
built here; one without is called with no argument. `common.py` files hold shared helpers and
are not configs.
"""

import glob
import importlib.util
import os
import re

import pytest

from projects.fairness import validation as fairness_validation
from projects.pate_asr import validation

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELPERS = ("__init__.py", "common.py")  # In configs/ but not configs.
FILES = sorted(c for c in glob.glob(os.path.join(REPO, "projects", "*", "configs", "*.py"))
               if os.path.basename(c) not in HELPERS)


def _module(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _variants(path):
  """(path, variant) for every variant of the config file; variant None: no argument."""
  return [(path, v) for v in getattr(_module(path), "VARIANTS", (None,))]


CONFIGS = [pv for path in FILES for pv in _variants(path)]


def _id(path, variant):
  return os.path.relpath(path, REPO) + ("" if variant is None else f":{variant}")


def _load(path, variant=None):
  module = _module(path)
  return module.get_config() if variant is None else module.get_config(variant)


def test_every_file_in_configs_is_a_config():
  for path in FILES:
    assert callable(getattr(_module(path), "get_config", None)), f"{_id(path, None)} has no get_config"


@pytest.mark.parametrize("path, variant", CONFIGS, ids=[_id(p, v) for p, v in CONFIGS])
def test_config_builds_and_validates(path, variant):
  config = _load(path, variant)
  assert config.mode
  if "pate_asr" in path and config.mode in ("inversion", "membership"):
    # The attack configs: their own module validates them (projects/pate_asr/<mode>.py).
    importlib.import_module(f"projects.pate_asr.{config.mode}").validate(config)
  elif "pate_asr" in path:
    validation.validate(config)
    if config.mode == "sweep":
      validation.validate_pate(config)  # the pate, teachers, students and dpsgd sections
  if "fairness" in path and config.mode in ("text_metrics", "distill"):
    # The text studies: their own module validates them (projects/fairness/<mode>.py).
    importlib.import_module(f"projects.fairness.{config.mode}").validate(config)
  elif "fairness" in path:
    fairness_validation.validate(config)
  if "fedlearn" in path:
    from projects.fedlearn import validation as fl_validation  # pylint: disable=import-outside-toplevel
    if config.mode in ("audit", "membership", "canaries"):
      importlib.import_module(f"projects.fedlearn.{config.mode}").validate(config)
    else:
      assert fl_validation.sub_runs(config)  # every sub-run merges and validates
  # The docstring holds the exact command, with the variant after the colon.
  project = os.path.relpath(path, REPO).split(os.sep)[1]
  command = f"python -m projects.{project}.main --config={_id(path, variant)}"
  doc = " ".join(_module(path).__doc__.split())  # Commands may wrap with a backslash.
  assert command in doc, f"the docstring of {_id(path, variant)} lacks {command!r}"


@pytest.mark.parametrize("path", [p for p in FILES if hasattr(_module(p), "VARIANTS")],
                         ids=lambda p: os.path.relpath(p, REPO))
def test_the_default_variant_is_the_first_and_unknown_ones_fail(path):
  module = _module(path)
  assert module.get_config().to_dict() == module.get_config(module.VARIANTS[0]).to_dict()
  with pytest.raises(ValueError, match="variant must be one of"):
    module.get_config("no_such_variant")


def test_at_least_the_known_configs_exist():
  names = {_id(p, v) for p, v in CONFIGS}
  assert {"projects/pate_asr/configs/nonprivate.py:default", "projects/pate_asr/configs/nonprivate.py:tiny",
          "projects/pate_asr/configs/sweep.py:quick", "projects/pate_asr/configs/sweep.py:full",
          "projects/pate_asr/configs/sweep.py:tiny", "projects/fedlearn/configs/dp.py:tiny",
          "projects/fedlearn/configs/selection.py", "projects/fedlearn/configs/algorithms.py"} <= names


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
  config = _load(os.path.join(REPO, "projects", "pate_asr", "configs", "nonprivate.py"), "default")
  section, key = field.split(".")
  config[section][key] = value
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    validation.validate(config)


def test_librispeech_needs_a_directory():
  config = _load(os.path.join(REPO, "projects", "pate_asr", "configs", "nonprivate.py"), "default")
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
  config = _load(os.path.join(REPO, "projects", "pate_asr", "configs", "sweep.py"), "quick")
  validation.validate_pate(config)
  section, key = field.split(".")
  config[section][key] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    validation.validate_pate(config)
