"""Which bias metric to trust? Intrinsic vs extrinsic metrics, and accumulated prediction sensitivity.

Two studies on one population of models (issue 17, parts 1 and 2), on the generated text of
`libs.data.gender_text` (professions that co-occur with one gender more than the other, at a
bias level the generator controls):

1. **Intrinsic vs extrinsic (Cao et al. 2022).** Each member is a causal Transformer language
   model pretrained on text of bias `lm_bias`, then fine-tuned as a profession classifier on task
   data of bias `task_bias` (a grid of both, in two model sizes, each with its own seed). The
   intrinsic metric is CEAT (`libs.metrics.association`): male vs female terms against male- vs
   female-stereotyped attribute words, on the pretrained LM's contextual embeddings. The
   extrinsic metrics are measured on the classifier with gender-balanced test data: the TPR gap
   (per profession, the true-positive rate of the stereotypical gender minus the other's,
   averaged) and the counterfactual flip rate (predictions that change when every gendered word
   is swapped). Spearman correlations across the population with bootstrap intervals, for CEAT
   on generic text with profession words as attributes (`aligned_data` False) and on the task's
   own test sentences with the task's duty words as attributes (`aligned_data` True).
2. **Accumulated prediction sensitivity (Krishna et al. 2022)** of each classifier
   (`libs.metrics.sensitivity`), weighted by a protected-status model (a gender classifier), next
   to the counterfactual metric (mean total-variation distance between the predictions on a
   sentence and on its role reversal); each one's Spearman correlation with the controlled bias
   level of the classifier's training data (`task_bias`).

Stages (each skipped on a rerun once done): `lm_<size>` (the pretrained LMs of one size, one
vmapped ensemble), `classifier_<size>` (their fine-tuned classifiers), `protected` (the gender
model), `metrics` (every per-model metric), then the correlations, results.json and figures.
"""

from __future__ import annotations

import functools
import itertools
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
import optax
import scipy.stats
import tqdm

from libs.config import checks
from libs.data import gender_text as gt
from libs.metrics import association
from libs.metrics import sensitivity as sens_lib
from libs.models.lm import LMClassifier, LMConfig, TransformerLM, next_token_nll
from libs.train import io as io_lib
from libs.train import plots
from libs.train.rng import Streams

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

# CEAT word sets: targets (male / female terms that the corpora use) and attributes.
MALE_TERMS = ("he", "his") + gt.RELATIVES + gt.NAMES
FEMALE_TERMS = tuple(dict(gt.GENDER_PAIRS)[w] for w in MALE_TERMS)
MALE_JOBS = tuple(p for p, s in zip(gt.PROFESSIONS, gt.STEREOTYPE) if s > 0)
FEMALE_JOBS = tuple(p for p, s in zip(gt.PROFESSIONS, gt.STEREOTYPE) if s < 0)
MALE_DUTY_WORDS = tuple(gt.DUTY_KEYWORDS[p] for p in MALE_JOBS)
FEMALE_DUTY_WORDS = tuple(gt.DUTY_KEYWORDS[p] for p in FEMALE_JOBS)

