"""PATE vs DP-SGD on the `sentences` corpus, both scenarios (matched and mismatched).

Command:
  python -m projects.pate_asr.main --config=projects/pate_asr/configs/full.py \
      --workdir=workdirs/pate_full

Same pipeline and table as `quick.py` (floor, teachers, noisy ensemble labels, students,
DP-SGD, per scenario), on the 481-word `sentences` corpus (60 training speakers) with
longer training. Not sized for a 2-core CPU: expect several hours there (the non-private
sentences baseline alone trains at ~60 utterances/s); on one GPU it is the config to run.
For more teachers, generate more speakers (a larger corpus config) before raising
--config.pate.num_teachers: each teacher needs several speakers of its own.
"""

from projects.pate_asr.configs import quick


def get_config():
  config = quick.get_config()
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
  return config
