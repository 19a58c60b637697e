"""Corpus generation: espeak-ng reset (what lets one worker synthesize many speakers
deterministically) and the CorpusSpec data-role fields (accents, channel_probs,
speaker_id_offset)."""

import collections
import ctypes
import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest

from libs.data import corpus, espeak, synthetic_speech

_CONFIGS = {c.name: c.spec for c in synthetic_speech.BUILDER_CONFIGS}


def _digest(examples) -> list[str]:
  """One hash per example over all its fields, audio bytes included."""
  out = []
  for key, example in examples:
    h = hashlib.sha256(key.encode())
    for name in sorted(example):
      h.update(name.encode() + np.asarray(example[name]).tobytes())
    out.append(h.hexdigest())
  return out


def test_reset_restores_espeak_start_up_state():
  """espeak-ng carries state between utterances; `reset` takes it back to start-up."""
  synth = espeak.Synthesizer()
  kwargs = dict(voice="en-gb-scotland+f3", rate=170, pitch=60, pitch_range=40, seed=123)
  synth.reset()
  first = synth.synthesize("four oh seven two", **kwargs)
  again = synth.synthesize("four oh seven two", **kwargs)
  synth.reset()
  after_reset = synth.synthesize("four oh seven two", **kwargs)
  assert len(first) == len(again) and not np.array_equal(first, again)  # hidden state exists
  assert np.array_equal(first, after_reset)


def test_speaker_audio_same_alone_in_fresh_process_and_after_other_speakers():
  """The property the one-worker-many-speakers builder relies on: a speaker's audio does
  not depend on the process nor on the speakers synthesized before it there."""
  spec = _CONFIGS["tiny"]
  speakers = corpus.make_speakers(spec)
  target = speakers["test"][3]
  others = [speakers["train"][0], speakers["dev"][5]]  # other accents and voices
  context = synthetic_speech._pool_context()  # pylint: disable=protected-access
  with context.Pool(1) as pool:
    alone = pool.apply(corpus.synthesize_task, ((spec, target, 3),))
  with context.Pool(1) as pool:  # one worker: every task runs in the same process
    pids = {pool.apply(os.getpid) for _ in range(2)}
    results = pool.map(corpus.synthesize_task, [(spec, s, 3) for s in others] + [(spec, target, 3)],
                       chunksize=1)
    pids.add(pool.apply(os.getpid))
  assert len(pids) == 1
  after_others = results[-1]
  corpus.synthesize_speaker(spec, others[0], 2)
  in_this_process = corpus.synthesize_speaker(spec, target, 3)
  assert [k for k, _ in alone] == [corpus.utterance_id(target, i) for i in range(3)]
  assert _digest(alone) == _digest(after_others) == _digest(in_this_process)


def test_reset_refuses_when_espeak_is_also_loaded_elsewhere():
  synth = espeak.Synthesizer()
  synth.synthesize("one", voice="en-us")
  import espeakng_loader  # pylint: disable=import-outside-toplevel
  other = ctypes.CDLL(espeakng_loader.get_library_path())
  try:
    with pytest.raises(espeak.EspeakError, match="still loaded after dlclose"):
      synth.reset()
  finally:
    import _ctypes  # pylint: disable=import-outside-toplevel
    _ctypes.dlclose(other._handle)  # pylint: disable=protected-access
  synth.reset()  # Works again once nothing else holds the library.
  assert synth.synthesize("two", voice="en-us").size > 0


