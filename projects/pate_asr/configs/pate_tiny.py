"""The whole PATE sweep on the `tiny` corpus with tiny models, for the smoke test.

Command:
  python -m projects.pate_asr.main --config=projects/pate_asr/configs/pate_tiny.py --workdir=/tmp/pate_tiny

Every stage runs (floor, 3 teachers, 5 labelings, students, DP-SGD) on 28 training
utterances; WERs are meaningless (near 100%). Takes about a minute.
"""

from projects.pate_asr.configs import quick


def get_config():
  config = quick.get_config()
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
  return config
