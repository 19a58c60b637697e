"""Log-mel features against an independent float64 NumPy/SciPy reference, plus properties."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from libs.speech import features


def _reference_log_mel(x: np.ndarray, cfg: features.FeatureConfig) -> np.ndarray:
  """float64 reference built from scipy's framing/STFT machinery and a brute-force HTK mel bank."""
  x = x.astype(np.float64)
  x = np.concatenate([x[:1], x[1:] - cfg.preemphasis * x[:-1]])
  n = features.num_frames(len(x), cfg)
  frames = np.stack([x[i * cfg.hop_length: i * cfg.hop_length + cfg.frame_length] for i in range(n)])
  frames = frames - frames.mean(axis=1, keepdims=True)
  window = signal.get_window("hann", cfg.frame_length, fftbins=True)
  power = np.abs(np.fft.rfft(frames * window, n=cfg.fft_size)) ** 2
  mel = lambda f: 2595 * np.log10(1 + f / 700)
  inv = lambda m: 700 * (10 ** (m / 2595) - 1)
  edges = inv(np.linspace(mel(cfg.fmin), mel(cfg.fmax), cfg.num_mels + 2))
  freqs = np.arange(cfg.fft_size // 2 + 1) * cfg.sample_rate / cfg.fft_size
  bank = np.zeros((cfg.num_mels, len(freqs)))
  for m in range(cfg.num_mels):
    lo, c, hi = edges[m: m + 3]
    for k, f in enumerate(freqs):
      if lo < f <= c:
        bank[m, k] = (f - lo) / (c - lo)
      elif c < f < hi:
        bank[m, k] = (hi - f) / (hi - c)
  return np.log(power @ bank.T + 1e-6)


def test_log_mel_matches_float64_reference():
  cfg = features.FeatureConfig()
  rng = np.random.default_rng(0)
  t = np.arange(8000) / 16000
  x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))
  ours, lengths = features.log_mel(jnp.asarray(x[None], jnp.float32), jnp.array([len(x)]), config=cfg,
                                   normalize=False)
  ref = _reference_log_mel(x, cfg)
  assert ours.shape == (1, ref.shape[0], 80) and int(lengths[0]) == ref.shape[0]
  np.testing.assert_allclose(np.asarray(ours[0]), ref, atol=2e-3, rtol=1e-3)


def test_shapes_frame_counts_and_padding_invariance():
  cfg = features.FeatureConfig()
  rng = np.random.default_rng(1)
  a, b = rng.standard_normal(4000) * 0.1, rng.standard_normal(6400) * 0.1
  batch = np.zeros((2, 6400), np.float32)
  batch[0, :4000], batch[1] = a, b
  batch[0, 4000:] = 5.0  # garbage in the padding must not matter
  fn = jax.jit(functools.partial(features.log_mel, config=cfg))
  feats, lens = fn(batch, np.array([4000, 6400]))
  assert list(np.asarray(lens)) == [features.num_frames(4000), features.num_frames(6400)] == [23, 38]
  alone, _ = fn(a[None].astype(np.float32), np.array([4000]))
  np.testing.assert_allclose(np.asarray(feats[0, :23]), np.asarray(alone[0]), atol=1e-4)
  assert np.all(np.asarray(feats[0, 23:]) == 0.0)
  # Normalized: zero mean, unit variance per bin over valid frames.
  valid = np.asarray(feats[1])
  np.testing.assert_allclose(valid.mean(axis=0), 0.0, atol=1e-4)
  np.testing.assert_allclose(valid.std(axis=0), 1.0, atol=1e-2)


def test_int16_input_is_scaled():
  x = (np.random.default_rng(2).standard_normal(3200) * 3000).astype(np.int16)
  f16, _ = features.log_mel(jnp.asarray(x[None]), jnp.array([3200]), normalize=False)
  f32, _ = features.log_mel(jnp.asarray(x[None] / 32768.0, jnp.float32), jnp.array([3200]), normalize=False)
  np.testing.assert_allclose(np.asarray(f16), np.asarray(f32), atol=1e-4)


def test_too_short_audio_is_rejected():
  with pytest.raises(ValueError, match="shorter than one frame"):
    features.log_mel(jnp.zeros((1, 100)), jnp.array([100]))


def test_spec_augment_masks_bands_and_spans_only_within_length():
  cfg = features.SpecAugmentConfig(num_freq_masks=2, max_freq_width=10, num_time_masks=2,
                                   max_time_width=20, max_time_fraction=0.2)
  x = jnp.ones((4, 100, 80))
  lengths = jnp.array([100, 60, 30, 10])
  out = np.asarray(features.spec_augment(jax.random.key(0), x, lengths, cfg))
  zero = out == 0
  # A masked bin is masked at every frame; a masked frame at every bin.
  freq_masked = zero.all(axis=1)
  time_masked = zero.all(axis=2)
  assert np.array_equal(zero, freq_masked[:, None, :] | time_masked[:, :, None])
  assert (freq_masked.sum(axis=1) <= 20).all() and (time_masked.sum(axis=1) <= 2 * (0.2 * np.asarray(lengths))).all()
  # Different keys give different masks; the same key the same masks.
  again = np.asarray(features.spec_augment(jax.random.key(0), x, lengths, cfg))
  other = np.asarray(features.spec_augment(jax.random.key(1), x, lengths, cfg))
  assert np.array_equal(out, again) and not np.array_equal(out, other)