INTRINSIC = {False: "ceat_generic_professions", True: "ceat_task_duties"}
# CEAT on the fine-tuned classifier's own hidden states (aligned data and the same model).
FINETUNED = "ceat_task_duties_finetuned"
EXTRINSIC = ("tpr_gap", "counterfactual_flip_rate")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field."""
  checks.one_of(config, "mode", ("text_metrics",))
  checks.positive_int(config, "seed", 0)
  for field in ("lm_examples", "task_train_examples", "task_test_examples", "generic_contexts"):
    checks.positive_int(config, f"data.{field}")
  checks.number(config, "data.ambiguity", 0.0, 1.0)
  for field in ("lm_biases", "task_biases"):
    values = tuple(config.population[field])
    checks.require(bool(values) and all(isinstance(b, (int, float)) and 0.0 <= b <= 1.0 for b in values),
                   f"population.{field}", "must be a non-empty tuple of numbers in [0, 1]", values)
  sizes = dict(config.population.sizes)
  checks.require(bool(sizes), "population.sizes", "must name at least one model size", sizes)
  for name, size in sizes.items():
    checks.require(isinstance(size, (tuple, list)) and len(size) == 3 and all(int(v) >= 1 for v in size),
                   f"population.sizes.{name}", "must be (dim, num_layers, num_heads), each >= 1", size)
    checks.require(int(size[0]) % int(size[2]) == 0, f"population.sizes.{name}",
                   "dim must be a multiple of num_heads", size)
  members = len(config.population.lm_biases) * len(config.population.task_biases) * len(sizes)
  checks.require(members >= 4, "population", "needs at least 4 models for a rank correlation", members)
  for section in ("lm_train", "classifier_train", "protected_train"):
    checks.positive_int(config, f"{section}.steps")
    checks.positive_int(config, f"{section}.batch_size")
    checks.number(config, f"{section}.learning_rate", 0.0, 1.0, low_open=True)
  checks.positive_int(config, "ceat.num_samples", 2)
  checks.positive_int(config, "ceat.max_occurrences")
  checks.positive_int(config, "stats.bootstrap_resamples", 10)
  checks.number(config, "stats.confidence", 0.0, 1.0, low_open=True, high_open=True)
  checks.positive_int(config, "sensitivity.examples")
  checks.positive_int(config, "eval_batch_size")


# ----------------------------------------------------------------------------- population

def members(config) -> list[dict]:
  """The population: every (size, lm_bias, task_bias), each with its own seed."""
  out = []
  for s, (size, (dim, layers, heads)) in enumerate(sorted(dict(config.population.sizes).items())):
    for lm_bias, task_bias in itertools.product(config.population.lm_biases, config.population.task_biases):
      out.append({"index": len(out), "size": size, "dim": int(dim), "num_layers": int(layers),
                  "num_heads": int(heads), "lm_bias": float(lm_bias), "task_bias": float(task_bias),
                  "seed": int(config.seed) * 1000 + len(out), "size_index": s})
  return out


def _lm_config(member: dict, vocab_size: int) -> LMConfig:
  return LMConfig(vocab_size=vocab_size, max_len=gt.MAX_LEN, dim=member["dim"], num_heads=member["num_heads"],
                  num_layers=member["num_layers"])


def train_vmapped(loss_fn, params, data: tuple[np.ndarray, ...], *, steps: int, batch_size: int,
                  learning_rate: float, rng: np.random.Generator, desc: str, progress: bool):
  """Adam(W) on M models at once: `params` stacked [M, ...], `data` arrays [M, N, ...] (each model its
  own examples), `loss_fn(params, *batch) -> scalar` for one model. Returns the stacked params."""
  num_models, n = data[0].shape[:2]
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(1, steps // 10), steps, learning_rate * 0.05)
  opt = optax.adamw(schedule, weight_decay=1e-4)
  opt_state = jax.vmap(opt.init)(params)
  arrays = tuple(jnp.asarray(d) for d in data)

  @jax.jit
  def step(params, opt_state, idx):
    def one(p, s, i, *d):
      loss, grads = jax.value_and_grad(loss_fn)(p, *(x[i] for x in d))
      updates, s = opt.update(grads, s, p)
      return optax.apply_updates(p, updates), s, loss
    return jax.vmap(one)(params, opt_state, idx, *arrays)

  losses = None
  bar = tqdm.trange(steps, desc=desc, leave=False, disable=not progress)
  for _ in bar:
    idx = jnp.asarray(rng.integers(n, size=(num_models, batch_size)))
    params, opt_state, losses = step(params, opt_state, idx)
  bar.close()
  final = np.asarray(losses)
  if not np.all(np.isfinite(final)):
    raise FloatingPointError(f"{desc}: the training loss is not finite at step {steps} for models "
                             f"{np.flatnonzero(~np.isfinite(final)).tolist()}")
  return params


def _stack_init(module, seeds, tokens) -> dict:
  keys = jnp.stack([jax.random.key_data(jax.random.key(s)) for s in seeds])
  return jax.jit(jax.vmap(lambda k: module.init(jax.random.wrap_key_data(k), tokens)["params"]))(keys)


def _lm_stage(config, group: list[dict], vocab, progress: bool):
  lm = TransformerLM(_lm_config(group[0], len(vocab)))
  corpora = np.stack([gt.lm_corpus(vocab, config.data.lm_examples, bias=m["lm_bias"], seed=m["seed"])
                      for m in group])
  params = _stack_init(lm, [m["seed"] for m in group], corpora[0, :2])

  def loss(p, tokens):
    return jnp.mean(next_token_nll(lm.apply({"params": p}, tokens), tokens, tokens > 0))

  t = config.lm_train
  return train_vmapped(loss, params, (corpora,), steps=t.steps, batch_size=t.batch_size,
                       learning_rate=t.learning_rate, rng=Streams(config.seed).numpy(f"lm/{group[0]['size']}"),
                       desc=f"LMs ({group[0]['size']})", progress=progress)


def _task_data(config, vocab, member: dict) -> gt.TaskData:
  return gt.task_corpus(vocab, config.data.task_train_examples, bias=member["task_bias"], seed=member["seed"],
                        ambiguity=config.data.ambiguity)


def _classifier_stage(config, group: list[dict], vocab, lm_params, progress: bool):
  clf = LMClassifier(_lm_config(group[0], len(vocab)), num_classes=len(gt.PROFESSIONS))
  data = [_task_data(config, vocab, m) for m in group]
  tokens = np.stack([d.tokens for d in data])
  labels = np.stack([d.labels for d in data])
  heads = _stack_init(clf, [m["seed"] + 7 for m in group], tokens[0, :2])
  params = {"lm": {k: v for k, v in lm_params.items() if k != "head"}, "classifier": heads["classifier"]}

  def loss(p, x, y):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(clf.apply({"params": p}, x), y))

  t = config.classifier_train
  return train_vmapped(loss, params, (tokens, labels), steps=t.steps, batch_size=t.batch_size,
                       learning_rate=t.learning_rate,
                       rng=Streams(config.seed).numpy(f"classifier/{group[0]['size']}"),
                       desc=f"classifiers ({group[0]['size']})", progress=progress)


def _protected_member(config) -> dict:
  size = sorted(dict(config.population.sizes).items())[0][1]
  return {"dim": int(size[0]), "num_layers": int(size[1]), "num_heads": int(size[2]), "seed": 10_000 + config.seed}


def _protected_stage(config, vocab, progress: bool):
  """The protected-status model: a gender classifier on balanced task sentences (one model)."""
  m = _protected_member(config)
  clf = LMClassifier(_lm_config(m, len(vocab)), num_classes=2)
  data = gt.task_corpus(vocab, config.data.task_train_examples * 2, bias=0.0, seed=m["seed"],
                        ambiguity=config.data.ambiguity)
  params = _stack_init(clf, [m["seed"]], data.tokens[:2])

  def loss(p, x, y):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(clf.apply({"params": p}, x), y))

  t = config.protected_train
  stacked = train_vmapped(loss, params, (data.tokens[None], data.gender[None]), steps=t.steps,
                          batch_size=t.batch_size, learning_rate=t.learning_rate,
                          rng=Streams(config.seed).numpy("protected"), desc="protected-status model",
                          progress=progress)
  return jax.tree.map(lambda x: x[0], stacked)


# ----------------------------------------------------------------------------- metrics

def _batched(fn, arrays, batch_size):
  """fn over leading-axis chunks of `arrays` (padded to full chunks: one compilation), concatenated."""
  n = arrays[0].shape[0]
  outs = []
  for start in range(0, n, batch_size):
    chunk = [a[start:start + batch_size] for a in arrays]
    pad = batch_size - chunk[0].shape[0]
    if pad:
      chunk = [np.concatenate([c, np.repeat(c[-1:], pad, axis=0)]) for c in chunk]
    outs.append(np.asarray(fn(*chunk))[:batch_size - pad if pad else None])
  return np.concatenate(outs)


def occurrences(hidden: np.ndarray, tokens: np.ndarray, words, vocab, max_occurrences: int,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Contextual embeddings of each word's occurrences: {word: [k, d]} from hidden [N, T, d]."""
  out = {}
  for word in words:
    rows, cols = np.nonzero(tokens == vocab.index[word])
    if rows.size > max_occurrences:
      keep = rng.choice(rows.size, max_occurrences, replace=False)
      rows, cols = rows[keep], cols[keep]
    out[word] = hidden[rows, cols]
  return out


