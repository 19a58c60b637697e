"""espeak-ng speech synthesis through ctypes, from the `espeakng-loader` wheel.

No system package is needed: the wheel ships `libespeak-ng.so` and its voice data.

Two things make espeak-ng output vary, and both are pinned down for byte-exact
determinism:
  * its own random generator (breathiness noise of variants such as +f2, +f3, +f5) is
    seeded before every utterance (`espeak_ng_SetRandSeed`);
  * it keeps hidden state between utterances (the waveform generator carries phase and
    flutter counters over), so the corpus builder synthesizes each speaker in a fresh
    process and always in the same order.

Example:
  >>> synth = Synthesizer()
  >>> audio = synth.synthesize("three four", voice="en-us+f2", rate=170, pitch=60)
  >>> audio.dtype, synth.sample_rate
  (dtype('int16'), 22050)
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

# espeak_AUDIO_OUTPUT / espeak_PARAMETER / flag values from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_CHARS_UTF8 = 1
_POS_CHARACTER = 1

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

_lock = threading.Lock()
_instance: "Synthesizer | None" = None


class EspeakError(RuntimeError):
  """espeak-ng returned an error code."""


class Synthesizer:
  """One espeak-ng engine per process (the C library is a process singleton)."""

  def __init__(self):
    global _instance
    import espeakng_loader  # pylint: disable=import-outside-toplevel

    with _lock:
      if _instance is not None:
        self.__dict__ = _instance.__dict__
        return
      self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
      self._lib.espeak_Initialize.restype = ctypes.c_int
      self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
      self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
      data_path = espeakng_loader.get_data_path().encode()
      rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0)
      if rate <= 0:
        raise EspeakError(f"espeak_Initialize failed for data path {data_path!r}")
      self.sample_rate = int(rate)
      self._chunks: list[np.ndarray] = []
      # Keep a reference: ctypes callbacks must outlive their registration.
      self._callback = _CALLBACK(self._on_samples)
      self._lib.espeak_SetSynthCallback(self._callback)
      _instance = self

  def _on_samples(self, wav, num_samples, _events):
    if num_samples > 0:
      self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
    return 0

  def synthesize(
      self,
      text: str,
      *,
      voice: str = "en-us",
      rate: int = 175,
      pitch: int = 50,
      pitch_range: int = 50,
      seed: int = 0,
  ) -> np.ndarray:
    """Synthesizes `text` and returns int16 samples at `self.sample_rate`.

    Args:
      text: UTF-8 text to speak.
      voice: espeak-ng voice name, optionally with a variant ("en-gb-scotland+f3").
      rate: speaking rate in words per minute (80..450).
      pitch: base pitch, 0..100.
      pitch_range: pitch range, 0..100.
      seed: seed of espeak-ng's noise generator for this utterance.

    Returns:
      A 1-D int16 array.
    """
    with _lock:
      if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise EspeakError(f"unknown espeak-ng voice {voice!r}")
      for param, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch),
                           (_PARAM_RANGE, pitch_range), (_PARAM_VOLUME, 100)):
        self._lib.espeak_SetParameter(param, int(value), 0)
      self._lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
      self._chunks = []
      data = text.encode("utf-8")
      status = self._lib.espeak_Synth(
          ctypes.c_char_p(data), ctypes.c_size_t(len(data) + 1), 0, _POS_CHARACTER,
          0, _CHARS_UTF8, None, None)
      if status != 0:
        raise EspeakError(f"espeak_Synth failed with status {status} on {text!r}")
      self._lib.espeak_Synchronize()
      chunks, self._chunks = self._chunks, []
    if not chunks:
      return np.zeros((0,), np.int16)
    return np.concatenate(chunks).astype(np.int16, copy=False)
