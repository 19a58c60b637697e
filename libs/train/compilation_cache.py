"""Persistent XLA compilation cache, so reruns and later runs skip recompiling.

Example:
  >>> enable()  # $TSML_JAX_CACHE or <repo>/data/jax_cache; TSML_JAX_CACHE=off disables it.

Only programs that took at least $TSML_JAX_CACHE_MIN_SECONDS (default 1.0) to compile are
stored; the tests set 0 so that the entrypoint subprocesses of a test run share even their
small programs.
"""

from __future__ import annotations

import os

import jax

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def enable(directory: str | None = None) -> str | None:
  directory = directory or os.environ.get("TSML_JAX_CACHE") or os.path.join(_REPO_ROOT, "data", "jax_cache")
  if directory == "off":
    return None
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(os.environ.get("TSML_JAX_CACHE_MIN_SECONDS", "1.0")))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory
