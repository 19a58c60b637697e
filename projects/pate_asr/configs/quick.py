"""PATE vs DP-SGD on the embedded `digits` corpus, matched scenario: the `make run` job.

Command:
  python -m projects.pate_asr.main --config=projects/pate_asr/configs/quick.py \
      --workdir=workdirs/pate_quick

Trains a non-private floor, 16 teachers (one vmapped ensemble), labels the public
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
  # A smaller transducer than the non-private baseline: many models are trained here.
  config.model.subsampling_channels = 8
  config.model.dim = 128
  config.model.num_layers = 1
  config.model.embed_dim = 32
  config.model.predictor_dim = 64
  config.model.joint_dim = 64
  config.train = _train(500, 32)  # The non-private floor.
  config.teachers = _train(400, 16)
  config.students = _train(300, 16)

  config.pate = ml_collections.ConfigDict()
  config.pate.scenarios = ("matched",)
  config.pate.public_fraction = 0.25  # matched: share of training speakers that are public
  config.pate.public_accents = ("en-GB-x-gbclan", "en-GB-x-gbcwmd", "en-029")  # mismatched
  config.pate.num_teachers = 16
  config.pate.methods = ("lnmax", "gnmax", "confident_gnmax", "noisy_average")
  config.pate.target_epsilons = (1.0, 2.0, 5.0, 10.0)
  config.pate.delta = 1e-5
  config.pate.budget = "data_dependent"
  config.pate.orders = ()  # (): libs.accounting.pate.DEFAULT_ORDERS
  config.pate.max_symbols_per_frame = 4
  config.pate.label_batch_size = 64
  config.pate.lnmax_scale = 1.0
  config.pate.gnmax_sigma = 2.0
  config.pate.confident_threshold = 14.0
  config.pate.confident_sigma_threshold = 2.0
  config.pate.confident_sigma = 2.0
  config.pate.noisy_average_sigma = 2.0
  config.pate.ss_order = 8.0  # GNSS release of the data-dependent epsilon.
  config.pate.ss_beta = 0.05
  config.pate.ss_sigma = 10.0
  config.pate.ss_seed = 0

  config.dpsgd = ml_collections.ConfigDict()
  config.dpsgd.expected_batch_size = 64
  config.dpsgd.physical_batch_size = 32
  config.dpsgd.num_steps = 300
  config.dpsgd.l2_clip_norm = 5.0
  config.dpsgd.learning_rate = 3e-3
  config.dpsgd.warmup_steps = 30
  config.dpsgd.checkpoint_every = 50
  return config
