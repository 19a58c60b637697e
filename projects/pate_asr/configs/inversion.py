"""Model inversion on the PATE-ASR sweep's transducers (`projects/pate_asr/inversion.py`).

Variants (`get_config(arg)`, the text after the colon of `--config=`):

default: the experiment reported in the README.
  python -m projects.pate_asr.main --config=projects/pate_asr/configs/inversion.py \
      --workdir=workdirs/pate_inversion
  (the same as python -m projects.pate_asr.main --config=projects/pate_asr/configs/inversion.py:default).
  Reads the models of the `make run` sweep (`--config.inversion.sweep_workdir`, default
  workdirs/pate_quick: sweep.py:quick); when their parameters are missing it first runs that
  sweep there (about 15 minutes on 2 CPU cores, finished stages skipped: a workdir from before
  parameters were saved only gets them from its final checkpoints), which is NOT part of this
  config's own budget. Then a speaker model on the public speakers, and the inversion of 6
  models (public only, non-private, DP-SGD at the speaker level and the best PATE student at
  epsilon 10 and 1) on 50 training speakers' utterances. Prints the table (MCD, similarity to
  the true speaker vs the others, top-1 and rank identification, per model with its epsilon,
  delta and accountant); writes results.json and figures/inversion.png. About 4 minutes on 2
  CPU cores given the sweep (222 s measured, 21 s of it backfilling the sweep's parameter files);
  a rerun reuses the speaker model and every finished inversion.

tiny: the same pipeline in seconds, for the smoke test (the `tiny` corpus and model; the sweep
  workdir must hold tiny-sweep models).
  python -m projects.pate_asr.main --config=projects/pate_asr/configs/inversion.py:tiny \
      --workdir=/tmp/pate_inversion_tiny --config.inversion.sweep_workdir=/tmp/pate_tiny
"""

import ml_collections

VARIANTS = ("default", "tiny")  # The first is what `--config=.../inversion.py` runs.


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"projects/pate_asr/configs/inversion.py:{arg}: the variant must be one of {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.mode = "inversion"
  c.seed = 0  # The target speakers, the speaker model; the attack itself is deterministic.
  c.num_devices = 0
  c.progress = True
  # Only used when the sweep has to run first (its DP noise): True for tests/debugging only.
  c.insecure_reproducible_noise = False
  c.eval_batch_size = 64

  v = c.inversion = ml_collections.ConfigDict()
  v.sweep_workdir = "workdirs/pate_quick"
  v.sweep_variant = "quick"  # The sweep config run there when its models are missing.
  v.scenario = "matched"
  v.target_epsilons = (10.0, 1.0)  # DP-SGD (speaker) and the best PATE student at each.
  v.utterances = 50  # Sensitive speakers attacked, one utterance each.
  v.enrollment_utterances = 3  # Other utterances of each: its enrolled voice.
  v.start = "public_mean"  # public_mean | constant: data-independent either way.
  v.steps = 200
  v.learning_rate = 0.05
  v.tv_weight = 1e-3  # Per unit of total variation of the normalized features (summed over the utterance).
  v.l2_weight = 0.0  # Normalized features have a fixed norm: an L2 prior would be a constant.
  v.tv_eps = 1e-2
  v.mcd_coefficients = 24  # c1..c24.

  # The speaker-embedding model (libs.models.speaker), trained on public speakers only.
  s = c.speaker = ml_collections.ConfigDict()
  s.channels = 64
  s.embed_dim = 64
  s.speakers_per_batch = 16
  s.utterances_per_speaker = 4
  s.crop_frames = 100
  s.num_steps = 300
  s.learning_rate = 2e-3
  s.warmup_steps = 30
  s.weight_decay = 1e-4
  s.log_every = 25
  s.checkpoint_every = 100
  if arg == "tiny":
    v.sweep_workdir = "/tmp/pate_tiny"
    v.sweep_variant = "tiny"
    v.target_epsilons = (2.0,)
    v.utterances, v.enrollment_utterances, v.steps = 4, 1, 3
    s.channels, s.embed_dim, s.speakers_per_batch, s.utterances_per_speaker = 8, 8, 2, 2
    s.crop_frames, s.num_steps, s.warmup_steps, s.log_every, s.checkpoint_every = 40, 4, 1, 2, 2
    c.eval_batch_size = 8
  return c