def word_sets(contexts: np.ndarray, a_words, b_words, vocab):
  """The CEAT word sets that occur in `contexts`: target pairs (male term, female counterpart) with
  both words present, and the attribute words present.

  Raises:
    ValueError: when a set would be empty (too few contexts).
  """
  present = set(np.unique(contexts).tolist())
  pairs = [(m, f) for m, f in zip(MALE_TERMS, FEMALE_TERMS) if vocab.index[m] in present and vocab.index[f] in present]
  a = tuple(w for w in a_words if vocab.index[w] in present)
  b = tuple(w for w in b_words if vocab.index[w] in present)
  if not pairs or not a or not b:
    raise ValueError(f"the CEAT contexts ({contexts.shape[0]} sentences) lack target pairs or attribute words: "
                     "raise config.data.generic_contexts / task_test_examples")
  return tuple(m for m, _ in pairs), tuple(f for _, f in pairs), a, b


def tpr_gap(pred: np.ndarray, labels: np.ndarray, gender: np.ndarray) -> float:
  """Mean over professions of TPR(stereotypical gender) - TPR(other gender): > 0 favours the stereotype."""
  gaps = []
  for p, stereo in enumerate(gt.STEREOTYPE):
    tpr = []
    for g in (gt.MALE, gt.FEMALE):
      sel = (labels == p) & (gender == g)
      tpr.append(np.mean(pred[sel] == p) if sel.any() else np.nan)
    if not np.any(np.isnan(tpr)):
      gaps.append(stereo * (tpr[0] - tpr[1]))
  return float(np.mean(gaps)) if gaps else float("nan")


