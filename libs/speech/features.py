"""Log-mel filterbank features in JAX, with utterance normalization and SpecAugment.

Everything here runs under `jax.jit` on padded batches: audio [B, N] with sample
lengths [B] gives features [B, F, num_mels] with frame lengths [B]. Frames past an
utterance's length are zero after normalization and are masked by the lengths.

Example:
  >>> cfg = FeatureConfig()
  >>> feats, lens = jax.jit(functools.partial(log_mel, config=cfg))(audio, audio_lengths)
  >>> feats.shape  # [B, num_frames(N), 80]
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
  sample_rate: int = 16000
  frame_ms: float = 25.0
  hop_ms: float = 10.0
  num_mels: int = 80
  fmin: float = 20.0
  fmax: float = 7600.0
  preemphasis: float = 0.97

  @property
  def frame_length(self) -> int:
    return int(round(self.sample_rate * self.frame_ms / 1000))

  @property
  def hop_length(self) -> int:
    return int(round(self.sample_rate * self.hop_ms / 1000))

  @property
  def fft_size(self) -> int:
    return 1 << (self.frame_length - 1).bit_length()


def num_frames(num_samples, config: FeatureConfig = FeatureConfig()):
  """Frames a signal of `num_samples` yields (works on ints and NumPy/JAX arrays)."""
  frames = 1 + (num_samples - config.frame_length) // config.hop_length
  return np.maximum(frames, 0) if isinstance(frames, np.ndarray | int) else jnp.maximum(frames, 0)


def _hz_to_mel(f):
  return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m):
  return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def mel_filterbank(config: FeatureConfig = FeatureConfig()) -> np.ndarray:
  """Triangular HTK-mel filters, [fft_size // 2 + 1, num_mels], float32."""
  bins = config.fft_size // 2 + 1
  fft_freqs = np.linspace(0.0, config.sample_rate / 2, bins)
  edges = _mel_to_hz(np.linspace(_hz_to_mel(config.fmin), _hz_to_mel(config.fmax), config.num_mels + 2))
  lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  rising = (fft_freqs[None] - lower) / (centre - lower)
  falling = (upper - fft_freqs[None]) / (upper - centre)
  return np.maximum(0.0, np.minimum(rising, falling)).T.astype(np.float32)


def log_mel(audio: jnp.ndarray, lengths: jnp.ndarray, *, config: FeatureConfig = FeatureConfig(),
            normalize: bool = True) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Log-mel features of a padded batch.

  Args:
    audio: [B, N] waveform, float in [-1, 1] or int16 (scaled to [-1, 1]).
    lengths: [B] number of valid samples.
    config: frame and filterbank settings.
    normalize: subtract the per-utterance mean and divide by the std of each mel bin
      over the valid frames.

  Returns:
    (features [B, F, num_mels] float32, frame lengths [B] int32).
  """
  if audio.ndim != 2:
    raise ValueError(f"audio must be [batch, samples], got shape {audio.shape}")
  if audio.dtype == jnp.int16:
    audio = audio.astype(jnp.float32) / 32768.0
  audio = audio.astype(jnp.float32)
  sample_mask = jnp.arange(audio.shape[1])[None] < lengths[:, None]
  audio = jnp.where(sample_mask, audio, 0.0)
  if config.preemphasis:
    audio = jnp.concatenate([audio[:, :1], audio[:, 1:] - config.preemphasis * audio[:, :-1]], axis=1)
  total = int(num_frames(audio.shape[1], config))
  if total <= 0:
    raise ValueError(f"audio of {audio.shape[1]} samples is shorter than one frame "
                     f"({config.frame_length} samples)")
  index = (np.arange(total)[:, None] * config.hop_length + np.arange(config.frame_length)[None])
  frames = audio[:, index]  # [B, F, frame_length]
  frames = frames - jnp.mean(frames, axis=-1, keepdims=True)  # Remove DC per frame.
  window = np.hanning(config.frame_length + 1)[:-1].astype(np.float32)  # Periodic Hann.
  spectrum = jnp.fft.rfft(frames * window, n=config.fft_size)
  power = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
  mel = jnp.log(power @ mel_filterbank(config) + 1e-6)
  frame_lengths = num_frames(lengths, config).astype(jnp.int32)
  if normalize:
    mel = normalize_utterance(mel, frame_lengths)
  return mel, frame_lengths


def normalize_utterance(features: jnp.ndarray, lengths: jnp.ndarray, eps: float = 1e-5) -> jnp.ndarray:
  """Per-utterance, per-bin mean/variance normalization over valid frames; padding -> 0."""
  mask = (jnp.arange(features.shape[1])[None] < lengths[:, None])[..., None]
  count = jnp.maximum(lengths, 1)[:, None, None].astype(features.dtype)
  mean = jnp.sum(jnp.where(mask, features, 0.0), axis=1, keepdims=True) / count
  var = jnp.sum(jnp.where(mask, (features - mean) ** 2, 0.0), axis=1, keepdims=True) / count
  return jnp.where(mask, (features - mean) * jax.lax.rsqrt(var + eps), 0.0)


@dataclasses.dataclass(frozen=True)
class SpecAugmentConfig:
  """SpecAugment (Park et al. 2019) without time warping."""
  num_freq_masks: int = 2
  max_freq_width: int = 15
  num_time_masks: int = 2
  max_time_width: int = 25
  max_time_fraction: float = 0.1  # A time mask covers at most this share of the utterance.


def spec_augment(key: jax.Array, features: jnp.ndarray, lengths: jnp.ndarray,
                 config: SpecAugmentConfig = SpecAugmentConfig()) -> jnp.ndarray:
  """Zeroes random frequency bands and time spans of each utterance (features are normalized,
  so zero is the mean)."""
  batch, frames, bins = features.shape
  freq_key, time_key = jax.random.split(key)

  def masks(key, count, max_width, size, limit):
    width_key, start_key = jax.random.split(key)
    width = jax.random.randint(width_key, (batch, count), 0, max_width + 1)
    width = jnp.minimum(width, limit[:, None])
    start = (jax.random.uniform(start_key, (batch, count)) * jnp.maximum(size[:, None] - width, 1)).astype(jnp.int32)
    pos = jnp.arange(max(frames, bins))
    hit = (pos[None, None] >= start[..., None]) & (pos[None, None] < (start + width)[..., None])
    return jnp.any(hit, axis=1)  # [B, max(frames, bins)]

  freq_mask = masks(freq_key, config.num_freq_masks, config.max_freq_width,
                    jnp.full((batch,), bins), jnp.full((batch,), bins))[:, :bins]
  time_limit = (config.max_time_fraction * lengths).astype(jnp.int32)
  time_mask = masks(time_key, config.num_time_masks, config.max_time_width, lengths, time_limit)[:, :frames]
  keep = ~(freq_mask[:, None, :] | time_mask[:, :, None])
  return jnp.where(keep, features, 0.0)
