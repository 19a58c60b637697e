"""Canary extraction from the intent model and canary exposure of the next-word model.

`python -m projects.fedlearn.main --config=projects/fedlearn/configs/canaries.py --workdir=DIR`

A canary is the template "my pin code is _ _ _ _" with a secret of four digit words, labelled
with one intent (`canaries.intent`), inserted `r` times into the training data. Every model of
an ensemble gets its own random secret; the repetitions `r` (0 is the control: the model never
saw its secret) and the secrets vary across the models of one vmapped ensemble.

Intent model (Parikh et al. 2022): the attacker knows the template, the label and the
alphabet (digit words), not the secret. `relaxed`: Adam on a softmax over the alphabet per
slot, maximising the label's log-probability (`libs.audit.canaries.make_relaxed_extractor`);
`enumeration`: the exact discrete attack (score all 10^4 fillings). Success: the exact secret
and the per-digit accuracy (chance: 1e-4 and 0.1). Training settings:
  * `central`: the pooled data plus the canary rows; non-private (Adam) and DP-SGD at each
    target epsilon (example-level: the r copies are r examples, so the guarantee for the
    canary is group privacy over r examples, which is weak for large r);
  * `fedavg` and `dp_fedavg`: the canary copies sit on one device; FedAvg rounds of
    `projects.fedlearn.algorithms` (uniform selection), and DP-FedAvg (Poisson selection,
    device-level: all r copies are inside the protected unit).
Next-word model (Carlini et al. 2019): the canary sentence is inserted into the pooled text
and its exposure is measured over all 10^4 fillings by the model's log-perplexity; central
non-private and DP-SGD.

Every epsilon states its unit (example or device), delta and accountant.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import tqdm

from libs import accounting
from libs.audit import canaries as canary_lib
from libs.config.checks import require
from libs.dp.randomness import DpRandomness
from libs.train import io as io_lib
from libs.train import plots
from libs.train import rng as rng_lib
from projects.fedlearn import algorithms
from projects.fedlearn import data as fd
from projects.fedlearn import privacy
from projects.fedlearn import selection
from projects.fedlearn import tasks
from projects.fedlearn.membership import train_models

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position

ATTACKS = ("relaxed", "enumeration")
SLOT = "{}"


@dataclasses.dataclass(frozen=True)
class Canaries:
  """One canary per model. tokens: int32 [M, L]; secrets: int [M, S] (indices into `alphabet`)."""
  vocab: tuple[str, ...]
  template: np.ndarray   # int32 [L]; slot positions hold the first alphabet token
  slots: np.ndarray      # int [S]
  alphabet: np.ndarray   # int [A]: token ids of the alphabet words
  secrets: np.ndarray    # int [M, S]
  repetitions: np.ndarray  # int [M]
  label: int

  @property
  def tokens(self) -> np.ndarray:
    return canary_lib.fill_template(self.template, self.slots, self.alphabet, self.secrets)


def with_words(vocab: tuple[str, ...], words) -> tuple[str, ...]:
  """`vocab` with the words it lacks appended (existing token ids keep their meaning)."""
  extra = sorted(set(words) - set(vocab))
  return tuple(vocab) + tuple(extra)


def make_canaries(base_vocab: tuple[str, ...], cfg, intent_names: tuple[str, ...], max_len: int,
                  seed: int) -> Canaries:
  """`cfg.secrets_per_repetition` canaries for each of `cfg.repetitions`, with random secrets."""
  words = cfg.template.split()
  vocab = with_words(base_vocab, [w for w in words if w != SLOT] + list(cfg.alphabet))
  slots = np.array([1 + i for i, w in enumerate(words) if w == SLOT])  # +1: <bos>
  text = " ".join(cfg.alphabet[0] if w == SLOT else w for w in words)
  template = fd.encode_texts([text], vocab, max_len=max_len)[0]
  if len(words) + 2 > max_len:
    raise ValueError(f"the template has {len(words)} words; with <bos> and <eos> it needs max_len >= "
                     f"{len(words) + 2}, got {max_len}")
  alphabet = np.array([vocab.index(w) for w in cfg.alphabet])
  reps = np.repeat(np.asarray(cfg.repetitions, np.int64), cfg.secrets_per_repetition)
  rng = rng_lib.Streams(seed).numpy("canaries/secrets")  # The attack never reads them.
  secrets = rng.integers(0, len(alphabet), size=(len(reps), len(slots)))
  return Canaries(vocab, template, slots, alphabet, secrets, reps, intent_names.index(cfg.intent))


def central_data(x: np.ndarray, y: np.ndarray, can: Canaries) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-model training sets: the shared rows, then max(r) canary rows of which a model may sample
  its first r. Returns (tokens [M, N + R, L], intents [M, N + R], member bool [M, N + R])."""
  num_models, r_max = len(can.repetitions), int(can.repetitions.max())
  xs = np.concatenate([np.broadcast_to(x, (num_models,) + x.shape),
                       np.repeat(can.tokens[:, None], r_max, axis=1)], axis=1)
  ys = np.concatenate([np.broadcast_to(y, (num_models, len(y))), np.full((num_models, r_max), can.label)], axis=1)
  member = np.concatenate([np.ones((num_models, len(y)), bool),
                           np.arange(r_max)[None] < can.repetitions[:, None]], axis=1)
  return xs.astype(np.int32), ys.astype(np.int32), member


