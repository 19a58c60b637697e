"""Speakers, recording conditions and synthesis of the embedded multi-accent corpus.

Pure NumPy/SciPy on the host. `libs.data.synthetic_speech` wraps this in a TFDS builder.

A speaker is an espeak-ng accent, a voice variant (which fixes the gender), a pitch, a
pitch range and a speaking rate, plus a region and a home location drawn around the
region's centre: the accent's real region, or with `CorpusSpec(regions="mixed")` a
region of `libs.data.regions.REGIONS` drawn from where the accent's speakers live.
Every utterance then gets its own recording condition: a channel (clean, a short
synthetic room impulse response, or telephone band-limiting), additive noise of a
random colour at a random SNR, and a gain. Everything derives from
`np.random.default_rng((seed, speaker_id, ...))`, and espeak-ng is reset to its
start-up state before every speaker (`libs.data.espeak.Synthesizer.reset`), so a
speaker's audio is the same to the byte whichever process synthesizes it and whatever
it synthesized before.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import numpy as np
from scipy import signal

from libs.data import grammar as grammar_lib
from libs.data import regions as regions_lib

SAMPLE_RATE = 16000


@dataclasses.dataclass(frozen=True)
class Accent:
  """An English accent espeak-ng ships, with the region its speakers come from."""
  name: str  # BCP-47-like tag stored in the data set, e.g. "en-GB-scotland".
  voice: str  # espeak-ng voice name.
  region: str
  latitude: float
  longitude: float
  spread_deg: float  # std of home locations around the region centre, in degrees.
  train_share: float  # share of training speakers; unequal on purpose.


ACCENTS: tuple[Accent, ...] = (
    Accent("en-US", "en-us", "US Midwest", 39.8, -89.6, 3.0, 0.32),
    Accent("en-GB-x-rp", "en-gb-x-rp", "South East England", 51.5, -0.13, 0.6, 0.22),
    Accent("en-US-nyc", "en-us-nyc", "New York City", 40.71, -74.0, 0.15, 0.14),
    Accent("en-GB-scotland", "en-gb-scotland", "Scotland", 56.1, -3.9, 0.8, 0.12),
    Accent("en-GB-x-gbclan", "en-gb-x-gbclan", "Lancashire", 53.8, -2.6, 0.3, 0.09),
    Accent("en-GB-x-gbcwmd", "en-gb-x-gbcwmd", "West Midlands", 52.48, -1.9, 0.25, 0.07),
    Accent("en-029", "en-029", "Caribbean", 18.1, -77.3, 0.5, 0.04),
)
ACCENT_NAMES = tuple(a.name for a in ACCENTS)

# espeak-ng voice variants by gender.
VARIANTS = {
    "male": ("m1", "m2", "m3", "m4", "m5", "m6", "m7"),
    "female": ("f1", "f2", "f3", "f4", "f5"),
}
CHANNELS = ("clean", "room", "telephone")
REGION_MODES = ("accent", "mixed")
_CHANNEL_PROBS = (0.6, 0.25, 0.15)
NOISE_COLOURS = ("white", "pink", "brown")


@dataclasses.dataclass(frozen=True)
class Speaker:
  speaker_id: int
  split: str
  accent: str
  voice: str  # espeak voice with variant, e.g. "en-gb-scotland+f3".
  gender: str
  pitch: int
  pitch_range: int
  rate: int
  latitude: float
  longitude: float
  region: str


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  """What to generate; the TFDS builder configs are instances of this.

  Attributes:
    grammar: name of a transcript grammar in `libs.data.grammar.GRAMMARS`.
    train_speakers: training speakers, split over the accents by their `train_share`
      (renormalised over `accents`).
    dev_speakers_per_accent: dev speakers of every generated accent (unless
      `dev_speakers` > 0).
    test_speakers_per_accent: test speakers of every generated accent (unless
      `test_speakers` > 0).
    train_utterances_per_speaker: utterances of every training speaker.
    eval_utterances_per_speaker: utterances of every dev and test speaker.
    snr_db: (low, high) range of the uniform signal-to-noise ratio, in dB.
    seed: root seed of speakers, transcripts and recording conditions.
    accents: names (from `ACCENT_NAMES`) of the accents to generate; () generates all.
      A speaker's voice depends only on the seed, split, accent and its index within
      the accent, not on which other accents are generated.
    channel_probs: probabilities of the `CHANNELS` (clean, room, telephone); None for
      the default mix (0.6, 0.25, 0.15).
    speaker_id_offset: added to every speaker id (ids are otherwise 0, 1, ...), so that
      corpora meant to be used together have disjoint speaker ids.
    regions: where speakers live. "accent": a speaker's region is its accent's region
      and its home is drawn around the accent's centre (one region per accent).
      "mixed": its region is drawn from the accent's weights in
      `libs.data.regions.REGIONS` and its home around that region's centre, so regions
      and accents are different cohorts; voices, pitches and rates are the same as
      under "accent".
    dev_speakers: if > 0, the dev split has this many speakers, split over the accents
      by `train_share` as the train split is (`allocate`), so that its accent mix is the
      population's and rare accents stay rare; 0 uses `dev_speakers_per_accent`. At
      least one speaker per generated accent.
    test_speakers: likewise for the test split.

  Example:
    >>> spec = CorpusSpec(regions="mixed", train_speakers=100, dev_speakers=30)
    >>> [len(v) for v in make_speakers(spec).values()]
    [100, 30, 14]
  """
  grammar: str = "digits"
  train_speakers: int = 40
  dev_speakers_per_accent: int = 1
  test_speakers_per_accent: int = 2
  train_utterances_per_speaker: int = 60
  eval_utterances_per_speaker: int = 30
  snr_db: tuple[float, float] = (10.0, 35.0)
  seed: int = 0
  accents: tuple[str, ...] = ()
  channel_probs: tuple[float, float, float] | None = None
  speaker_id_offset: int = 0
  regions: str = "accent"
  dev_speakers: int = 0
  test_speakers: int = 0

  def __post_init__(self):
    if self.grammar not in grammar_lib.GRAMMARS:
      raise ValueError(f"grammar must be one of {sorted(grammar_lib.GRAMMARS)}, got {self.grammar!r}")
    if self.train_speakers < 1:
      raise ValueError(f"train_speakers must be >= 1, got {self.train_speakers}")
    for name in ("dev_speakers_per_accent", "test_speakers_per_accent",
                 "train_utterances_per_speaker", "eval_utterances_per_speaker"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    lo, hi = self.snr_db
    if not lo <= hi:
      raise ValueError(f"snr_db must be (low, high) with low <= high, got {self.snr_db}")
    if isinstance(self.accents, str):
      raise ValueError(f"accents must be a tuple of accent names, not the string {self.accents!r}")
    object.__setattr__(self, "accents", tuple(self.accents))
    unknown = [a for a in self.accents if a not in ACCENT_NAMES]
    if unknown:
      raise ValueError(f"accents must be among {ACCENT_NAMES}, got unknown {unknown}")
    if len(set(self.accents)) != len(self.accents):
      raise ValueError(f"accents must not repeat, got {self.accents}")
    if self.channel_probs is not None:
      probs = tuple(self.channel_probs)
      if (len(probs) != len(CHANNELS) or not all(math.isfinite(p) and p >= 0 for p in probs)
          or abs(sum(probs) - 1.0) > 1e-6):
        raise ValueError(f"channel_probs must be {len(CHANNELS)} non-negative probabilities of "
                         f"{CHANNELS} summing to 1, got {self.channel_probs}")
      object.__setattr__(self, "channel_probs", tuple(float(p) for p in probs))
    if isinstance(self.speaker_id_offset, bool) or not isinstance(self.speaker_id_offset, int):
      raise ValueError(f"speaker_id_offset must be an int, got {self.speaker_id_offset!r}")
    if self.regions not in REGION_MODES:
      raise ValueError(f"regions must be one of {REGION_MODES}, got {self.regions!r}")
    num_accents = len(self.accents or ACCENT_NAMES)
    for name in ("dev_speakers", "test_speakers"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or not (value == 0 or value >= num_accents):
        raise ValueError(f"{name} must be 0 (use {name}_per_accent) or an int >= the {num_accents} "
                         f"generated accents (one speaker of each at least), got {value!r}")
    total = sum(self.split_sizes.values())
    if not 0 <= self.speaker_id_offset <= 2**31 - 1 - total:
      raise ValueError(f"speaker_id_offset must be in [0, {2**31 - 1 - total}] so that the "
                       f"{total} speaker ids fit in int32, got {self.speaker_id_offset}")

  @property
  def accent_indices(self) -> tuple[int, ...]:
    """Indices into `ACCENTS` of the generated accents, in `ACCENTS` order."""
    return tuple(i for i, a in enumerate(ACCENTS) if not self.accents or a.name in self.accents)

  @property
  def accent_counts(self) -> dict[str, list[int]]:
    """Split -> number of speakers of each accent of `accent_indices`."""
    indices = self.accent_indices
    shares = [ACCENTS[i].train_share for i in indices]
    def eval_split(total: int, per_accent: int) -> list[int]:
      return allocate(total, shares) if total > 0 else [per_accent] * len(indices)
    return {
        "train": allocate(self.train_speakers, shares),
        "dev": eval_split(self.dev_speakers, self.dev_speakers_per_accent),
        "test": eval_split(self.test_speakers, self.test_speakers_per_accent),
    }

  @property
  def split_sizes(self) -> dict[str, int]:
    """Split -> number of speakers."""
    return {split: sum(counts) for split, counts in self.accent_counts.items()}


def allocate(total: int, shares: Sequence[float]) -> list[int]:
  """Splits `total` into integer parts proportional to `shares` (largest remainder).

  Every part gets at least one when `total >= len(shares)`, so rare accents stay present.
  """
  shares = np.asarray(shares, np.float64) / np.sum(shares)
  minimum = 1 if total >= len(shares) else 0
  rest = total - minimum * len(shares)
  raw = shares * rest
  parts = np.floor(raw).astype(int)
  order = np.argsort(-(raw - parts), kind="stable")
  parts[order[: rest - parts.sum()]] += 1
  return [int(p) + minimum for p in parts]


def make_speakers(spec: CorpusSpec) -> dict[str, list[Speaker]]:
  """All speakers of the corpus by split; ids are unique across splits.

  Example:
    >>> speakers = make_speakers(CorpusSpec(regions="mixed"))
    >>> [len(v) for v in speakers.values()], speakers["train"][0].accent
    ([40, 7, 14], 'en-US')
  """
  indices = spec.accent_indices
  per_split = spec.accent_counts
  speakers: dict[str, list[Speaker]] = {}
  next_id = spec.speaker_id_offset
  for split_index, (split, counts) in enumerate(per_split.items()):
    speakers[split] = []
    for accent_index, count in zip(indices, counts):
      accent = ACCENTS[accent_index]
      for k in range(count):
        rng = np.random.default_rng((spec.seed, 1, split_index, accent_index, k))
        # Alternate genders within an accent so no accent is single-gender by chance.
        gender = ("female", "male")[(k + accent_index + split_index) % 2]
        variant = VARIANTS[gender][int(rng.integers(len(VARIANTS[gender])))]
        pitch = int(rng.integers(30, 56) if gender == "male" else rng.integers(45, 76))
        pitch_range = int(rng.integers(30, 71))
        rate = int(rng.integers(145, 196))
        # The location draws come last, so "mixed" changes only where a speaker lives.
        if spec.regions == "accent":
          region, centre_lat, centre_lon, spread = (accent.region, accent.latitude, accent.longitude,
                                                    accent.spread_deg)
        else:
          names, probs = regions_lib.accent_regions(accent.name)
          home = regions_lib.REGIONS_BY_NAME[names[int(rng.choice(len(names), p=probs))]]
          region, centre_lat, centre_lon, spread = (home.name, home.latitude, home.longitude,
                                                    home.spread_deg)
        latitude = float(centre_lat + spread * rng.standard_normal())
        longitude = float(centre_lon + spread * rng.standard_normal())
        speakers[split].append(Speaker(
            speaker_id=next_id,
            split=split,
            accent=accent.name,
            voice=f"{accent.voice}+{variant}",
            gender=gender,
            pitch=pitch,
            pitch_range=pitch_range,
            rate=rate,
            latitude=latitude,
            longitude=longitude,
            region=region,
        ))
        next_id += 1
  return speakers


def _coloured_noise(rng: np.random.Generator, n: int, colour: str) -> np.ndarray:
  white = rng.standard_normal(n)
  if colour == "white":
    return white
  # Shape the spectrum: 1/f power (pink) or 1/f^2 (brown).
  spectrum = np.fft.rfft(white)
  freqs = np.maximum(np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE), 20.0)
  spectrum /= np.sqrt(freqs) if colour == "pink" else freqs
  return np.fft.irfft(spectrum, n)


def _room_impulse(rng: np.random.Generator) -> tuple[np.ndarray, float]:
  """A short synthetic room impulse: direct path plus exponentially decaying noise."""
  rt60 = float(rng.uniform(0.15, 0.5))
  n = int(rt60 * SAMPLE_RATE)
  t = np.arange(n) / SAMPLE_RATE
  tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60.
  tail[: int(0.002 * SAMPLE_RATE)] = 0.0  # A little gap before the first reflections.
  rir = 0.4 * tail / np.sqrt(np.sum(tail**2))
  rir[0] = 1.0
  return rir, rt60


@functools.lru_cache(maxsize=8)
def _resampling_filter(up: int, down: int) -> np.ndarray:
  """The low-pass FIR filter `signal.resample_poly(x, up, down)` designs on every call.

  Designing it once per rate pair (an 8821-tap Kaiser window for 22050 -> 16000 Hz) and
  passing it as `window` gives the same output, without the per-utterance design.
  """
  max_rate = max(up, down)
  half_len = 10 * max_rate
  taps = signal.firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0))
  taps.flags.writeable = False
  return taps


def resample(x: np.ndarray, source_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
  """Polyphase resampling of float64 `x`, as `signal.resample_poly` with its default filter."""
  g = math.gcd(target_rate, source_rate)
  up, down = target_rate // g, source_rate // g
  if up == down:
    return np.array(x, np.float64)
  return signal.resample_poly(x, up, down, window=_resampling_filter(up, down))


_TELEPHONE_SOS = signal.butter(4, (300.0, 3400.0), btype="bandpass", fs=SAMPLE_RATE, output="sos")


def record(
    rng: np.random.Generator,
    speech: np.ndarray,
    source_rate: int,
    snr_range: tuple[float, float],
    channel_probs: Sequence[float] | None = None,
) -> tuple[np.ndarray, dict]:
  """Resamples clean synthetic speech to 16 kHz and applies a random recording condition.

  Args:
    rng: the utterance's generator; every draw of the condition comes from it.
    speech: int16 samples at `source_rate`.
    source_rate: sample rate of `speech`, in Hz.
    snr_range: (low, high) of the uniform SNR, in dB.
    channel_probs: probabilities of `CHANNELS`; None for the default mix.

  Returns:
    (int16 audio at 16 kHz, condition metadata).
  """
  x = resample(speech.astype(np.float64) / 32768.0, source_rate)
  probs = _CHANNEL_PROBS if channel_probs is None else channel_probs
  channel = CHANNELS[rng.choice(len(CHANNELS), p=probs)]
  if channel == "room":
    rir, _ = _room_impulse(rng)
    x = signal.fftconvolve(x, rir)[: len(x) + len(rir) // 4]
  elif channel == "telephone":
    x = signal.sosfilt(_TELEPHONE_SOS, x)
  # Leading/trailing silence as in a real recording; the noise fills it.
  lead, trail = (int(rng.uniform(0.05, 0.3) * SAMPLE_RATE) for _ in range(2))
  x = np.concatenate([np.zeros(lead), x, np.zeros(trail)])
  speech_power = np.mean(x[lead: len(x) - trail] ** 2) + 1e-12
  snr_db = float(rng.uniform(*snr_range))
  colour = NOISE_COLOURS[int(rng.integers(len(NOISE_COLOURS)))]
  noise = _coloured_noise(rng, len(x), colour)
  noise *= np.sqrt(speech_power / (np.mean(noise**2) + 1e-12) / 10 ** (snr_db / 10))
  x = x + noise
  gain_db = float(rng.uniform(-20.0, -1.0))  # peak level relative to full scale.
  x *= 10 ** (gain_db / 20) / (np.max(np.abs(x)) + 1e-12)
  audio = np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)
  return audio, {"channel": channel, "snr_db": snr_db, "noise": colour, "gain_db": gain_db}


def utterance_id(speaker: Speaker, index: int) -> str:
  return f"{speaker.split}-spk{speaker.speaker_id:04d}-utt{index:04d}"


def synthesize_speaker(spec: CorpusSpec, speaker: Speaker, num_utterances: int) -> list[tuple[str, dict]]:
  """All utterances of one speaker as (key, example) pairs, in order.

  Resets espeak-ng first (see `libs.data.espeak` on its hidden state), so the result
  depends only on the arguments: not on the process, nor on what it synthesized before.
  """
  from libs.data import espeak  # pylint: disable=import-outside-toplevel

  synth = espeak.Synthesizer()
  synth.reset()
  make_text = grammar_lib.GRAMMARS[spec.grammar]
  examples = []
  for index in range(num_utterances):
    rng = np.random.default_rng((spec.seed, 2, speaker.speaker_id, index))
    text = make_text(rng)
    rate = int(round(speaker.rate * rng.uniform(0.93, 1.07)))
    clean = synth.synthesize(text, voice=speaker.voice, rate=rate, pitch=speaker.pitch,
                             pitch_range=speaker.pitch_range, seed=int(rng.integers(2**31)))
    audio, condition = record(rng, clean, synth.sample_rate, spec.snr_db, spec.channel_probs)
    key = utterance_id(speaker, index)
    examples.append((key, {
        "audio": audio,
        "transcript": text,
        "utterance_id": key,
        "speaker_id": np.int32(speaker.speaker_id),
        "accent": speaker.accent,
        "gender": speaker.gender,
        "voice": speaker.voice,
        "latitude": np.float32(speaker.latitude),
        "longitude": np.float32(speaker.longitude),
        "region": speaker.region,
        "channel": condition["channel"],
        "snr_db": np.float32(condition["snr_db"]),
        "gain_db": np.float32(condition["gain_db"]),
    }))
  return examples


def synthesize_task(task: tuple[CorpusSpec, Speaker, int]) -> list[tuple[str, dict]]:
  """`synthesize_speaker(*task)`, for worker pools (lives here so that workers need not
  import the TFDS builder module)."""
  return synthesize_speaker(*task)