def _member_metrics(config, group, vocab, lm_params, clf_params, protected_params, test, generic, progress):
  """Every per-model metric of one size group."""
  m0 = group[0]
  lm = TransformerLM(_lm_config(m0, len(vocab)))
  clf = LMClassifier(_lm_config(m0, len(vocab)), num_classes=len(gt.PROFESSIONS))
  pm = _protected_member(config)
  protected = LMClassifier(_lm_config(pm, len(vocab)), num_classes=2)
  bs = config.eval_batch_size
  rng = Streams(config.seed).numpy(f"metrics/{m0['size']}")

  # Protected-attribute weights of the sensitivity examples (shared by every model).
  sens_tokens = test.tokens[:config.sensitivity.examples]
  mask = (sens_tokens > 0).astype(np.float32)

  @jax.jit
  def protected_weights(tokens, mask):
    e = protected.embed(protected_params, tokens)
    s = sens_lib.position_sensitivity(
        lambda emb, t: jax.nn.softmax(protected.apply({"params": protected_params}, t, token_embeddings=emb))[:, 1:],
        e, tokens)
    return sens_lib.feature_weights(s[:, 0], mask)

  weights = _batched(protected_weights, [sens_tokens, mask], bs)
  reversed_test = vocab.swap_gender(test.tokens)
  # Compiled once per size group: the parameters are arguments, not constants.
  hidden_jit = jax.jit(lambda p, t: lm.apply({"params": p}, t, return_hidden=True))
  clf_hidden_jit = jax.jit(lambda p, t: lm.apply({"params": p["lm"]}, t, return_hidden=True))
  probs_jit = jax.jit(lambda p, t: jax.nn.softmax(clf.apply({"params": p}, t)))

  @jax.jit
  def aps_jit(p, tokens, w):
    s = sens_lib.position_sensitivity(
        lambda emb, t: jax.nn.softmax(clf.apply({"params": p}, t, token_embeddings=emb)), clf.embed(p, tokens), tokens)
    mask = (tokens > 0).astype(s.dtype)
    return jnp.stack([sens_lib.accumulated_prediction_sensitivity(s, w),
                      sens_lib.relative_prediction_sensitivity(s, w, mask)], -1)

  rows = []
  for i, member in enumerate(tqdm.tqdm(group, desc=f"metrics ({m0['size']})", leave=False, disable=not progress)):
    lp = jax.tree.map(lambda x, i=i: x[i], lm_params)
    cp = jax.tree.map(lambda x, i=i: x[i], clf_params)
    hidden_fn = functools.partial(hidden_jit, lp)
    probs_fn = functools.partial(probs_jit, cp)
    row = dict(member)
    # Intrinsic: CEAT on generic text (profession words) and on the task's test sentences (duty words).
    for name, fn, contexts, (x_words, y_words, a_words, b_words) in (
        (INTRINSIC[False], hidden_fn, generic, word_sets(generic, MALE_JOBS, FEMALE_JOBS, vocab)),
        (INTRINSIC[True], hidden_fn, test.tokens, word_sets(test.tokens, MALE_DUTY_WORDS, FEMALE_DUTY_WORDS, vocab)),
        (FINETUNED, functools.partial(clf_hidden_jit, cp), test.tokens,
         word_sets(test.tokens, MALE_DUTY_WORDS, FEMALE_DUTY_WORDS, vocab))):
      hidden = _batched(fn, [contexts], bs)
      occ = occurrences(hidden, contexts, x_words + y_words + a_words + b_words, vocab,
                        config.ceat.max_occurrences, rng)
      samples = association.ceat_samples(occ, x_words, y_words, a_words, b_words,
                                         num_samples=config.ceat.num_samples, rng=rng)
      combined = association.random_effects(samples.effect_sizes, samples.variances)
      row[name] = combined.effect_size
      row[name + "_se"] = combined.standard_error
    # Extrinsic, on gender-balanced test data.
    probs = _batched(probs_fn, [test.tokens], bs)
    probs_rev = _batched(probs_fn, [reversed_test], bs)
    pred, pred_rev = probs.argmax(-1), probs_rev.argmax(-1)
    row["accuracy"] = float(np.mean(pred == test.labels))
    row["accuracy_ambiguous"] = float(np.mean(pred[test.ambiguous] == test.labels[test.ambiguous]))
    row["tpr_gap"] = tpr_gap(pred, test.labels, test.gender)
    row["counterfactual_flip_rate"] = float(np.mean(pred != pred_rev))
    row["counterfactual"] = float(np.mean(0.5 * np.abs(probs - probs_rev).sum(-1)))

    aps = _batched(functools.partial(aps_jit, cp), [sens_tokens, weights], bs)
    row["accumulated_prediction_sensitivity"] = float(np.mean(aps[:, 0]))
    row["relative_prediction_sensitivity"] = float(np.mean(aps[:, 1]))
    rows.append(row)
  return rows