def device_data(pop: fd.FederatedData, tokens: np.ndarray, label: int, repetitions: int,
                device: int = 0) -> fd.FederatedData:
  """`pop` with `repetitions` copies of the canary `tokens` [L] added to the front of `device`'s rows."""
  rows = np.repeat(tokens[None], repetitions, axis=0).astype(np.int32)
  start = pop.offsets[device]
  offsets = pop.offsets.copy()
  offsets[device + 1:] += repetitions
  return dataclasses.replace(pop, tokens=np.concatenate([pop.tokens[:start], rows, pop.tokens[start:]]),
                             intents=np.concatenate([pop.intents[:start], np.full(repetitions, label, np.int32),
                                                     pop.intents[start:]]),
                             periods=np.concatenate([pop.periods[:start], np.zeros(repetitions, np.int32),
                                                     pop.periods[start:]]),
                             offsets=offsets)


def train_federated(task: tasks.Task, pop: fd.FederatedData, can: Canaries, cfg, *, dp: algorithms.DPConfig | None,
                    rand: DpRandomness, init_key: jax.Array, name: str):
  """One FedAvg (dp None: uniform selection) or DP-FedAvg (Poisson selection) run per canary,
  vmapped over the models; the canary copies live on device 0. Returns the stacked params."""
  num_models, n = len(can.repetitions), pop.num_devices
  m = cfg.clients_per_round
  client = algorithms.ClientConfig(learning_rate=cfg.client_learning_rate, batch_size=cfg.client_batch_size,
                                   num_steps=cfg.client_steps)
  alg = algorithms.make_algorithm("fedavg", task.example_losses, client, server_learning_rate=cfg.server_learning_rate,
                                  dp=dp)
  datasets = [device_data(pop, can.tokens[i], can.label, int(r)) for i, r in enumerate(can.repetitions)]
  counts = pop.num_examples()
  padded = m if dp is None else int(math.ceil(m + 4 * math.sqrt(m) + 4))
  params = jax.jit(jax.vmap(task.init))(jax.random.split(init_key, num_models))
  state = jax.jit(jax.vmap(alg.init))(params)
  apply = jax.jit(jax.vmap(alg.apply))
  round_key = rand.key(f"canaries/{name}/rounds")
  rngs = [np.random.default_rng(rand.seed(f"canaries/{name}/selection/{i}")) for i in range(num_models)]
  for t in tqdm.trange(cfg.rounds, desc=name, leave=False):
    tokens = np.zeros((num_models, padded, cfg.max_examples_per_client, pop.max_len), np.int32)
    intents = np.zeros((num_models, padded, cfg.max_examples_per_client), np.int32)
    mask = np.zeros((num_models, padded, cfg.max_examples_per_client), np.float32)
    ids = np.zeros((num_models, padded), np.int32)
    weights = np.zeros((num_models, padded), np.float32)
    for i, rng in enumerate(rngs):
      chosen = selection.select("uniform" if dp is None else "poisson", counts, m, rng).ids
      if len(chosen) > padded:
        raise RuntimeError(f"{len(chosen)} devices were selected, more than the padded round of {padded}; "
                           "dropping some would void the DP analysis")
      batch = datasets[i].client_batch(chosen, cfg.max_examples_per_client, rng)
      k = len(chosen)
      tokens[i, :k], intents[i, :k], mask[i, :k], ids[i, :k] = batch.tokens, batch.intents, batch.mask, chosen
      weights[i, :k] = 1.0 if dp is not None else 1.0 / k
    clients = algorithms.Clients((jnp.asarray(tokens), jnp.asarray(intents)), jnp.asarray(mask), jnp.asarray(ids))
    keys = jax.random.split(jax.random.fold_in(round_key, t), num_models)
    state, _ = apply(state, clients, jnp.asarray(weights), keys)
  return state.params


