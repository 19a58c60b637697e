"""espeak-ng speech synthesis through ctypes, from the `espeakng-loader` wheel.

No system package is needed: the wheel ships `libespeak-ng.so` and its voice data.

Two things make espeak-ng output vary, and both are pinned down for byte-exact
determinism:
  * its own random generator (breathiness noise of variants such as +f2, +f3, +f5) is
    seeded before every utterance (`espeak_ng_SetRandSeed`);
  * it keeps hidden state between utterances (the waveform generator carries phase and
    flutter counters over in static variables of the C library, which neither
    `espeak_Terminate` + `espeak_Initialize` nor selecting the voice again resets).
    `Synthesizer.reset` therefore unloads the library (`dlclose`, after checking that
    nothing else in the process holds it) and loads it again, which maps its static
    data afresh from the file: the engine is then exactly as in a newly started
    process, at the cost of a few milliseconds. The corpus builder resets before every
    speaker and synthesizes a speaker's utterances always in the same order.

Example:
  >>> synth = Synthesizer()
  >>> audio = synth.synthesize("three four", voice="en-us+f2", rate=170, pitch=60)
  >>> audio.dtype, synth.sample_rate
  (dtype('int16'), 22050)
  >>> synth.reset()   # the next utterance sounds as in a fresh process
"""

from __future__ import annotations

import _ctypes
import ctypes
import os
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


def _is_loaded(path: str) -> bool:
  """Whether the shared library at `path` is loaded in this process (without loading it)."""
  try:
    handle = _ctypes.dlopen(path, os.RTLD_NOLOAD | os.RTLD_LAZY)
  except OSError:
    return False
  _ctypes.dlclose(handle)
  return True


class Synthesizer:
  """One espeak-ng engine per process (the C library is a process singleton)."""

  def __init__(self):
    global _instance
    import espeakng_loader  # pylint: disable=import-outside-toplevel

    with _lock:
      if _instance is not None:
        self.__dict__ = _instance.__dict__
        return
      self._path = espeakng_loader.get_library_path()
      self._data_path = espeakng_loader.get_data_path().encode()
      self._chunks: list[np.ndarray] = []
      # Keep a reference: ctypes callbacks must outlive their registration.
      self._callback = _CALLBACK(self._on_samples)
      self._load()
      _instance = self

  def _load(self):
    """Loads and initializes the library; the caller holds `_lock`."""
    lib = ctypes.CDLL(self._path)
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data_path, 0)
    if rate <= 0:
      raise EspeakError(f"espeak_Initialize failed for data path {self._data_path!r}")
    self.sample_rate = int(rate)
    lib.espeak_SetSynthCallback(self._callback)
    self._lib = lib
    self._used = False  # No utterance since the library was loaded: its state is fresh.

  def reset(self) -> None:
    """Puts the engine back in the state of a freshly started process.

    Unloads the C library and loads it again, so its static variables (the hidden
    state carried between utterances) start from their initial values. A no-op when
    nothing was synthesized since the last load.

    Raises:
      EspeakError: the library cannot be unloaded, because something else in this
        process also loaded it (another `ctypes.CDLL` of the same file), or the
        platform has no `dlclose`.
    """
    with _lock:
      if not self._used:
        return
      if not hasattr(_ctypes, "dlclose"):
        raise EspeakError("Synthesizer.reset needs dlclose, which this platform lacks")
      self._lib.espeak_Terminate()
      handle, self._lib = self._lib._handle, None  # pylint: disable=protected-access
      _ctypes.dlclose(handle)
      still_loaded = _is_loaded(self._path)
      self._load()
      if still_loaded:
        self._used = True  # Loaded again, but not fresh.
        raise EspeakError(
            f"{self._path} is still loaded after dlclose: something else in this process "
            "holds it, so espeak-ng's hidden state cannot be reset; synthesize in a process "
            "that loads espeak-ng only through libs.data.espeak")

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
      self._used = True
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
