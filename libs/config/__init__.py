"""Config checks shared by every project: errors that name the field (`config.a.b ...`).

Example:
  >>> from libs.config import checks
  >>> checks.positive_int(config, "train.batch_size")   # ValueError: config.train.batch_size must be ...
"""