def _intent_log_prob(task: tasks.Task, label: int):
  def label_log_prob(params, soft):
    return jax.nn.log_softmax(task.apply(params, soft[None]))[0, label]
  return label_log_prob


def attack_intent(task: tasks.Task, params, can: Canaries, acfg, key: jax.Array) -> dict[str, np.ndarray]:
  """Decoded secrets [M, S] of each attack against each model."""
  extractor = canary_lib.make_relaxed_extractor(_intent_log_prob(task, can.label), can.template, can.slots,
                                                can.alphabet, vocab_size=len(can.vocab), steps=acfg.steps,
                                                learning_rate=acfg.learning_rate, restarts=acfg.restarts)
  relaxed, _ = jax.vmap(extractor)(params, jax.random.split(key, len(can.repetitions)))
  scores = jax.jit(jax.vmap(lambda p, x: jax.nn.log_softmax(task.apply(p, x))[:, can.label], (0, None)))
  enumerated = canary_lib.enumeration_extraction(lambda rows: scores(params, jnp.asarray(rows)), can.template,
                                                 can.slots, can.alphabet)
  return {"relaxed": np.asarray(relaxed), "enumeration": np.asarray(enumerated)}


def exposures(task: tasks.Task, params, can: Canaries, batch_size: int = 2500) -> np.ndarray:
  """Exposure of each model's canary [M] over all fillings, by the log-perplexity of the sentence."""
  fillings = canary_lib.all_fillings(len(can.slots), len(can.alphabet))
  losses = jax.jit(jax.vmap(lambda p, x: task.example_losses(p, x, jnp.zeros(x.shape[0], jnp.int32)), (0, None)))
  scores = np.concatenate([np.asarray(losses(params, jnp.asarray(canary_lib.fill_template(
      can.template, can.slots, can.alphabet, fillings[i:i + batch_size])))) for i in range(0, len(fillings),
                                                                                     batch_size)], axis=1)
  strides = len(can.alphabet) ** np.arange(len(can.slots))[::-1]
  index = can.secrets @ strides  # Fillings are in lexicographic order.
  return np.array([canary_lib.exposure(scores[i], int(index[i])) for i in range(len(index))])


