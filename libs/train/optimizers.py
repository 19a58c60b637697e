"""Optimizers built from a `config.train` section.

Example:
  >>> optimizer = make_optimizer(config.train)
  >>> state = TrainState.create(params, optimizer)
"""

from __future__ import annotations

import ml_collections
import optax


def make_optimizer(train_cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW under a warmup + cosine schedule, after clipping the global gradient norm.

  Reads `learning_rate`, `warmup_steps` (capped below `num_steps`), `num_steps`,
  `final_lr_fraction` (of the peak rate at the last step), `grad_clip_norm`, `weight_decay`.

  Example:
    >>> make_optimizer(ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=100,
    ...     num_steps=1000, final_lr_fraction=0.1, grad_clip_norm=5.0, weight_decay=1e-4)))
  """
  warmup = max(min(train_cfg.warmup_steps, train_cfg.num_steps - 1), 1)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, train_cfg.learning_rate, warmup, max(train_cfg.num_steps, warmup + 1),
      end_value=train_cfg.learning_rate * train_cfg.final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip_norm),
                     optax.adamw(schedule, weight_decay=train_cfg.weight_decay))
