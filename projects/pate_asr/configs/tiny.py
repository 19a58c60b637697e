"""A seconds-long run of the non-private pipeline on the `tiny` corpus, for smoke tests.

Command:
  python -m projects.pate_asr.main --config=projects/pate_asr/configs/tiny.py --workdir=/tmp/tiny

Trains a very small transducer for 30 steps; the WER it prints is meaningless (near
100%): the point is that every stage and output of the pipeline runs. Takes about 30 s.
"""

from projects.pate_asr.configs import nonprivate


def get_config():
  config = nonprivate.get_config()
  config.data.synthetic_config = "tiny"
  config.model.subsampling_channels = 4
  config.model.dim = 16
  config.model.num_layers = 1
  config.model.embed_dim = 8
  config.model.predictor_dim = 16
  config.model.joint_dim = 16
  config.train.batch_size = 8
  config.train.num_steps = 30
  config.train.warmup_steps = 5
  config.train.log_every = 5
  config.train.eval_every = 15
  config.train.checkpoint_every = 10
  config.train.num_buckets = 1
  config.eval.batch_size = 8
  return config
