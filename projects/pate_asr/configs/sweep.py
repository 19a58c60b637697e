"""PATE vs DP-SGD for end-to-end ASR: `quick` (the default), `full` and `tiny` (the smoke test).

Variants (`get_config(arg)`, the text after the colon of `--config=`):

quick: the embedded `digits_many` corpus, matched scenario.
  python -m projects.pate_asr.main --config=projects/pate_asr/configs/sweep.py:quick \
      --workdir=workdirs/pate_quick
  Trains a non-private floor, 16 teachers (one vmapped ensemble), labels the public speakers'
  utterances with noiseless, LNMax, GNMax and Confident-GNMax label-synchronous ensemble
  decodes, trains one student per (method, epsilon) in {1, 2, 5, 10} (one vmapped ensemble),
  and DP-SGD at the same epsilons; prints the table of WERs and relative reductions and writes
  results.json and figures/wer_vs_epsilon.png. The README's PATE section has the measured wall
  time (about an hour from a fresh clone on a 2-core CPU machine, over the 20-minute goal).
  Both scenarios: --config.pate.scenarios='("matched", "mismatched")'.

full: the same pipeline and table on the 481-word `sentences` corpus (60 training speakers),
  matched and mismatched scenarios, every labeling method, longer training.
  python -m projects.pate_asr.main --config=projects/pate_asr/configs/sweep.py:full \
      --workdir=workdirs/pate_full
  Not sized for a 2-core CPU: expect several hours there (the non-private sentences baseline
  alone trains at ~60 utterances/s); on one GPU it is the config to run. For more teachers,
  generate more speakers (a larger corpus config) before raising --config.pate.num_teachers:
  each teacher needs several speakers of its own.

tiny: every stage on the `tiny` corpus with tiny models, for the smoke test.
  python -m projects.pate_asr.main --config=projects/pate_asr/configs/sweep.py:tiny \
      --workdir=/tmp/pate_tiny
  Every stage runs (floor, 3 teachers, 5 labelings, students, DP-SGD) on 28 training
  utterances and prints the same table; WERs are meaningless (near 100%). Takes about a minute.

All three start from the non-private config (`nonprivate.py`, `default`): its data, model,
train and eval sections, with `mode = "sweep"` and the PATE, teacher, student and DP-SGD
sections added here.
"""

import ml_collections

from projects.pate_asr.configs import nonprivate

VARIANTS = ("quick", "full", "tiny")  # The first is what `--config=.../sweep.py` runs.


def _train(num_steps, batch_size, learning_rate=3e-3, warmup=50):
  base = nonprivate.get_config("default").train
  base.num_steps = num_steps
  base.batch_size = batch_size
  base.learning_rate = learning_rate
  base.warmup_steps = warmup
  base.log_every = 25
  base.eval_every = num_steps
  base.checkpoint_every = 100
  return base


def _quick() -> ml_collections.ConfigDict:
  config = nonprivate.get_config("default")
  config.mode = "sweep"
  # DP noise (PATE aggregation, smooth-sensitivity releases, DP-SGD) and DP-SGD's Poisson
  # samples come from a fresh operating-system secret, never from the published config.seed.
  # True only for tests/debugging: DP noise and sampling from config.seed, the guarantee
  # does not hold against anyone who knows the seed (results say "reproducible-insecure").
  config.insecure_reproducible_noise = False
  # 640 training speakers: 511 sensitive ones, so each of 16 teachers gets ~32 of its own.
  config.data.synthetic_config = "digits_many"
  # A 1-layer BiLSTM transducer (0.2 M parameters): ~190 utterances/s on 2 cores against
  # ~100 for the non-private config's 2-layer model, and it learns digits in about the
  # same number of steps (dev WER 24.7% / 5.8% / 4.6% after 200 / 300 / 400 steps of 32).
  config.model.dim = 96
  config.model.num_layers = 1
  config.model.predictor_dim = 64
  config.model.joint_dim = 64
  config.train = _train(400, 32, warmup=50)  # The non-private floor.
  # 600 steps of 16 (~30 passes over a teacher's ~320 utterances): teacher dev WER 9.1% mean,
  # against 46.8% after 300 steps, and 87% of the label-sync queries unanimous.
  config.teachers = _train(600, 16, warmup=40)
  config.students = _train(300, 16, warmup=40)

  config.pate = ml_collections.ConfigDict()
  config.pate.scenarios = ("matched",)
  config.pate.public_fraction = 0.2  # matched: share of training speakers that are public
  config.pate.max_public_utterances = 640  # Labeling budget in utterances (0: all).
  config.pate.public_accents = ("en-GB-x-gbclan", "en-GB-x-gbcwmd", "en-029")  # mismatched
  config.pate.num_teachers = 16
  # Teachers start from one initialization, which keeps their alignments closer.
  config.pate.shared_teacher_init = True
  # noisy_average is left to `full` and `tiny` (one student less per target).
  config.pate.methods = ("lnmax", "gnmax", "confident_gnmax")
  config.pate.target_epsilons = (1.0, 2.0, 5.0, 10.0)
  config.pate.delta = 1e-5
  config.pate.budget = "data_dependent"
  config.pate.orders = ()  # (): libs.accounting.pate.DEFAULT_ORDERS
  # One query per output label (aggregation.py); "frame_sync" queries every frame.
  config.pate.decode = "label_sync"
  config.pate.max_symbols_per_frame = 4
  config.pate.label_batch_size = 64
  # The data-dependent analysis decides everything: a query is nearly free when its votes
  # are far from a tie (gap >> sigma). Its bound holds only at Renyi orders below about
  # gap / 2 + 1 (Papernot et al. 2018, Prop. 10), so 8 teachers cannot release anything
  # below epsilon ~6 at sigma = 1 (sweep.epsilon_floor); with 16, queries with gap >~ 12
  # have divergences below delta^2 and cost (0, delta) through total variation.
  config.pate.lnmax_scale = 0.5
  config.pate.gnmax_sigma = 1.0
  config.pate.confident_threshold = 9.0
  config.pate.confident_sigma_threshold = 1.0
  config.pate.confident_sigma = 1.0
  config.pate.noisy_average_sigma = 4.0
  config.pate.ss_order = 4.0  # GNSS release of the data-dependent epsilon.
  config.pate.ss_beta = 0.05
  config.pate.ss_sigma = 10.0  # Its noise: see config.insecure_reproducible_noise.

  config.dpsgd = ml_collections.ConfigDict()
  config.dpsgd.expected_batch_size = 48
  config.dpsgd.physical_batch_size = 32
  config.dpsgd.num_steps = 200
  config.dpsgd.l2_clip_norm = 5.0
  config.dpsgd.learning_rate = 3e-3
  config.dpsgd.warmup_steps = 30
  config.dpsgd.checkpoint_every = 50
  return config


