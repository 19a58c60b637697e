"""Seconds-long run of every fedlearn stage, for the smoke test.

Command:
  python -m projects.fedlearn.main --config=projects/fedlearn/configs/tiny.py --workdir=/tmp/fl_tiny

Three sub-runs on 120 tiny devices with a tiny intent model: FedAvg with activity-capped
selection and dropout, DP-FedAvg (Poisson sampling, adaptive clipping, noise multiplier 1, at
most epsilon 8), and the centralized baseline.
Accuracies are meaningless; the point is that every output is written. About 20 s.
"""

from projects.fedlearn.configs import base


def get_config():
  c = base.get_config()
  c.name = "tiny"
  c.data.num_devices = 120
  c.data.test_devices = 40
  c.data.mean_examples = 8.0
  c.data.max_examples_per_client = 8
  c.task.embed_dim = 8
  c.task.hidden_dim = 8
  c.fl.rounds = 4
  c.fl.clients_per_round = 8
  c.fl.num_epochs = 1
  c.fl.batch_size = 4
  c.fl.eval_every = 2
  c.fl.checkpoint_every = 2
  c.centralized.epochs = 1
  c.eval_batch_size = 256
  c.runs = {
      "fedavg_activity": {"selection": {"scheme": "activity_capped", "dropout": 0.2}},
      "dp_fedavg": {"selection": {"scheme": "poisson"},
                    "dp": {"enabled": True, "target_epsilon": 8.0, "noise_multiplier": 1.0, "adaptive": True,
                           "count_noise_std": 2.0}},
      "centralized": {"kind": "centralized"},
  }
  c.run_order = ("centralized", "fedavg_activity", "dp_fedavg")
  return c
