"""FedAvg, FedProx, FedOpt (server Adam) and SCAFFOLD across partitions, against the
centralized baseline: the FL-vs-centralized gap table.

Command:
  python -m projects.fedlearn.main --config=projects/fedlearn/configs/algorithms.py \
      --workdir=workdirs/fl_algorithms

The intent task on 1,000 devices' requests, re-partitioned into 1,000 clients by each scheme
of `partition`: natural (one client per device), iid, dirichlet (label skew, alpha 0.3),
quantity (Dirichlet(0.5) sizes) and cluster (k-means feature skew, alpha 0.3). Each
algorithm trains 40 rounds of 10 clients (1 local epoch, batch 8, at most 32 examples per
client; weights n_i / sum of the selected n_j); the centralized baseline trains the same model on the pooled examples for 3
epochs. The table's "gap pts" column is centralized minus federated test accuracy
(percentage points). About 6 minutes on a 2-core CPU (20 federated sub-runs).
"""

from projects.fedlearn.configs import common

ALGORITHMS = {
    "fedavg": {"fl": {"algorithm": "fedavg"}},
    "fedprox": {"fl": {"algorithm": "fedprox", "prox_mu": 0.1}},
    "fedadam": {"fl": {"algorithm": "fedopt", "server_optimizer": "adam", "server_learning_rate": 0.01}},
    "scaffold": {"fl": {"algorithm": "scaffold"}},
}
PARTITIONS = ("natural", "iid", "dirichlet", "quantity", "cluster")


def get_config():
  c = common.defaults()
  c.name = "algorithms"
  c.fl.rounds = 40
  c.fl.clients_per_round = 10
  c.fl.num_epochs = 1
  c.fl.batch_size = 8
  c.fl.client_learning_rate = 0.2
  c.fl.eval_every = 10
  # The ratio estimator (n_i / sum of the selected n_j), standard FedAvg: on the heavy-tailed
  # natural partition the unbiased weights' variance stalls training at 40 rounds.
  c.selection.weighting = "normalized"
  runs = {"centralized": {"kind": "centralized"}}
  for partition in PARTITIONS:
    for name, overrides in ALGORITHMS.items():
      runs[f"{name}_{partition}"] = {**overrides, "partition": {"scheme": partition}}
  c.runs = runs
  c.run_order = ("centralized",) + tuple(f"{a}_{p}" for p in PARTITIONS for a in ALGORITHMS)
  return c
