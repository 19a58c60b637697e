"""Uniform vs activity-based device selection, on static and on continual (drifting) data.

Command:
  python -m projects.fedlearn.main --config=projects/fedlearn/configs/selection.py \
      --workdir=workdirs/fl_selection

FedAvg on the intent task, 1,000 devices with heavy-tailed activity, 15 devices per round,
10% of them dropping out mid-round. Selection schemes (all with unbiased Horvitz-Thompson
weights): "uniform" (15 without replacement), "activity" (15 draws with replacement,
probability proportional to the device's available examples) and "activity_capped"
(Poisson, p_i = min(4 m / N, c n_i)). Static: 60 rounds on all data. Continual: 4 periods
of 15 rounds; devices hold only what they have produced so far (at most 30 examples, oldest
deleted first), selection uses the counts available now, and accuracy is measured on the
current period's held-out requests (the table's last column averages it over periods).
Prints the table and writes figures/test_accuracy.png. About 2 minutes on a 2-core CPU.
"""

from projects.fedlearn.configs import common


def get_config():
  c = common.defaults()
  c.name = "selection"
  c.data.num_periods = 4
  c.fl.rounds = 60
  c.fl.clients_per_round = 15
  c.fl.num_epochs = 1
  c.fl.batch_size = 8
  c.fl.client_learning_rate = 0.2
  c.fl.eval_every = 5
  c.selection.dropout = 0.1
  c.continual.storage_budget = 30
  runs = {}
  for scheme in ("uniform", "activity", "activity_capped"):
    runs[f"static_{scheme}"] = {"selection": {"scheme": scheme}}
    runs[f"continual_{scheme}"] = {"selection": {"scheme": scheme}, "continual": {"enabled": True}}
  c.runs = runs
  c.run_order = tuple(f"{s}_{scheme}" for s in ("static", "continual")
                      for scheme in ("uniform", "activity", "activity_capped"))
  return c