def _full(config: ml_collections.ConfigDict) -> None:
  config.data.synthetic_config = "sentences"
  config.pate.scenarios = ("matched", "mismatched")
  config.pate.max_public_utterances = 0  # Label every public utterance.
  config.pate.methods = ("lnmax", "gnmax", "confident_gnmax", "noisy_average")
  # The non-private config's 2-layer BiLSTM transducer (0.65 M parameters): sentences has
  # ~480 words. 60 training speakers leave ~6 per teacher for 8 teachers.
  config.model.dim = 192
  config.model.num_layers = 2
  config.model.predictor_dim = 128
  config.model.joint_dim = 128
  config.pate.num_teachers = 8
  config.pate.lnmax_scale = 0.25
  config.pate.gnmax_sigma = 0.5
  config.pate.confident_threshold = 5.0
  config.pate.confident_sigma_threshold = 0.5
  config.pate.confident_sigma = 0.5
  config.train.num_steps = 5000
  config.train.warmup_steps = 300
  config.train.eval_every = 1000
  config.teachers.num_steps = 2000
  config.teachers.warmup_steps = 200
  config.teachers.eval_every = 2000
  config.students.num_steps = 2000
  config.students.warmup_steps = 200
  config.students.eval_every = 2000
  config.dpsgd.num_steps = 1000
  config.dpsgd.expected_batch_size = 128
  config.dpsgd.warmup_steps = 100


def _tiny(config: ml_collections.ConfigDict) -> None:
  config.data.synthetic_config = "tiny"
  config.model.subsampling_channels = 4
  config.model.dim = 16
  config.model.embed_dim = 8
  config.model.predictor_dim = 16
  config.model.joint_dim = 16
  for section, steps in (("train", 6), ("teachers", 6), ("students", 6)):
    config[section].num_steps = steps
    config[section].batch_size = 4
    config[section].warmup_steps = 2
    config[section].log_every = 3
    config[section].checkpoint_every = 3
    config[section].num_buckets = 1
  config.eval.batch_size = 8
  config.pate.public_fraction = 0.3
  config.pate.num_teachers = 3
  config.pate.methods = ("lnmax", "gnmax", "confident_gnmax", "noisy_average")
  config.pate.target_epsilons = (2.0, 10.0)
  config.pate.label_batch_size = 8
  config.pate.confident_threshold = 2.0
  config.pate.lnmax_scale = 0.3
  config.pate.gnmax_sigma = 0.5
  config.pate.confident_sigma = 0.5
  config.pate.confident_sigma_threshold = 0.5
  config.pate.noisy_average_sigma = 0.5
  config.dpsgd.expected_batch_size = 3
  config.dpsgd.physical_batch_size = 4
  config.dpsgd.num_steps = 4
  config.dpsgd.warmup_steps = 1
  config.dpsgd.checkpoint_every = 2


_OVERRIDES = {"quick": lambda config: None, "full": _full, "tiny": _tiny}


def get_config(arg: str = "quick") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"projects/pate_asr/configs/sweep.py:{arg}: the variant must be one of {VARIANTS}")
  config = _quick()
  _OVERRIDES[arg](config)
  return config