# ----------------------------------------------------------------------------- statistics

def spearman_with_ci(x, y, *, resamples: int, confidence: float, rng: np.random.Generator) -> dict:
  """Spearman's rho of paired values with a percentile bootstrap interval over the pairs."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  rho = float(scipy.stats.spearmanr(x, y).statistic)
  idx = rng.integers(x.size, size=(resamples, x.size))
  rx = scipy.stats.rankdata(x[idx], axis=1)
  ry = scipy.stats.rankdata(y[idx], axis=1)
  rx -= rx.mean(1, keepdims=True)
  ry -= ry.mean(1, keepdims=True)
  denom = np.sqrt((rx ** 2).sum(1) * (ry ** 2).sum(1))
  boot = np.where(denom > 0, (rx * ry).sum(1) / np.where(denom > 0, denom, 1.0), np.nan)
  boot = boot[np.isfinite(boot)]  # a resample with a constant side has no rank correlation
  alpha = (1.0 - confidence) / 2.0
  low, high = (np.quantile(boot, [alpha, 1.0 - alpha]) if boot.size else (np.nan, np.nan))
  return {"spearman": rho, "ci": [float(low), float(high)], "p_value": float(scipy.stats.spearmanr(x, y).pvalue)}


def correlations(rows: list[dict], config) -> tuple[list[dict], list[dict]]:
  rng = Streams(config.seed).numpy("bootstrap")
  kw = {"resamples": config.stats.bootstrap_resamples, "confidence": config.stats.confidence, "rng": rng}
  corr = []
  for intrinsic, aligned, model in ((INTRINSIC[False], False, "pretrained"), (INTRINSIC[True], True, "pretrained"),
                                    (FINETUNED, True, "finetuned")):
    for extrinsic in EXTRINSIC:
      c = spearman_with_ci([r[intrinsic] for r in rows], [r[extrinsic] for r in rows], **kw)
      corr.append({"intrinsic": intrinsic, "extrinsic": extrinsic, "aligned_data": aligned, "model": model, **c})
  # Validity checks: does each metric track the bias level of the data its model saw?
  validity = []
  for metric, level in ((INTRINSIC[False], "lm_bias"), (INTRINSIC[True], "lm_bias"), (FINETUNED, "task_bias"),
                        ("tpr_gap", "task_bias"), ("tpr_gap", "lm_bias"), ("counterfactual_flip_rate", "lm_bias")):
    c = spearman_with_ci([r[metric] for r in rows], [r[level] for r in rows], **kw)
    validity.append({"metric": metric, "bias_level": level, **c})
  sens = []
  for metric in ("accumulated_prediction_sensitivity", "relative_prediction_sensitivity", "counterfactual",
                 "counterfactual_flip_rate"):
    c = spearman_with_ci([r[metric] for r in rows], [r["task_bias"] for r in rows], **kw)
    sens.append({"metric": metric, "corr_with_true_bias": c["spearman"], "ci": c["ci"], "p_value": c["p_value"]})
  return corr, sens, validity


# ----------------------------------------------------------------------------- figures

def _figures(rows, workdir):
  task_biases = sorted({r["task_bias"] for r in rows})
  sizes = sorted({r["size"] for r in rows})
  markers = dict(zip(sizes, "os^D"))
  cmap = plt.get_cmap("viridis")
  fig, axes = plt.subplots(2, 3, figsize=(15, 8))
  for col, intrinsic in enumerate((INTRINSIC[False], INTRINSIC[True], FINETUNED)):
    for row_i, extrinsic in enumerate(EXTRINSIC):
      ax = axes[row_i, col]
      for r in rows:
        ax.scatter(r[intrinsic], r[extrinsic], marker=markers[r["size"]],
                   color=cmap(task_biases.index(r["task_bias"]) / max(1, len(task_biases) - 1)),
                   s=20 + 60 * r["lm_bias"], edgecolor="k", linewidth=0.4)
      ax.set_xlabel(f"intrinsic: {intrinsic} (CEAT effect size)")
      ax.set_ylabel(f"extrinsic: {extrinsic}")
      ax.grid(alpha=0.3)
  axes[0, 0].set_title("generic contexts, profession words")
  axes[0, 1].set_title("task sentences, duty words, pretrained LM (aligned)")
  axes[0, 2].set_title("task sentences, duty words, fine-tuned model")
  handles = [plt.Line2D([], [], marker="o", ls="", color=cmap(i / max(1, len(task_biases) - 1)),
                        label=f"task bias {b:g}") for i, b in enumerate(task_biases)]
  handles += [plt.Line2D([], [], marker=markers[s], ls="", color="gray", label=f"size {s}") for s in sizes]
  axes[0, 0].legend(handles=handles, fontsize=7, title="marker area ~ LM bias", title_fontsize=7)
  fig.suptitle("Intrinsic vs extrinsic bias across the population")
  plots.save_figure(fig, os.path.join(workdir, "figures", "intrinsic_vs_extrinsic.png"))

  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  jitter = np.linspace(-0.02, 0.02, max(1, len(rows)))
  for ax, metric in zip(axes, ("accumulated_prediction_sensitivity", "relative_prediction_sensitivity", "counterfactual")):
    for j, r in enumerate(rows):
      ax.scatter(r["task_bias"] + jitter[j], r[metric], marker=markers[r["size"]], color="C0", s=25)
    ax.set_xlabel("controlled bias of the classifier's training data")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
  fig.suptitle("Bias metrics vs the bias the generator controls")
  plots.save_figure(fig, os.path.join(workdir, "figures", "sensitivity_vs_bias.png"))


# ----------------------------------------------------------------------------- run

def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  validate(config)
  t0 = time.time()
  progress = bool(config.progress)
  vocab = gt.vocabulary()
  population = members(config)
  groups = [list(g) for _, g in itertools.groupby(population, key=lambda m: m["size"])]

  protected_dir = os.path.join(workdir, "protected")
  io_lib.run_stage(protected_dir, lambda: {"path": io_lib.save_pytree(
      os.path.join(protected_dir, "params.msgpack"), _protected_stage(config, vocab, progress))})
  protected_params = io_lib.load_pytree(os.path.join(protected_dir, "params.msgpack"))

  test = gt.task_corpus(vocab, config.data.task_test_examples, bias=0.0, seed=config.seed + 777,
                        ambiguity=config.data.ambiguity)
  generic = gt.lm_corpus(vocab, config.data.generic_contexts, bias=0.0, seed=config.seed + 555,
                         neutral_share=0.0, task_share=0.0)

  def metrics_stage(group, stage):
    lm_dir = os.path.join(workdir, f"lm_{stage}")
    io_lib.run_stage(lm_dir, lambda: {"path": io_lib.save_pytree(
        os.path.join(lm_dir, "params.msgpack"), _lm_stage(config, group, vocab, progress))})
    lm_params = io_lib.load_pytree(os.path.join(lm_dir, "params.msgpack"))
    clf_dir = os.path.join(workdir, f"classifier_{stage}")
    io_lib.run_stage(clf_dir, lambda: {"path": io_lib.save_pytree(
        os.path.join(clf_dir, "params.msgpack"), _classifier_stage(config, group, vocab, lm_params, progress))})
    clf_params = io_lib.load_pytree(os.path.join(clf_dir, "params.msgpack"))
    return {"rows": _member_metrics(config, group, vocab, lm_params, clf_params, protected_params, test, generic,
                                    progress)}

  rows = []
  for group in groups:
    stage = group[0]["size"]
    rows += io_lib.run_stage(os.path.join(workdir, f"metrics_{stage}"),
                             functools.partial(metrics_stage, group, stage))["rows"]
  corr, sens, validity = correlations(rows, config)
  _figures(rows, workdir)
  results = {"correlation": corr, "sensitivity": sens, "validity": validity, "models": rows, "wall_seconds": time.time() - t0,
             "config": config.to_dict()}
  io_lib.write_results(workdir, results)
  _print(rows, corr, sens, validity)
  return results


def _print(rows, corr, sens, validity):
  print(f"\n{len(rows)} models; accuracy {min(r['accuracy'] for r in rows):.3f}-"
        f"{max(r['accuracy'] for r in rows):.3f}")
  print(f"{'intrinsic':28s} {'extrinsic':26s} {'aligned':7s} {'model':10s} {'spearman':>8s}  95% CI")
  for c in corr:
    print(f"{c['intrinsic']:28s} {c['extrinsic']:26s} {str(c['aligned_data']):7s} {c['model']:10s} "
          f"{c['spearman']:8.3f}  [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]")
  print(f"\n{'metric':28s} {'vs bias of':12s} {'spearman':>8s}  95% CI")
  for c in validity:
    print(f"{c['metric']:28s} {c['bias_level']:12s} {c['spearman']:8.3f}  [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]")
  print(f"\n{'metric':36s} {'corr with true bias':>20s}  95% CI")
  for s in sens:
    print(f"{s['metric']:36s} {s['corr_with_true_bias']:20.3f}  [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]")