def accuracy(task: tasks.Task, params, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Per-model test metric [M] (intent accuracy or next-word token accuracy)."""
  metric = jax.jit(jax.vmap(lambda p: task.example_metrics(p, jnp.asarray(x), jnp.asarray(y))["correct"].mean()))
  return np.asarray(metric(params))


def _rows_by_repetition(can: Canaries, base: dict, values: dict[str, np.ndarray]) -> list[dict]:
  rows = []
  for r in np.unique(can.repetitions):
    pick = can.repetitions == r
    rows.append(dict(base, repetitions=int(r), models=int(pick.sum()),
                     **{k: float(np.mean(v[pick])) for k, v in values.items()}))
  return rows


def _settings(cfg, section, *, federated: bool, num_devices: int = 0):
  """(name, target epsilon, noise multiplier, epsilon spent) of the non-private and DP settings."""
  out = [("fedavg" if federated else "non-private", None, None, None)]
  for eps in cfg.target_epsilons:
    if federated:
      q = section.clients_per_round / num_devices
      z = privacy.calibrate_noise_multiplier(eps, cfg.delta, section.rounds, "poisson", num_devices=num_devices,
                                             clients_per_round=section.clients_per_round, max_probability=q)
      acct = privacy.DeviceAccountant("poisson", noise_multiplier=z, num_devices=num_devices,
                                      clients_per_round=section.clients_per_round, max_probability=q,
                                      target_epsilon=eps, delta=cfg.delta)
      out.append((f"dp_fedavg_eps{eps:g}", eps, z, acct.epsilon(section.rounds)))
    else:
      q = section.sampling_probability
      z = accounting.calibrate_noise_multiplier(eps, cfg.delta, q, section.steps)
      out.append((f"dpsgd_eps{eps:g}", eps, z, accounting.dpsgd_epsilon(z, q, section.steps, cfg.delta)))
  return out


def plot(rows: list[dict], candidates: int, path: str) -> str:
  intent = [r for r in rows if r["model"] == "intent" and r["attack"] == "enumeration"]
  nextword = [r for r in rows if r["model"] == "next_word"]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for ax, subset, key, label in ((axes[0], intent, "digit_accuracy", "per-digit extraction accuracy"),
                                 (axes[1], nextword, "exposure", "exposure (bits)")):
    for setting in dict.fromkeys(r["setting"] for r in subset):
      pts = [r for r in subset if r["setting"] == setting]
      ax.plot([max(r["repetitions"], 0.5) for r in pts], [r[key] for r in pts], "o-", label=setting)
    ax.set_xscale("log")
    ax.set_xlabel("canary repetitions (0 plotted at 0.5: never inserted)")
    ax.set_ylabel(label)
    if subset:
      ax.legend(fontsize=7)
  axes[0].axhline(0.1, color="black", ls="--", lw=0.8)
  axes[0].set_title("Intent model: white-box extraction (enumeration)", fontsize=9)
  axes[1].axhline(math.log2(candidates), color="grey", ls=":", lw=0.8)
  axes[1].set_title("Next-word model: exposure of the canary", fontsize=9)
  return plots.save_figure(fig, path)


def format_table(rows: list[dict]) -> str:
  lines = [f"{'model':<9} {'setting':<18} {'unit':<7} {'epsilon':>7} {'reps':>4} {'attack':<11} "
           f"{'exact':>6} {'digits':>6} {'exposure':>8} {'test acc':>8}"]
  for r in rows:
    eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
    exact = "-" if r.get("extraction_rate") is None else f"{r['extraction_rate']:.2f}"
    digits = "-" if r.get("digit_accuracy") is None else f"{r['digit_accuracy']:.2f}"
    expo = "-" if r.get("exposure") is None else f"{r['exposure']:.2f}"
    lines.append(f"{r['model']:<9} {r['setting']:<18} {r['unit']:<7} {eps:>7} {r['repetitions']:>4} "
                 f"{r['attack']:<11} {exact:>6} {digits:>6} {expo:>8} {r['test_accuracy']:>8.3f}")
  lines.append("epsilon: delta 1e-5, RDP accountant; unit example (central DP-SGD: r copies of a canary are r "
               "examples) or device (DP-FedAvg: all copies on one device). Chance: exact 1e-4, digits 0.10; "
               "exposure of an unseen canary ~1.4 bits on average, at most log2(10^4) = 13.3")
  return "\n".join(lines)


def validate(config) -> None:
  cfg = config.canaries
  require(cfg.template.split().count(SLOT) >= 1, "canaries.template", f"needs at least one {SLOT!r} slot",
          cfg.template)
  require(len(set(cfg.alphabet)) == len(cfg.alphabet) >= 2, "canaries.alphabet", "must be >= 2 distinct words",
          cfg.alphabet)
  require(cfg.intent in fd.INTENTS, "canaries.intent", f"must be one of {tuple(fd.INTENTS)}", cfg.intent)
  require(all(isinstance(r, int) and r >= 0 for r in cfg.repetitions) and max(cfg.repetitions) >= 1,
          "canaries.repetitions", "must be integers >= 0, at least one >= 1", cfg.repetitions)
  require(isinstance(cfg.secrets_per_repetition, int) and cfg.secrets_per_repetition >= 1,
          "canaries.secrets_per_repetition", "must be an integer >= 1", cfg.secrets_per_repetition)
  require(all(e > 0 for e in cfg.target_epsilons), "canaries.target_epsilons", "must all be > 0",
          cfg.target_epsilons)
  require(0 < cfg.delta < 1, "canaries.delta", "must be in (0, 1)", cfg.delta)
  require(set(cfg.runs) <= {"central", "federated", "next_word"} and cfg.runs, "canaries.runs",
          "must be a non-empty subset of ('central', 'federated', 'next_word')", cfg.runs)
  for name in ("central", "next_word"):
    s = cfg[name]
    require(0 < s.sampling_probability <= 1, f"canaries.{name}.sampling_probability", "must be in (0, 1]",
            s.sampling_probability)
    require(isinstance(s.steps, int) and s.steps >= 1, f"canaries.{name}.steps", "must be an integer >= 1", s.steps)
  f = cfg.federated
  require(isinstance(f.rounds, int) and f.rounds >= 1, "canaries.federated.rounds", "must be an integer >= 1",
          f.rounds)
  require(1 <= f.clients_per_round <= cfg.num_devices, "canaries.federated.clients_per_round",
          "must be in [1, canaries.num_devices]", f.clients_per_round)


def run(config, workdir: str) -> dict:
  """Trains every ensemble (resumable stages), attacks it, writes results.json, the figure and the table."""
  validate(config)
  cfg = config.canaries
  rand = DpRandomness.from_config(config.seed, config.insecure_reproducible_noise)
  streams = rng_lib.Streams(config.seed)
  os.makedirs(workdir, exist_ok=True)
  pop = fd.generate_population(cfg.num_devices, seed=config.seed, max_len=cfg.max_len)
  test = fd.held_out(cfg.test_devices, seed=config.seed, max_len=cfg.max_len)
  can = make_canaries(pop.vocab, cfg, pop.intent_names, pop.max_len, config.seed)
  x, y = pop.pooled()
  tx, ty = test.pooled()
  attack_key = streams.key("canaries/attack")
  rows = []
  common = {"delta": cfg.delta, "accountant": "rdp"}
  for run_name in cfg.runs:
    model = "next_word" if run_name == "next_word" else "intent"
    section = cfg[run_name]
    task = tasks.make_task(model, vocab_size=len(can.vocab), num_intents=len(pop.intent_names), max_len=pop.max_len,
                           **dict(section.model))
    federated = run_name == "federated"
    for name, target, sigma, spent in _settings(cfg, section, federated=federated, num_devices=pop.num_devices):

      def train_and_attack(name=name, sigma=sigma, task=task, section=section, model=model):
        init_key = streams.key(f"canaries/{run_name}/init")
        if federated:
          dp = None if sigma is None else algorithms.DPConfig(clip_norm=section.clip_norm, noise_multiplier=sigma,
                                                              expected_clients=section.clients_per_round)
          params = train_federated(task, pop, can, section, dp=dp, rand=rand, init_key=init_key, name=name)
        else:
          xs, ys, member = central_data(x, y, can)
          params = train_models(task, xs, ys, member, section, noise_multiplier=sigma,
                                expected_batch_size=section.sampling_probability * len(y), rand=rand,
                                init_key=init_key, name=f"canaries/{run_name}/{name}")
        out = {"test_accuracy": accuracy(task, params, tx, ty).tolist()}
        if model == "intent":
          for attack, decoded in attack_intent(task, params, can, cfg.attack, attack_key).items():
            out[attack] = decoded.tolist()
        else:
          out["exposure"] = exposures(task, params, can).tolist()
        return out

      out = io_lib.run_stage(os.path.join(workdir, "canaries", run_name, name), train_and_attack)
      unit = "device" if federated else "example"
      base = dict(common, model=model, setting=name, unit=unit, epsilon=spent, target_epsilon=target,
                  noise_multiplier=sigma)
      acc = np.asarray(out["test_accuracy"])
      if model == "intent":
        for attack in ATTACKS:
          decoded = np.asarray(out[attack])
          exact = np.all(decoded == can.secrets, axis=1).astype(float)
          digits = np.mean(decoded == can.secrets, axis=1)
          rows += _rows_by_repetition(can, dict(base, attack=attack),
                                      {"extraction_rate": exact, "digit_accuracy": digits, "test_accuracy": acc})
      else:
        expo = np.asarray(out["exposure"])
        # Extracted = ranked first of all fillings: what greedy search for the likeliest secret returns.
        top = (expo >= math.log2(len(can.alphabet) ** len(can.slots)) - 1e-9).astype(float)
        rows += _rows_by_repetition(can, dict(base, attack="exposure"),
                                    {"exposure": expo, "extraction_rate": top, "test_accuracy": acc})
      print(f"[canaries] {run_name}/{name} done")
  candidates = len(cfg.alphabet) ** cfg.template.split().count(SLOT)
  figure = plot(rows, candidates, os.path.join(workdir, "figures", "canaries.png"))
  results = {"canaries": rows, "randomness": rand.describe(), "config": config.to_dict(),
             "canary_template": cfg.template, "candidates": candidates}
  io_lib.write_results(workdir, results, sort_keys=True)
  print(format_table(rows))
  print(f"results: {os.path.join(workdir, 'results.json')}\nfigure: {figure}")
  return results
