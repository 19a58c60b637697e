"""PATE vs DP-SGD on the embedded `digits` corpus, matched scenario: the `make run` job.

Command:
  python -m projects.pate_asr.main --config=projects/pate_asr/configs/quick.py \
      --workdir=workdirs/pate_quick

Trains a non-private floor, 8 teachers (one vmapped ensemble), labels the public
speakers' utterances with noiseless, LNMax, GNMax, Confident-GNMax and noisy-averaging
ensemble decodes, trains one student per (method, epsilon) in {1, 2, 5, 10} (one
vmapped ensemble), and DP-SGD at the same epsilons; prints the table of WERs and
relative reductions and writes results.json and figures/wer_vs_epsilon.png. Budget:
at most 20 minutes on a 2-core CPU machine, corpus generation included.
Both scenarios: --config.pate.scenarios='("matched", "mismatched")'.
"""

import ml_collections

from projects.pate_asr.configs import nonprivate


def _train(num_steps, batch_size, learning_rate=3e-3, warmup=50):
  base = nonprivate.get_config().train
  base.num_steps = num_steps
  base.batch_size = batch_size
  base.learning_rate = learning_rate
  base.warmup_steps = warmup
  base.log_every = 25
  base.eval_every = num_steps
  base.checkpoint_every = 100
  return base


def get_config() -> ml_collections.ConfigDict:
  config = nonprivate.get_config()
  config.mode = "sweep"
  # 160 training speakers: each of 8 teachers gets 16 speakers of its own.
  config.data.synthetic_config = "digits_large"
  # The non-private baseline's transducer (2-layer BiLSTM, 0.65 M parameters): smaller
  # ones train faster per step but need many more steps on this task. CPU throughput is
  # ~100 utterances/s whatever the split into models, so steps are budgeted in utterance
  # passes: floor ~1.3 epochs, each teacher ~6 epochs of its part, students ~4 epochs.
  config.train = _train(200, 32, warmup=50)  # The non-private floor.
  config.teachers = _train(240, 16, warmup=40)
  config.students = _train(150, 16, warmup=30)

  config.pate = ml_collections.ConfigDict()
  config.pate.scenarios = ("matched",)
  config.pate.public_fraction = 0.2  # matched: share of training speakers that are public
  config.pate.max_public_utterances = 640  # Labeling budget in utterances (0: all).
  config.pate.public_accents = ("en-GB-x-gbclan", "en-GB-x-gbcwmd", "en-029")  # mismatched
  config.pate.num_teachers = 8
  # Teachers vote frame by frame; the same initialization keeps their alignments (when
  # they emit a label vs. blank) closer, so they agree on more steps.
  config.pate.shared_teacher_init = True
  config.pate.methods = ("lnmax", "gnmax", "confident_gnmax", "noisy_average")
  config.pate.target_epsilons = (1.0, 2.0, 5.0, 10.0)
  config.pate.delta = 1e-5
  config.pate.budget = "data_dependent"
  config.pate.orders = ()  # (): libs.accounting.pate.DEFAULT_ORDERS
  config.pate.max_symbols_per_frame = 4
  config.pate.label_batch_size = 64
  # With 8 teachers the data-dependent analysis decides everything: a query costs little
  # when the votes are far from a decision boundary (gap >> sigma), and the usable Renyi
  # order is capped near gap / 2 + 1 = 5 (Papernot et al. 2018, Prop. 10), whatever the
  # noise, so epsilon below ~2.5 at delta = 1e-5 is out of reach with 8 teachers.
  config.pate.lnmax_scale = 0.25
  config.pate.gnmax_sigma = 0.5
  config.pate.confident_threshold = 6.0
  config.pate.confident_sigma_threshold = 0.5
  config.pate.confident_sigma = 0.5
  config.pate.noisy_average_sigma = 4.0
  config.pate.ss_order = 4.0  # GNSS release of the data-dependent epsilon.
  config.pate.ss_beta = 0.05
  config.pate.ss_sigma = 10.0
  config.pate.ss_seed = 0

  config.dpsgd = ml_collections.ConfigDict()
  config.dpsgd.expected_batch_size = 48
  config.dpsgd.physical_batch_size = 32
  config.dpsgd.num_steps = 120
  config.dpsgd.l2_clip_norm = 5.0
  config.dpsgd.learning_rate = 3e-3
  config.dpsgd.warmup_steps = 30
  config.dpsgd.checkpoint_every = 50
  return config
