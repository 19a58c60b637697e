"""The fields every fedlearn config starts from; a helper module, not a config (no `get_config`).

`defaults()` is one FedAvg run on the natural (per-device) partition of 1,000 generated devices;
each config (`selection.py`, `algorithms.py`, `dp.py`) changes a few fields and lists its
sub-runs in `config.runs` (name -> nested overrides of these fields, merged and validated by
`projects.fedlearn.validation.sub_runs`), run and tabulated in `config.run_order`.
"""

import ml_collections


def defaults() -> ml_collections.ConfigDict:
  """The shared defaults; every field a sub-run may override exists here."""
  c = ml_collections.ConfigDict()
  c.mode = "experiment"
  c.name = "base"
  c.kind = "federated"  # or "centralized" (the pooled-data baseline)
  c.seed = 0
  c.progress = True
  c.eval_batch_size = 1024

  c.data = ml_collections.ConfigDict()
  c.data.num_devices = 1000
  c.data.test_devices = 300
  c.data.num_periods = 1
  c.data.mean_examples = 20.0
  c.data.zipf_a = 1.5
  c.data.max_examples_per_device = 500
  c.data.max_len = 16
  c.data.max_examples_per_client = 32  # a client trains on at most this many (random subset)

  c.task = ml_collections.ConfigDict()
  c.task.name = "intent"
  c.task.embed_dim = 32
  c.task.hidden_dim = 64

  c.partition = ml_collections.ConfigDict()
  c.partition.scheme = "natural"
  c.partition.num_clients = 0  # 0: as many clients as devices
  c.partition.alpha = 0.3
  c.partition.beta = 0.5
  c.partition.num_clusters = 10

  c.fl = ml_collections.ConfigDict()
  c.fl.algorithm = "fedavg"
  c.fl.rounds = 60
  c.fl.clients_per_round = 20
  c.fl.client_learning_rate = 0.1
  c.fl.num_epochs = 2
  c.fl.batch_size = 8
  c.fl.num_steps = 0
  c.fl.prox_mu = 0.0
  c.fl.server_optimizer = "sgd"
  c.fl.server_learning_rate = 1.0
  c.fl.chunk_size = 0
  c.fl.eval_every = 10
  c.fl.checkpoint_every = 20

  c.selection = ml_collections.ConfigDict()
  c.selection.scheme = "uniform"
  c.selection.weighting = "unbiased"
  c.selection.cap_ratio = 4.0
  # DP runs with activity_capped: p_i = min(cap, m n_i / (N n_ref)), n_ref a public number of
  # examples per device fixed in advance (0: data.mean_examples); see selection.py.
  c.selection.reference_examples = 0.0
  c.selection.dropout = 0.0
  c.selection.dropout_mode = "independent"

  c.continual = ml_collections.ConfigDict()
  c.continual.enabled = False
  c.continual.storage_budget = 0  # 0: devices keep everything

  c.dp = ml_collections.ConfigDict()
  c.dp.enabled = False
  c.dp.target_epsilon = 8.0
  c.dp.delta = 1e-5
  c.dp.noise_multiplier = 0.0  # 0: calibrated to dp.target_epsilon over fl.rounds
  c.dp.clip_norm = 0.5
  c.dp.adaptive = False
  c.dp.target_quantile = 0.5
  c.dp.clip_learning_rate = 0.2
  c.dp.count_noise_std = 0.0  # 0: expected clients / 20 (Andrew et al. 2021)
  c.dp.accountant = "rdp"
  # True only for tests and debugging: DP noise and sampling from `seed` (published in
  # results.json), so the guarantee does not hold against anyone who knows it.
  c.dp.insecure_reproducible_noise = False

  c.centralized = ml_collections.ConfigDict()
  c.centralized.epochs = 3
  c.centralized.batch_size = 64
  c.centralized.learning_rate = 0.05

  c.runs = ml_collections.ConfigDict({"fedavg": {}})
  c.run_order = ("fedavg",)  # ConfigDict sorts keys: the order to run (and tabulate) the sub-runs
  return c
