"""PATE vs DP-SGD for end-to-end ASR: `quick` (the default, `make run`), `full` and `tiny`.

Variants (`get_config(arg)`, the text after the colon of `--config=`):

quick: the matched scenario at epsilon 1 and 10 on the embedded digit corpora.
  python -m projects.pate_asr.main --config=projects/pate_asr/configs/sweep.py:quick \
      --workdir=workdirs/pate_quick
  Data roles: a public labeled corpus (`digits_public`: other speakers, two accents, clean
  recordings) pretrains the public model; the in-domain corpus (`digits_indomain`: seven
  accents, rooms, telephone, 5-30 dB noise) gives the sensitive speakers (64 speaker-disjoint
  teachers), the public unlabeled speakers (the students' queries) and dev/test. Every
  private model (teachers, DP-SGD, students, the non-private model) is fine-tuned from the
  public model. Word units over the digits vocabulary: ~4.5 queries per utterance.

full: epsilon in {1, 2, 5, 10}, both scenarios, 128 teachers, longer training.
  python -m projects.pate_asr.main --config=projects/pate_asr/configs/sweep.py:full \
      --workdir=workdirs/pate_full
  Not sized for a 2-core CPU (hours there); on one GPU it is the config to run.

tiny: every stage on the `tiny` corpus with tiny models, for the smoke test.
  python -m projects.pate_asr.main --config=projects/pate_asr/configs/sweep.py:tiny \
      --workdir=/tmp/pate_tiny
  About a minute; the WERs are meaningless (barely trained models).

All three start from the non-private config (`nonprivate.py`, `default`): its data, model,
train and eval sections, with `mode = "sweep"` and the sections below added.
"""

import ml_collections

from libs.data import grammar
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
  # DP noise (aggregation, smooth-sensitivity releases, DP-SGD noise and samples) comes from
  # a fresh operating-system secret, never from the published config.seed. True only for
  # tests/debugging: the guarantee then does not hold against anyone who knows the seed.
  config.insecure_reproducible_noise = False
  config.data.synthetic_config = "digits_indomain"  # Sensitive, public unlabeled, dev, test.
  config.data.public_config = "digits_public"  # Public labeled (pretraining); other speakers.
  config.model.units = "words"
  config.model.vocabulary = grammar.DIGITS_VOCABULARY
  config.model.dim = 96
  config.model.num_layers = 1
  config.model.predictor_dim = 64
  config.model.joint_dim = 64
  config.public_train = _train(600, 32, warmup=50)  # The public model, from scratch.
  config.train = _train(300, 32, learning_rate=1e-3, warmup=20)  # Non-private fine-tuning.
  config.teachers = _train(50, 8, learning_rate=1e-3, warmup=10)
  config.students = _train(80, 16, learning_rate=3e-4, warmup=10)
  config.students.self_training_steps = 80  # Then on labeled + pseudo-labeled utterances.
  # Mix the public labeled corpus into the students' data (it is public: no privacy cost).
  config.students.mix_public_labeled = True

  config.pate = ml_collections.ConfigDict()
  config.pate.scenarios = ("matched",)
  config.pate.public_fraction = 0.2  # matched: share of in-domain speakers that are public
  config.pate.public_accents = ("en-GB-x-gbclan", "en-GB-x-gbcwmd", "en-029")  # mismatched
  config.pate.num_teachers = 64
  config.pate.methods = ("lnmax", "gnmax", "confident_gnmax", "noisy_average")
  config.pate.target_epsilons = (1.0, 10.0)
  # Public utterances queried per target, fixed before any teacher votes (the first ones of
  # a data-independent order of the public unlabeled set).
  config.pate.query_utterances = (10, 100)
  config.pate.delta = 1e-5
  config.pate.orders = ()  # (): libs.accounting.pate.DEFAULT_ORDERS
  config.pate.decode = "label_sync"  # One query per output word, plus the end.
  config.pate.max_symbols_per_frame = 4
  # The formal bound charges every utterance this many queries (the grammar's longest
  # string plus the end query), whatever the answers were.
  config.pate.max_queries_per_utterance = grammar.DIGITS_MAX_WORDS + 1
  config.pate.label_batch_size = 64
  config.pate.lnmax_scale = 4.0
  config.pate.gnmax_sigma = 4.0
  config.pate.confident_threshold = 48.0
  config.pate.confident_sigma_threshold = 8.0
  config.pate.confident_sigma = 4.0
  config.pate.noisy_average_sigma = 4.0
  config.pate.ss_order = 8.0  # GNSS release of the data-dependent epsilon.
  config.pate.ss_beta = 0.02
  config.pate.ss_sigma = 4.0

  config.dpsgd = ml_collections.ConfigDict()
  config.dpsgd.units = ("speaker", "utterance")
  config.dpsgd.expected_batch_size = 64  # utterance level
  config.dpsgd.expected_speakers = 32  # speaker level
  config.dpsgd.max_utterances_per_speaker = 4
  config.dpsgd.physical_batch_size = 32
  config.dpsgd.num_steps = 60
  config.dpsgd.l2_clip_norm = 5.0
  config.dpsgd.learning_rate = 1e-3
  config.dpsgd.warmup_steps = 10
  config.dpsgd.checkpoint_every = 50
  return config


