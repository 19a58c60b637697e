"""DP-FedAvg at several device-level epsilons, with activity-based (capped) Poisson selection.

Command:
  python -m projects.fedlearn.main --config=projects/fedlearn/configs/dp.py --workdir=workdirs/fl_dp

5,000 devices, about 200 per round over 40 rounds, each device sampled independently with
p_i = min(2 m / N, m n_i / (N n_ref)) ("activity_capped" with a per-example rate fixed in
advance, n_ref = 1.5 examples: p_i depends on device i's own data only), so the accounting is
valid at q = cap = 0.08. n_ref is a public hyperparameter: the generated population's activity
is heavy-tailed (median 1 example, mean 21), and n_ref = 1.5 gives ~211 expected devices per
round on it; a deployment sets it from public knowledge, never from the private counts. Each device's delta is clipped (adaptive quantile clipping, target median, Andrew et al.
2021), the sum gets Gaussian noise and is divided by the expected number of devices. The
noise multiplier is calibrated (RDP, delta = 1e-5, add/remove one device) so that the 40
rounds spend exactly the target epsilon; a run that would pass it stops with
PrivacyBudgetExceeded. Sub-runs: epsilon 2, 8 and 32, epsilon 8 with uniform Poisson
sampling (q = m / N = 0.04) and with fixed clipping, and the same setup without DP.
Prints epsilon, noise multiplier and test accuracy per run. About 4 minutes on a 2-core CPU.
"""

from projects.fedlearn.configs import base


def get_config():
  c = base.get_config()
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
