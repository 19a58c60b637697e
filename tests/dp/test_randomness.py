"""DpRandomness: secret by default (never a function of a published seed), reproducible only on request."""

import jax
import numpy as np
import pytest

from libs.dp import DpRandomness


def test_default_is_secret_fresh_and_purpose_separated():
  a, b = DpRandomness(), DpRandomness.from_config(0, False)
  assert a.secure and b.secure and a.describe() == b.describe() == "os-secret"
  assert a.seed("noise") != b.seed("noise")  # a fresh secret per instance (2^-63 chance of a clash)
  assert a.seed("noise") != a.seed("sampling")
  assert a.seed("noise") == a.seed("noise")  # stable within a run
  # Never the published seed's stream.
  assert a.seed("noise") != DpRandomness(0).seed("noise")
  assert not np.array_equal(jax.random.key_data(a.key("noise")), jax.random.key_data(jax.random.key(0)))


def test_reproducible_mode_is_labelled_insecure_and_repeats():
  a, b = DpRandomness.from_config(7, True), DpRandomness.from_config(7, True)
  assert not a.secure and a.describe() == "reproducible-insecure"
  assert a.seed("noise") == b.seed("noise") != DpRandomness.from_config(8, True).seed("noise")
  np.testing.assert_array_equal(jax.random.key_data(a.key("noise")), jax.random.key_data(b.key("noise")))
  draws = [float(jax.random.normal(DpRandomness(7).key(p))) for p in ("noise", "sampling")]
  assert draws[0] != draws[1]


def test_flag_must_be_a_bool():
  with pytest.raises(ValueError, match="insecure_reproducible_noise must be a bool"):
    DpRandomness.from_config(0, "yes")


def test_keys_carry_64_secret_bits():
  """jax.random.key(seed) keeps only 32 bits of a seed without x64; DP keys must not."""
  data = [np.asarray(jax.random.key_data(DpRandomness().key("noise"))) for _ in range(64)]
  assert all(d.shape == (2,) and d.dtype == np.uint32 for d in data)
  high_words = {int(d[0]) for d in data}
  assert len(high_words) > 60  # the high word is random too, not 0
  assert len({(int(d[0]), int(d[1])) for d in data}) == 64