def _full(config: ml_collections.ConfigDict) -> None:
  config.pate.scenarios = ("matched", "mismatched")
  config.pate.target_epsilons = (1.0, 2.0, 5.0, 10.0)
  config.pate.query_utterances = (40, 80, 150, 200)
  config.pate.num_teachers = 128
  config.model.dim = 192
  config.model.num_layers = 2
  config.model.predictor_dim = 128
  config.model.joint_dim = 128
  config.public_train.num_steps = 3000
  config.train.num_steps = 1500
  config.teachers.num_steps = 300
  config.students.num_steps = 600
  config.students.self_training_steps = 600
  config.dpsgd.num_steps = 600


def _tiny(config: ml_collections.ConfigDict) -> None:
  config.data.synthetic_config = "tiny"
  config.data.public_config = "tiny"
  config.model.subsampling_channels = 4
  config.model.dim = 16
  config.model.embed_dim = 8
  config.model.predictor_dim = 16
  config.model.joint_dim = 16
  for section, steps in (("public_train", 6), ("train", 4), ("teachers", 4), ("students", 4)):
    config[section].num_steps = steps
    config[section].batch_size = 4
    config[section].warmup_steps = 2
    config[section].log_every = 2
    config[section].checkpoint_every = 2
    config[section].num_buckets = 1
  config.students.self_training_steps = 4
  config.eval.batch_size = 8
  config.pate.public_fraction = 0.3
  config.pate.num_teachers = 3
  config.pate.target_epsilons = (2.0, 10.0)
  config.pate.query_utterances = (2, 4)
  config.pate.label_batch_size = 8
  config.pate.confident_threshold = 2.0
  config.pate.lnmax_scale = 0.3
  config.pate.gnmax_sigma = 0.5
  config.pate.confident_sigma = 0.5
  config.pate.confident_sigma_threshold = 0.5
  config.pate.noisy_average_sigma = 0.5
  config.dpsgd.expected_batch_size = 3
  config.dpsgd.expected_speakers = 2
  config.dpsgd.max_utterances_per_speaker = 2
  config.dpsgd.physical_batch_size = 4
  config.dpsgd.num_steps = 3
  config.dpsgd.warmup_steps = 1
  config.dpsgd.checkpoint_every = 2


_OVERRIDES = {"quick": lambda config: None, "full": _full, "tiny": _tiny}


def get_config(arg: str = "quick") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"projects/pate_asr/configs/sweep.py:{arg}: the variant must be one of {VARIANTS}")
  config = _quick()
  _OVERRIDES[arg](config)
  return config
