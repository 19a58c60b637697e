"""Non-private transducer ASR: the baseline (`default`) and its smoke run (`tiny`).

Variants (`get_config(arg)`, the text after the colon of `--config=`):

default: the BiLSTM transducer baseline on the embedded `digits` corpus.
  python -m projects.pate_asr.main --config=projects/pate_asr/configs/nonprivate.py:default \
      --workdir=workdirs/nonprivate
  Generates the corpus on first use (about 1 minute on 2 CPU cores), trains a BiLSTM
  transducer for 800 steps of 32 utterances and prints the test WER, which should be below
  5%; the whole run takes under 10 minutes on a 2-core CPU machine. Larger variants are a
  flag away, e.g. the sentences corpus and a Conformer encoder:
  --config.data.synthetic_config=sentences --config.model.encoder=conformer \
  --config.train.num_steps=8000

tiny: a seconds-long run of the same pipeline on the `tiny` corpus, for smoke tests.
  python -m projects.pate_asr.main --config=projects/pate_asr/configs/nonprivate.py:tiny \
      --workdir=/tmp/tiny
  Trains a very small transducer for 30 steps; the WER it prints is meaningless (near 100%):
  the point is that every stage and output of the pipeline runs. Takes about 30 s.

The PATE sweep (`sweep.py`) starts from `get_config("default")` here: its non-private floor
is this model's training setup.
"""

import ml_collections

VARIANTS = ("default", "tiny")  # The first is what `--config=.../nonprivate.py` runs.


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"projects/pate_asr/configs/nonprivate.py:{arg}: the variant must be one of {VARIANTS}")
  config = ml_collections.ConfigDict()
  config.mode = "nonprivate"
  config.seed = 0
  config.num_devices = 0  # 0: every local device.
  config.progress = True

  config.data = ml_collections.ConfigDict()
  config.data.corpus = "synthetic"  # "synthetic" or "librispeech".
  config.data.synthetic_config = "digits"  # digits | sentences | tiny | ...
  config.data.public_config = ""  # The PATE sweep's public labeled corpus ("" elsewhere).
  config.data.data_dir = ""  # "": $TSML_DATA_DIR or <repo>/data/tfds.
  config.data.librispeech_dir = ""  # LibriSpeech root with train-clean-100/, dev-clean/, ...
  config.data.train_split = "train"
  config.data.dev_split = "dev"
  config.data.test_split = "test"
  config.data.max_train_examples = 0  # 0: all.
  config.data.max_eval_examples = 0  # 0: all (applies to dev and test).

  config.model = ml_collections.ConfigDict()
  config.model.name = "transducer"  # transducer | ctc
  config.model.encoder = "lstm"  # lstm | conformer | convrnnt | amortized (libs/models/encoders.py)
  config.model.subsampling_channels = 16
  config.model.dim = 192
  config.model.num_layers = 2
  config.model.bidirectional = True
  config.model.num_heads = 4
  config.model.conv_kernel = 15
  config.model.dropout = 0.1
  config.model.chunk = 4  # amortized: frames (40 ms each) per attention and arbitration chunk.
  config.model.compute_penalty = 0.01  # amortized: nats per frame for running every gated sub-block.
  config.model.embed_dim = 64
  config.model.predictor_dim = 128
  config.model.joint_dim = 128
  config.model.units = "chars"  # "chars" or "words" (over model.vocabulary, a public word list).
  config.model.vocabulary = ()

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 32
  config.train.num_steps = 800
  config.train.learning_rate = 2e-3
  config.train.warmup_steps = 100
  config.train.final_lr_fraction = 0.05
  config.train.weight_decay = 1e-4
  config.train.grad_clip_norm = 5.0
  config.train.spec_augment = True
  config.train.freq_masks = 2
  config.train.freq_mask_width = 12
  config.train.time_masks = 2
  config.train.time_mask_width = 20
  config.train.num_buckets = 3
  config.train.log_every = 20
  config.train.eval_every = 400
  config.train.checkpoint_every = 100

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 64

  if arg == "tiny":
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
