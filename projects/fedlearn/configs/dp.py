"""DP-FedAvg at several device-level epsilons, with activity-based (capped) Poisson selection.

Variants (`get_config(arg)`, the text after the colon of `--config=`):

default: the experiment.
  python -m projects.fedlearn.main --config=projects/fedlearn/configs/dp.py:default \
      --workdir=workdirs/fl_dp
  5,000 devices, about 200 per round over 40 rounds, each device sampled independently with
  p_i = min(2 m / N, m n_i / (N n_ref)) ("activity_capped" with a per-example rate fixed in
  advance, n_ref = 1.5 examples: p_i depends on device i's own data only), so the accounting
  is valid at q = cap = 0.08. n_ref is a public hyperparameter: the generated population's
  activity is heavy-tailed (median 1 example, mean 21), and n_ref = 1.5 gives ~211 expected
  devices per round on it; a deployment sets it from public knowledge, never from the private
  counts. Each device's delta is clipped (adaptive quantile clipping, target median, Andrew et
  al. 2021), the sum gets Gaussian noise and is divided by the expected number of devices. The
  noise multiplier is calibrated (RDP, delta = 1e-5, add/remove one device) so that the 40
  rounds spend exactly the target epsilon; a run that would pass it stops with
  PrivacyBudgetExceeded. Sub-runs: epsilon 2, 8 and 32, epsilon 8 with uniform Poisson
  sampling (q = m / N = 0.04) and with fixed clipping, and the same setup without DP.
  Prints epsilon, noise multiplier and test accuracy per run. About 4 minutes on a 2-core CPU.

tiny: a seconds-long run of every fedlearn stage, for the smoke test.
  python -m projects.fedlearn.main --config=projects/fedlearn/configs/dp.py:tiny \
      --workdir=/tmp/fl_tiny
  The shared defaults (not the experiment above) on 120 tiny devices with a tiny intent
  model, three sub-runs: FedAvg with activity-capped selection and dropout, DP-FedAvg (Poisson
  sampling, adaptive clipping, noise multiplier 1, at most epsilon 8), and the centralized
  baseline. Prints the same table; accuracies are meaningless, the point is that every output
  is written. About 20 s.
"""

import ml_collections

from projects.fedlearn.configs import common

VARIANTS = ("default", "tiny")  # The first is what `--config=.../dp.py` runs.


def _experiment() -> ml_collections.ConfigDict:
  c = common.defaults()
  c.name = "dp"
  c.data.num_devices = 5000
  c.data.max_examples_per_client = 16
  c.task.embed_dim = 16
  c.task.hidden_dim = 32
  c.fl.rounds = 40
  c.fl.clients_per_round = 200
  c.fl.num_epochs = 1
  c.fl.batch_size = 8
  c.fl.client_learning_rate = 0.3
  c.fl.eval_every = 5
  c.selection.scheme = "activity_capped"
  c.selection.cap_ratio = 2.0
  c.selection.reference_examples = 1.5
  c.dp.enabled = True
  c.dp.delta = 1e-5
  c.dp.clip_norm = 0.5
  c.dp.adaptive = True
  c.runs = {
      "nonprivate": {"dp": {"enabled": False}},
      "dp_eps32": {"dp": {"target_epsilon": 32.0}},
      "dp_eps8": {"dp": {"target_epsilon": 8.0}},
      "dp_eps2": {"dp": {"target_epsilon": 2.0}},
      "dp_eps8_poisson_uniform": {"dp": {"target_epsilon": 8.0}, "selection": {"scheme": "poisson"}},
      "dp_eps8_fixed_clip": {"dp": {"target_epsilon": 8.0, "adaptive": False}},
  }
  c.run_order = ("nonprivate", "dp_eps32", "dp_eps8", "dp_eps2", "dp_eps8_poisson_uniform", "dp_eps8_fixed_clip")
  return c


def _tiny() -> ml_collections.ConfigDict:
  c = common.defaults()
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


_BUILDERS = {"default": _experiment, "tiny": _tiny}


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"projects/fedlearn/configs/dp.py:{arg}: the variant must be one of {VARIANTS}")
  return _BUILDERS[arg]()
