"""Checks and merges a fedlearn config before any work starts; errors name the field.

`sub_runs(config)` merges each entry of `config.runs` over the base config and validates it
(`validate`), so a bad sub-run fails before the first one trains.

Example:
  >>> [name for name, _ in sub_runs(config)]
  >>> validate(merged)   # ValueError: config.fl.clients_per_round must be an integer >= 1, got 0
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from libs.config.checks import number, positive_int, require


RUN_KINDS = ("federated", "centralized")
TASKS = ("intent", "next_word")


def validate(config) -> None:
  """Raises ValueError naming the first invalid field of one (merged) sub-run config.

  Example:
    >>> validate(config)   # ValueError: config.fl.clients_per_round must be an integer >= 1, got 0
  """
  # Long by design: a flat list of one-line field checks, in config order.
  from projects.fedlearn import partition as partition_lib  # pylint: disable=import-outside-toplevel
  from projects.fedlearn.selection import DROPOUT_MODES, SCHEMES, WEIGHTINGS  # pylint: disable=import-outside-toplevel
  from projects.fedlearn.algorithms import ALGORITHMS, SERVER_OPTIMIZERS  # pylint: disable=import-outside-toplevel
  require(config.kind in RUN_KINDS, "kind", f"must be one of {RUN_KINDS}", config.kind)
  require(config.task.name in TASKS, "task.name", f"must be one of {TASKS}", config.task.name)
  for field in ("data.num_devices", "data.test_devices", "data.max_examples_per_client", "data.max_len",
                "data.num_periods", "data.max_examples_per_device", "task.embed_dim", "task.hidden_dim",
                "fl.rounds", "fl.eval_every", "fl.checkpoint_every", "eval_batch_size"):
    positive_int(config, field)
  positive_int(config, "data.max_len", 2)
  number(config, "data.mean_examples", 1.0, math.inf, high_open=True)
  number(config, "data.zipf_a", 1.0, math.inf, low_open=True, high_open=True)
  require(config.partition.scheme in partition_lib.SCHEMES, "partition.scheme",
           f"must be one of {partition_lib.SCHEMES}", config.partition.scheme)
  positive_int(config, "partition.num_clients", 0)
  for field in ("partition.alpha", "partition.beta"):
    number(config, field, 0.0, math.inf, low_open=True, high_open=True)
  require(config.fl.algorithm in ALGORITHMS, "fl.algorithm", f"must be one of {ALGORITHMS}", config.fl.algorithm)
  positive_int(config, "fl.clients_per_round")
  number(config, "fl.client_learning_rate", 0.0, math.inf, low_open=True, high_open=True)
  positive_int(config, "fl.num_epochs", 0)
  positive_int(config, "fl.batch_size", 0)
  positive_int(config, "fl.num_steps", 0)
  require(config.fl.num_epochs > 0 or config.fl.num_steps > 0, "fl.num_epochs",
           "must be >= 1 when fl.num_steps is 0", config.fl.num_epochs)
  number(config, "fl.prox_mu", 0.0, math.inf, high_open=True)
  if config.fl.algorithm == "fedprox":
    require(config.fl.prox_mu > 0, "fl.prox_mu", "must be > 0 for fedprox", config.fl.prox_mu)
  require(config.fl.server_optimizer in SERVER_OPTIMIZERS, "fl.server_optimizer",
           f"must be one of {SERVER_OPTIMIZERS}", config.fl.server_optimizer)
  if config.fl.algorithm == "fedopt":
    require(config.fl.server_optimizer != "sgd", "fl.server_optimizer",
             "must be adam, yogi or adagrad for fedopt", config.fl.server_optimizer)
  number(config, "fl.server_learning_rate", 0.0, math.inf, low_open=True, high_open=True)
  positive_int(config, "fl.chunk_size", 0)
  s = config.selection
  require(s.scheme in SCHEMES, "selection.scheme", f"must be one of {SCHEMES}", s.scheme)
  require(s.weighting in WEIGHTINGS, "selection.weighting", f"must be one of {WEIGHTINGS}", s.weighting)
  number(config, "selection.cap_ratio", 1.0, math.inf, high_open=True)
  number(config, "selection.reference_examples", 0.0, math.inf, high_open=True)
  number(config, "selection.dropout", 0.0, 1.0, high_open=True)
  require(s.dropout_mode in DROPOUT_MODES, "selection.dropout_mode", f"must be one of {DROPOUT_MODES}",
           s.dropout_mode)
  if config.continual.enabled:
    require(config.data.num_periods >= 2, "data.num_periods", "must be >= 2 when continual.enabled",
             config.data.num_periods)
    positive_int(config, "continual.storage_budget", 0)
    require(config.fl.rounds % config.data.num_periods == 0, "fl.rounds",
             f"must be a multiple of data.num_periods={config.data.num_periods} when continual.enabled",
             config.fl.rounds)
  dp = config.dp
  if dp.enabled:
    from projects.fedlearn import privacy  # pylint: disable=import-outside-toplevel
    number(config, "dp.target_epsilon", 0.0, math.inf, low_open=True, high_open=True)
    number(config, "dp.delta", 0.0, 1.0, low_open=True, high_open=True)
    number(config, "dp.clip_norm", 0.0, math.inf, low_open=True, high_open=True)
    number(config, "dp.noise_multiplier", 0.0, math.inf, high_open=True)
    number(config, "dp.target_quantile", 0.0, 1.0)
    number(config, "dp.clip_learning_rate", 0.0, math.inf, high_open=True)
    number(config, "dp.count_noise_std", 0.0, math.inf, high_open=True)
    if dp.adaptive and dp.noise_multiplier > 0:
      count_std = dp.count_noise_std or config.fl.clients_per_round * (1 - s.dropout) / 20
      require(2 * count_std > dp.noise_multiplier, "dp.count_noise_std",
               f"(default: expected clients / 20) must exceed dp.noise_multiplier / 2 = {dp.noise_multiplier / 2:g}",
               count_std)
    require(dp.accountant in ("rdp", "pld"), "dp.accountant", "must be 'rdp' or 'pld'", dp.accountant)
    require(isinstance(dp.insecure_reproducible_noise, bool), "dp.insecure_reproducible_noise", "must be a bool",
             dp.insecure_reproducible_noise)
    try:
      privacy.check_partition(config.partition.scheme)
    except ValueError as e:
      raise ValueError(f"config.partition.scheme={config.partition.scheme!r} with dp.enabled: {e}") from None
    require(config.fl.algorithm != "scaffold", "fl.algorithm",
             "must not be scaffold with dp.enabled (control variates are released without noise)",
             config.fl.algorithm)
    try:
      privacy.check_scheme(s.scheme, accountant=dp.accountant, dropout=s.dropout, dropout_mode=s.dropout_mode)
    except ValueError as e:
      raise ValueError(f"config.selection.scheme={s.scheme!r} with dp.enabled: {e}") from None
  if config.kind == "centralized":
    positive_int(config, "centralized.epochs")
    positive_int(config, "centralized.batch_size")
    number(config, "centralized.learning_rate", 0.0, math.inf, low_open=True, high_open=True)


def _merge(base, overrides) -> Any:
  """A copy of `base` with the nested values of `overrides` set (unknown keys are errors)."""
  values = base.to_dict()
  values.pop("runs", None)
  out = ml_collections.ConfigDict(values)

  def put(target, values, prefix):
    for key, value in values.items():
      if key not in target:
        raise ValueError(f"config.runs: unknown field {prefix}{key}")
      if isinstance(value, (dict, ml_collections.ConfigDict)) and isinstance(target[key], ml_collections.ConfigDict):
        put(target[key], value, f"{prefix}{key}.")
      else:
        target[key] = value

  put(out, overrides, "")
  return out


def sub_runs(config) -> list[tuple[str, Any]]:
  """(name, merged config) of every sub-run, each validated before any work starts.

  Example:
    >>> [name for name, _ in sub_runs(config)]
  """
  runs = config.get("runs") or {"main": {}}
  order = list(config.get("run_order") or ())  # ConfigDict sorts its keys; this keeps the intended order.
  unknown = [n for n in order if n not in runs]
  if unknown:
    raise ValueError(f"config.run_order names runs not in config.runs: {unknown}")
  names = order + [n for n in runs.keys() if n not in order]
  merged = []
  for name in names:
    overrides = runs[name]
    cfg = _merge(config, overrides)
    try:
      validate(cfg)
    except ValueError as e:
      raise ValueError(f"run {name!r}: {e}") from None
    merged.append((name, cfg))
  return merged
