"""The fields every fairness config starts from; a helper module, not a config (no `get_config`).

`defaults()` is the shared setting of the three studies on the embedded `digits_fairness`
corpus (480 training speakers over 7 accents and 18 regions, rare accents rare in every
split; 210 dev speakers for discovery, 280 test speakers for held-out evaluation). Each
config (`cohorts.py`, `ewc.py`, `arw.py`) sets `mode` and changes a few fields; `tiny()`
shrinks everything for the smoke tests.
"""

import ml_collections

from libs.data import grammar


def _train(num_steps: int, batch_size: int, learning_rate: float, warmup: int) -> ml_collections.ConfigDict:
  t = ml_collections.ConfigDict()
  t.batch_size = batch_size
  t.num_steps = num_steps
  t.learning_rate = learning_rate
  t.warmup_steps = warmup
  t.final_lr_fraction = 0.05
  t.weight_decay = 1e-4
  t.grad_clip_norm = 5.0
  t.spec_augment = True
  t.freq_masks = 2
  t.freq_mask_width = 12
  t.time_masks = 2
  t.time_mask_width = 20
  t.num_buckets = 3
  t.log_every = 25
  t.eval_every = num_steps
  t.checkpoint_every = 100
  return t


def defaults() -> ml_collections.ConfigDict:
  """The shared defaults; every field a config may override exists here."""
  c = ml_collections.ConfigDict()
  c.mode = "cohorts"
  c.seed = 0
  c.num_devices = 0  # 0: every local device.
  c.progress = True

  c.data = ml_collections.ConfigDict()
  c.data.corpus = "synthetic"
  c.data.synthetic_config = "digits_fairness"
  c.data.data_dir = ""  # "": $TSML_DATA_DIR or <repo>/data/tfds.
  c.data.max_train_examples = 0  # 0: all.

  # The ASR model whose errors are studied (a transducer over digit words).
  c.model = ml_collections.ConfigDict()
  c.model.name = "transducer"
  c.model.encoder = "lstm"
  c.model.subsampling_channels = 16
  c.model.dim = 128
  c.model.num_layers = 1
  c.model.bidirectional = True
  c.model.num_heads = 4
  c.model.conv_kernel = 15
  c.model.dropout = 0.1
  c.model.chunk = 4  # encoder="amortized" only (see projects/pate_asr/configs/nonprivate.py).
  c.model.compute_penalty = 0.01
  c.model.embed_dim = 32
  c.model.predictor_dim = 64
  c.model.joint_dim = 64
  c.model.units = "words"
  c.model.vocabulary = grammar.DIGITS_VOCABULARY
  c.train = _train(600, 32, 2e-3, 50)
  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 64

  # The speaker-embedding model (x-vector-like TDNN, pairwise metric-learning loss).
  c.speaker = ml_collections.ConfigDict()
  c.speaker.channels = 128
  c.speaker.embed_dim = 64
  c.speaker.speakers_per_batch = 16
  c.speaker.utterances_per_speaker = 4
  c.speaker.crop_frames = 120  # Training crops of 1.2 s; evaluation embeds whole utterances.
  c.speaker.num_steps = 500
  c.speaker.learning_rate = 2e-3
  c.speaker.warmup_steps = 50
  c.speaker.weight_decay = 1e-4
  c.speaker.log_every = 25
  c.speaker.checkpoint_every = 100

  # Cohort discovery on the dev speakers; held-out evaluation on the test speakers.
  c.cohorts = ml_collections.ConfigDict()
  c.cohorts.tree_min_speakers = 12  # Smallest leaf of the geographic tree.
  c.cohorts.tree_max_depth = 3
  c.cohorts.demographic_min_speakers = 3  # Smallest side of a geo-demographic partition.
  c.cohorts.k_values = (2, 3, 4, 5, 6, 7, 8, 9, 10)  # k-means: the best silhouette among these.
  c.cohorts.min_cluster_speakers = 5
  c.cohorts.bootstrap_resamples = 1000
  c.cohorts.confidence = 0.95
  return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`c` shrunk to seconds of work on the `tiny` corpus: every stage and output runs; the
  numbers mean nothing."""
  c.data.synthetic_config = "tiny"
  c.model.subsampling_channels = 4
  c.model.dim = 16
  c.model.embed_dim = 8
  c.model.predictor_dim = 16
  c.model.joint_dim = 16
  c.train = _train(6, 8, 2e-3, 2)
  c.train.num_buckets = 1
  c.train.checkpoint_every = 3
  c.train.log_every = 2
  c.eval.batch_size = 8
  c.speaker.channels = 8
  c.speaker.embed_dim = 8
  c.speaker.speakers_per_batch = 4
  c.speaker.utterances_per_speaker = 2
  c.speaker.crop_frames = 40
  c.speaker.num_steps = 6
  c.speaker.warmup_steps = 2
  c.speaker.log_every = 2
  c.speaker.checkpoint_every = 3
  c.cohorts.tree_min_speakers = 2
  c.cohorts.tree_max_depth = 2
  c.cohorts.demographic_min_speakers = 1
  c.cohorts.k_values = (2, 3)
  c.cohorts.min_cluster_speakers = 1
  c.cohorts.bootstrap_resamples = 50
  return c
