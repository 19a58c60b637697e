"""Canary extraction from the intent model (central, FedAvg, DP-FedAvg) and canary exposure of the
next-word model (`projects/fedlearn/canaries.py`).

Variants (`get_config(arg)`, the text after the colon of `--config=`):

default: the experiment reported in the README.
  python -m projects.fedlearn.main --config=projects/fedlearn/configs/canaries.py:default \
      --workdir=workdirs/fl_canaries
  "my pin code is _ _ _ _" (digit words, 10^4 secrets) labelled call_contact, inserted 0 (control),
  1, 10 and 100 times; 4 secrets per repetition count (16 models per vmapped ensemble); 500
  generated devices (~7,900 requests). Central: 400 steps of ~64 (Adam; DP-SGD at epsilon 10 and 1,
  example-level). Federated: 60 rounds of 25 devices, 8 local SGD steps of 8 (DP-FedAvg: Poisson
  selection, device-level). Next-word: a 1-layer Transformer, 200 steps of ~48.

tiny: the same pipeline in seconds, for the smoke test.
  python -m projects.fedlearn.main --config=projects/fedlearn/configs/canaries.py:tiny \
      --workdir=/tmp/fl_canaries_tiny
"""

import ml_collections

VARIANTS = ("default", "tiny")  # The first is what `--config=.../canaries.py` runs.


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {arg!r}")
  c = ml_collections.ConfigDict()
  c.mode = "canaries"
  c.seed = 0  # Data, secrets, initialization; DP noise and DP sampling are secret.
  c.insecure_reproducible_noise = False
  k = c.canaries = ml_collections.ConfigDict()
  k.template = "my pin code is {} {} {} {}"
  k.alphabet = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
  k.intent = "call_contact"
  k.repetitions = (0, 1, 10, 100)
  k.secrets_per_repetition = 4
  k.num_devices = 500  # ~7,900 generated requests
  k.test_devices = 200
  k.max_len = 16
  k.target_epsilons = (10.0, 1.0)
  k.delta = 1e-5
  k.runs = ("central", "federated", "next_word")

  central = k.central = ml_collections.ConfigDict()
  central.steps = 400
  central.sampling_probability = 0.008  # ~64 of the ~7,900 requests (+ canaries) per step
  central.physical_batch_size = 128
  central.learning_rate = 3e-3
  central.l2_clip_norm = 1.0
  central.model = ml_collections.ConfigDict({"embed_dim": 32, "hidden_dim": 64})

  fed = k.federated = ml_collections.ConfigDict()
  fed.rounds = 60
  fed.clients_per_round = 25
  fed.max_examples_per_client = 32
  fed.client_learning_rate = 0.5
  fed.client_batch_size = 8
  fed.client_steps = 8
  fed.server_learning_rate = 1.0
  fed.clip_norm = 0.5
  fed.model = ml_collections.ConfigDict({"embed_dim": 32, "hidden_dim": 64})

  nw = k.next_word = ml_collections.ConfigDict()
  nw.steps = 200
  nw.sampling_probability = 0.006  # ~48 per step
  nw.physical_batch_size = 96
  nw.learning_rate = 3e-3
  nw.l2_clip_norm = 1.0
  nw.model = ml_collections.ConfigDict({"dim": 32, "num_heads": 2, "num_layers": 1, "mlp_multiplier": 2})

  a = k.attack = ml_collections.ConfigDict()
  a.steps = 200
  a.learning_rate = 0.1
  a.restarts = 8
  if arg == "tiny":
    k.repetitions, k.secrets_per_repetition, k.num_devices, k.test_devices = (0, 3), 2, 20, 10
    k.template, k.alphabet, k.target_epsilons = "my pin code is {} {}", ("one", "two", "three"), (4.0,)
    central.steps, central.sampling_probability, central.physical_batch_size = 4, 0.1, 96
    central.model = ml_collections.ConfigDict({"embed_dim": 8, "hidden_dim": 16})
    fed.rounds, fed.clients_per_round, fed.client_steps = 2, 4, 2
    fed.model = ml_collections.ConfigDict({"embed_dim": 8, "hidden_dim": 16})
    nw.steps, nw.sampling_probability, nw.physical_batch_size = 3, 0.1, 96
    nw.model = ml_collections.ConfigDict({"dim": 16, "num_heads": 2, "num_layers": 1, "mlp_multiplier": 2})
    a.steps, a.restarts = 5, 2
  return c