def _speakers_digest(spec) -> str:
  speakers = corpus.make_speakers(spec)
  blob = json.dumps({k: [dataclasses.asdict(s) for s in v] for k, v in speakers.items()}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def test_existing_configs_keep_their_speakers():
  """Digests of the speaker lists from before accents/channel_probs/speaker_id_offset."""
  assert {name: _speakers_digest(_CONFIGS[name]) for name in
          ("tiny", "digits", "digits_large", "digits_many", "sentences")} == {
              "tiny": "ac9135655f2c33ee",
              "digits": "5a9f5ea3ad1933b7",
              "digits_large": "c60025aaa8a991fa",
              "digits_many": "3b491d3b71698c42",
              "sentences": "31ea40a1b0e3ba88",
          }


def test_accent_subset_renormalises_train_shares_and_keeps_voices():
  subset = ("en-GB-x-rp", "en-US")  # any order; generated in ACCENTS order
  spec = corpus.CorpusSpec(accents=subset, train_speakers=50, dev_speakers_per_accent=2,
                           test_speakers_per_accent=3)
  speakers = corpus.make_speakers(spec)
  train = collections.Counter(s.accent for s in speakers["train"])
  assert train == dict(zip(("en-US", "en-GB-x-rp"), corpus.allocate(50, [0.32, 0.22])))
  assert collections.Counter(s.accent for s in speakers["dev"]) == {"en-US": 2, "en-GB-x-rp": 2}
  assert collections.Counter(s.accent for s in speakers["test"]) == {"en-US": 3, "en-GB-x-rp": 3}
  # A dev/test speaker's voice depends on its accent and index, not on the other accents.
  full = corpus.make_speakers(dataclasses.replace(spec, accents=()))
  strip = lambda s: dataclasses.replace(s, speaker_id=0)  # noqa: E731
  for split in ("dev", "test"):
    assert [strip(s) for s in speakers[split]] == [strip(s) for s in full[split] if s.accent in subset]


def test_channel_probs_choose_the_channel():
  clean = (np.sin(2 * np.pi * 300 * np.arange(22050) / 22050) * 8000).astype(np.int16)
  def channels(probs):
    return collections.Counter(
        corpus.record(np.random.default_rng(seed), clean, 22050, (20.0, 30.0), probs)[1]["channel"]
        for seed in range(40))
  assert channels((1.0, 0.0, 0.0)) == {"clean": 40}
  assert channels((0.0, 0.0, 1.0)) == {"telephone": 40}
  assert set(channels(None)) == set(corpus.CHANNELS)  # the default mix


def test_speaker_id_offset_gives_disjoint_ids():
  ids = {}
  for name in ("digits_many", "digits_public", "digits_indomain"):
    spec = _CONFIGS[name]
    all_ids = [s.speaker_id for split in corpus.make_speakers(spec).values() for s in split]
    assert all_ids == list(range(spec.speaker_id_offset, spec.speaker_id_offset + len(all_ids)))
    ids[name] = set(all_ids)
  assert not ids["digits_public"] & ids["digits_indomain"]
  assert not (ids["digits_public"] | ids["digits_indomain"]) & ids["digits_many"]
  shifted = corpus.make_speakers(corpus.CorpusSpec(speaker_id_offset=7))
  base = corpus.make_speakers(corpus.CorpusSpec())
  assert [s.speaker_id for s in shifted["test"]] == [s.speaker_id + 7 for s in base["test"]]


def test_pate_data_role_configs():
  public, indomain = _CONFIGS["digits_public"], _CONFIGS["digits_indomain"]
  speakers = corpus.make_speakers(public)
  assert {s.accent for split in speakers.values() for s in split} == {"en-US", "en-GB-x-rp"}
  assert [len(speakers[k]) for k in ("train", "dev", "test")] == [120, 2, 2]
  assert (public.channel_probs, public.snr_db, public.seed) == ((1.0, 0.0, 0.0), (30.0, 40.0), 1)
  assert (public.train_utterances_per_speaker, public.eval_utterances_per_speaker) == (10, 25)
  speakers = corpus.make_speakers(indomain)
  assert [len(speakers[k]) for k in ("train", "dev", "test")] == [640, 28, 28]
  assert {s.accent for s in speakers["test"]} == set(corpus.ACCENT_NAMES)
  assert (indomain.channel_probs, indomain.snr_db, indomain.seed) == (None, (5.0, 30.0), 2)
  assert (indomain.train_utterances_per_speaker, indomain.eval_utterances_per_speaker) == (10, 20)
  # A public speaker's utterances: clean channel, SNR in range, offset id in every example.
  speaker = corpus.make_speakers(public)["dev"][1]
  for key, example in corpus.synthesize_speaker(public, speaker, 3):
    assert example["channel"] == "clean" and 30.0 <= example["snr_db"] <= 40.0
    assert example["speaker_id"] == speaker.speaker_id >= 100_000 and str(speaker.speaker_id) in key


@pytest.mark.parametrize("kwargs, match", [
    (dict(accents=("en-XX",)), "accents must be among"),
    (dict(accents=("en-US", "en-US")), "accents must not repeat"),
    (dict(accents="en-US"), "not the string"),
    (dict(channel_probs=(0.5, 0.5)), "channel_probs must be 3"),
    (dict(channel_probs=(0.5, 0.6, -0.1)), "channel_probs must be 3"),
    (dict(channel_probs=(0.5, 0.2, 0.2)), "summing to 1"),
    (dict(channel_probs=(float("nan"), 0.5, 0.5)), "channel_probs"),
    (dict(speaker_id_offset=-1), "speaker_id_offset must be in"),
    (dict(speaker_id_offset=2**31 - 10), "fit in int32"),
    (dict(speaker_id_offset=1.5), "speaker_id_offset must be an int"),
])
def test_spec_rejects_bad_data_role_values(kwargs, match):
  with pytest.raises(ValueError, match=match):
    corpus.CorpusSpec(**kwargs)
