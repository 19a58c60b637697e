"""Counterfactual role-reversal distillation (Gupta et al., Findings of ACL 2022; issue 17, part 3).

A larger causal Transformer LM (the teacher) is trained on generated text in which professions
co-occur with their stereotypical gender (`libs.data.gender_text.lm_corpus`, bias `data.bias`).
Smaller students are distilled from it (`libs.train.distillation.distillation_loss`) by four
methods, with the same steps, data order and initialization:

  distill   plain distillation on the training text;
  cda       counterfactual data augmentation: half of every batch is role-reversed (every gendered
            word swapped, `Vocabulary.swap_gender`), with the teacher's predictions on that
            reversed text as its targets;
  perturb   teacher prediction perturbation: the teacher's next-token distribution mixed with its
            distribution on the role-reversed context (`counterfactual_teacher_probs`; mapped
            back to the original's words unless `distill.map_reversed` is False);
  both      cda and perturb together.

Each model (teacher; every student over `distill.seeds` seeds) is measured on
* gender polarity of its sampled continuations of profession prompts (`gender_text.prompts`:
  per profession 3 role-neutral and 6 gendered prompts, balanced in gender): per continuation
  (m - f) / (m + f) over the male and female lexicon words it holds (0 without any), averaged per
  profession; `polarity` is the mean over professions of |profession polarity| (the disparity)
  and `stereotype_polarity` the mean of STEREOTYPE * profession polarity (> 0: continuations
  follow the stereotype);
* utility: perplexity (exp of the mean per-token NLL) on held-out text of the training bias
  (`perplexity`) and on gender-balanced held-out text (`perplexity_balanced`).

Stages (each skipped on a rerun once done): `teacher`, `students` (the 4 x seeds students, one
vmapped ensemble); evaluation reruns (it is deterministic). Writes results.json (`distillation`:
one row per method, students as mean and standard deviation over seeds) and
figures/distill_polarity_perplexity.png.

Example:
  >>> results = run(configs.distill.get_config("tiny"), "/tmp/distill")
  >>> [(r["method"], r["polarity"], r["perplexity"]) for r in results["distillation"]]
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from libs.config import checks
from libs.data import gender_text as gt
from libs.models.lm import LMConfig, TransformerLM, next_token_nll
from libs.train import distillation as dl
from libs.train import io as io_lib
from libs.train import optimizers
from libs.train import plots
from libs.train.rng import Streams

METHODS = ("distill", "cda", "perturb", "both")
# method -> (counterfactual data augmentation, teacher prediction perturbation)
FLAGS = {"distill": (False, False), "cda": (True, False), "perturb": (False, True), "both": (True, True)}
ROW_KEYS = ("polarity", "stereotype_polarity", "perplexity", "perplexity_balanced", "gendered_share",
            "stereotype_polarity_neutral", "agreement")
SOURCE = "Gupta et al., Mitigating Gender Bias in Distilled Language Models via Counterfactual Role Reversal, " \
         "Findings of ACL 2022"


# ----------------------------------------------------------------------------- config checks

def _model_section(config, name: str) -> None:
  for field in ("dim", "num_heads", "num_layers", "batch_size", "num_steps", "warmup_steps", "log_every"):
    checks.positive_int(config, f"{name}.{field}")
  checks.require(config[name].dim % config[name].num_heads == 0, f"{name}.dim",
                 f"must be a multiple of {name}.num_heads ({config[name].num_heads})", config[name].dim)
  checks.number(config, f"{name}.learning_rate", 0.0, 1.0, low_open=True)
  checks.number(config, f"{name}.final_lr_fraction", 0.0, 1.0)
  checks.number(config, f"{name}.weight_decay", 0.0, 1.0)
  checks.number(config, f"{name}.grad_clip_norm", 0.0, 1e6, low_open=True)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field."""
  checks.one_of(config, "mode", ("distill",))
  checks.positive_int(config, "seed", 0)
  checks.require(isinstance(config.progress, bool), "progress", "must be True or False", config.progress)
  checks.number(config, "data.bias", 0.0, 1.0)
  checks.positive_int(config, "data.train_examples")
  checks.positive_int(config, "data.heldout_examples")
  _model_section(config, "teacher")
  _model_section(config, "student")
  checks.positive_int(config, "student.batch_size", 2)
  checks.require(config.student.batch_size % 2 == 0, "student.batch_size",
                 "must be even (cda reverses half of every batch)", config.student.batch_size)
  checks.number(config, "distill.alpha", 0.0, 1.0)
  checks.number(config, "distill.temperature", 0.0, 100.0, low_open=True)
  checks.number(config, "distill.mix", 0.0, 1.0)
  checks.require(isinstance(config.distill.map_reversed, bool), "distill.map_reversed", "must be True or False",
                 config.distill.map_reversed)
  checks.positive_int(config, "distill.seeds")
  checks.positive_int(config, "generate.samples_per_prompt")
  checks.positive_int(config, "eval.batch_size")


# ----------------------------------------------------------------------------- metrics

def continuation_counts(tokens: np.ndarray, lengths: np.ndarray, vocab: gt.Vocabulary) -> tuple[np.ndarray, ...]:
  """Male and female lexicon words in each continuation: tokens[i, lengths[i]:] up to its first EOS.

  Args:
    tokens: [N, L] generated sequences, prompt included.
    lengths: [N] prompt lengths (BOS included).
    vocab: the `Vocabulary` (its `gender_counts` is the lexicon).

  Returns:
    (male [N], female [N]) counts.
  """
  tokens = np.asarray(tokens)
  positions = np.arange(tokens.shape[1])[None]
  after = positions >= np.asarray(lengths)[:, None]
  eos = np.cumsum((tokens == gt.EOS) & after, axis=1) > 0
  return vocab.gender_counts(np.where(after & ~eos, tokens, gt.PAD))


def polarity(tokens: np.ndarray, lengths: np.ndarray, professions: np.ndarray, vocab: gt.Vocabulary) -> dict:
  """Gender polarity of generated continuations, per profession and overall.

  Per continuation (prompt excluded, up to EOS): (m - f) / (m + f), 0 when m + f = 0. Per
  profession: the mean over its continuations (the prompts balance the two genders).

  Args:
    tokens: [N, L] generated sequences, prompt included.
    lengths: [N] prompt lengths.
    professions: [N] index into `gender_text.PROFESSIONS` of each sequence's prompt.
    vocab: the `Vocabulary`.

  Returns:
    {"per_profession": [12] floats, "polarity": mean |per profession| (the disparity),
     "stereotype_polarity": mean of STEREOTYPE * per profession (> 0: stereotypical),
     "gendered_share": share of continuations with a gendered word}.

  Example:
    >>> polarity(generated, np.tile(lengths, k), np.tile(profs, k), vocab)["polarity"]
  """
  m, f = continuation_counts(tokens, lengths, vocab)
  total = m + f
  per = np.where(total > 0, (m - f) / np.maximum(total, 1), 0.0)
  professions = np.asarray(professions)
  k = len(gt.PROFESSIONS)
  counts = np.bincount(professions, minlength=k)
  per_profession = np.bincount(professions, per, minlength=k) / np.maximum(counts, 1)
  present = counts > 0
  return {"per_profession": per_profession.tolist(),
          "polarity": float(np.mean(np.abs(per_profession[present]))),
          "stereotype_polarity": float(np.mean((gt.STEREOTYPE * per_profession)[present])),
          "gendered_share": float(np.mean(total > 0))}


def agreement(tokens: np.ndarray, lengths: np.ndarray, vocab: gt.Vocabulary) -> float:
  """Gender agreement of continuations with their prompt (a coherence check, not a bias metric).

  Over the sequences whose prompt names a gender ("my sister works as a nurse and") and whose
  continuation holds a gendered word: the mean of prompt gender (+1 male, -1 female) times the
  continuation's polarity. 1: every continuation keeps the prompt's gender ("she ..."); 0: no
  relation; nan when no sequence qualifies.

  Example:
    >>> agreement(generated, np.tile(lengths, k), vocab)
  """
  tokens, lengths = np.asarray(tokens), np.asarray(lengths)
  in_prompt = np.arange(tokens.shape[1])[None] < lengths[:, None]
  pm, pf = vocab.gender_counts(np.where(in_prompt, tokens, gt.PAD))
  m, f = continuation_counts(tokens, lengths, vocab)
  use = (pm != pf) & (m + f > 0)
  if not use.any():
    return float("nan")
  return float(np.mean(np.sign(pm - pf)[use] * ((m - f) / np.maximum(m + f, 1))[use]))


# ----------------------------------------------------------------------------- models

def lm_config(section: ml_collections.ConfigDict, vocab_size: int) -> LMConfig:
  return LMConfig(vocab_size=vocab_size, max_len=gt.MAX_LEN, dim=section.dim, num_heads=section.num_heads,
                  num_layers=section.num_layers)


def _fingerprint(config, *sections: str) -> dict:
  """What a stage's saved parameters depend on; a rerun on a workdir made with other values fails."""
  out = {"seed": config.seed, "data": {k: v for k, v in config.data.items() if k != "heldout_examples"}}
  for s in sections:
    out[s] = config[s].to_dict()
  return out


def _check_fingerprint(recorded: dict, expected: dict, stage_dir: str) -> None:
  if recorded.get("config") != expected:
    raise ValueError(f"{stage_dir} was trained with another config ({recorded.get('config')}); this run has "
                     f"{expected}: use a fresh --workdir (or delete {stage_dir})")


def _check_finite(losses: np.ndarray, step: int, what: str) -> None:
  bad = ~np.isfinite(np.asarray(losses))
  if bad.any():
    raise FloatingPointError(f"{what}: the training loss is not finite at step {step} "
                             f"(models {np.flatnonzero(bad.ravel()).tolist()} of {bad.size})")


def _batches(rng: np.random.Generator, n: int, shape: tuple[int, ...], steps: int) -> np.ndarray:
  return rng.integers(n, size=(steps,) + shape)


def train_teacher(config, vocab: gt.Vocabulary, train: np.ndarray) -> tuple[dict, dict]:
  """The teacher: next-token cross-entropy on the (biased) training text. Returns (params, summary)."""
  t = config.teacher
  streams = Streams(config.seed)
  lm = TransformerLM(lm_config(t, len(vocab)))
  params = jax.jit(lm.init)(streams.key("teacher/init"), jnp.asarray(train[:2]))["params"]
  opt = optimizers.make_optimizer(t)
  opt_state = opt.init(params)
  data = jnp.asarray(train)

  @jax.jit
  def step(params, opt_state, idx):
    def loss_fn(p):
      x = data[idx]
      return jnp.mean(next_token_nll(lm.apply({"params": p}, x), x, x > 0))
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  order = _batches(streams.numpy("teacher/batches"), len(train), (t.batch_size,), t.num_steps)
  curve = []
  for i in tqdm.trange(t.num_steps, desc="teacher", leave=False, disable=not config.progress):
    params, opt_state, loss = step(params, opt_state, jnp.asarray(order[i]))
    if (i + 1) % t.log_every == 0 or i + 1 == t.num_steps:
      _check_finite(loss, i + 1, "teacher")
      curve.append([i + 1, float(loss)])
  return params, {"loss_curve": curve, "num_params": int(sum(x.size for x in jax.tree.leaves(params)))}


def _student_step(config, teacher: TransformerLM, student: TransformerLM, opt, swap_ids: jnp.ndarray):
  """The jitted step of every student at once: params [M, S, ...] (method, seed), batch x [S, B, T].

  The teacher's distributions on x and on its role reversal are computed once per seed's batch;
  each method picks its inputs (cda: the second half of the batch reversed) and targets from them.
  """
  d = config.distill
  cda = jnp.array([FLAGS[m][0] for m in METHODS])
  perturb = jnp.array([FLAGS[m][1] for m in METHODS])

  def one(params, opt_state, x, x_rev, probs, probs_rev, use_cda, use_perturb):
    b = x.shape[0]
    flip = use_cda & (jnp.arange(b) >= b // 2)[:, None]  # [B, 1]
    inputs = jnp.where(flip, x_rev, x)
    base = jnp.where(flip[..., None], probs_rev, probs)  # The teacher on the student's own input ...
    counter = jnp.where(flip[..., None], probs, probs_rev)  # ... and on that input's role reversal.
    if d.map_reversed:  # Mapped back, the mixture matters on role-neutral contexts too.
      where = jnp.ones(inputs.shape, bool)
      perturbed = dl.counterfactual_teacher_probs(base, counter, where, mix=d.mix, swap_ids=swap_ids)
    else:
      perturbed = dl.counterfactual_teacher_probs(base, counter, dl.gendered_prefix(inputs, swap_ids), mix=d.mix)
    target = jnp.where(use_perturb, perturbed, base)

    def loss_fn(p):
      logits = student.apply({"params": p}, inputs)
      return jnp.mean(dl.distillation_loss(logits[:, :-1], target[:, :-1], inputs[:, 1:], inputs[:, 1:] > 0,
                                           alpha=d.alpha, temperature=d.temperature))
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  over_seeds = jax.vmap(one, in_axes=(0, 0, 0, 0, 0, 0, None, None))
  over_methods = jax.vmap(over_seeds, in_axes=(0, 0, None, None, None, None, 0, 0))

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, teacher_params, x):
    x_rev = swap_ids[x]
    s, b, t = x.shape
    both = jnp.concatenate([x, x_rev], axis=1).reshape(2 * s * b, t)
    probs = jax.nn.softmax(teacher.apply({"params": teacher_params}, both).astype(jnp.float32), axis=-1)
    probs = probs.reshape(s, 2 * b, t, -1)
    return over_methods(params, opt_state, x, x_rev, probs[:, :b], probs[:, b:], cda, perturb)

  return step


def train_students(config, vocab: gt.Vocabulary, train: np.ndarray, teacher_params) -> tuple[dict, dict]:
  """Every method's students over `distill.seeds` seeds, vmapped; returns (params [M, S, ...], summary).

  Seed s gives every method the same initialization and the same batches; seeds differ in both.
  """
  t, num_seeds = config.student, config.distill.seeds
  streams = Streams(config.seed)
  teacher = TransformerLM(lm_config(config.teacher, len(vocab)))
  student = TransformerLM(lm_config(t, len(vocab)))
  init = jax.jit(lambda k: student.init(k, jnp.asarray(train[:2]))["params"])
  per_seed = [init(streams.key(f"student/init/{s}")) for s in range(num_seeds)]
  params = jax.tree.map(lambda *xs: jnp.broadcast_to(jnp.stack(xs), (len(METHODS),) + jnp.stack(xs).shape),
                        *per_seed)
  opt = optimizers.make_optimizer(t)
  opt_state = jax.vmap(jax.vmap(opt.init))(params)
  step = _student_step(config, teacher, student, opt, jnp.asarray(vocab.swap_ids))
  orders = np.stack([_batches(streams.numpy("student/batches", s), len(train), (t.batch_size,), t.num_steps)
                     for s in range(num_seeds)], axis=1)  # [steps, S, B]
  data = jnp.asarray(train)
  teacher_params = jax.tree.map(jnp.asarray, teacher_params)
  curve = []
  for i in tqdm.trange(t.num_steps, desc=f"students ({len(METHODS)} methods x {num_seeds} seeds)", leave=False,
                       disable=not config.progress):
    params, opt_state, loss = step(params, opt_state, teacher_params, data[jnp.asarray(orders[i])])
    if (i + 1) % t.log_every == 0 or i + 1 == t.num_steps:
      losses = np.asarray(loss)
      _check_finite(losses, i + 1, "students")
      curve.append([i + 1, {m: losses[j].tolist() for j, m in enumerate(METHODS)}])
  return params, {"loss_curve": curve, "methods": list(METHODS), "seeds": num_seeds,
                  "num_params": int(sum(x[0, 0].size for x in jax.tree.leaves(params)))}


# ----------------------------------------------------------------------------- evaluation

def perplexity(model: TransformerLM, params, tokens: np.ndarray, batch_size: int, ndim: int = 0) -> np.ndarray:
  """exp(mean next-token NLL per token) over `tokens` [N, L] (PAD excluded), per model: shape = the
  `ndim` leading axes of `params`."""
  def nll_sum(p, x):
    logits = model.apply({"params": p}, x).astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], x[:, 1:])
    return jnp.sum(nll * (x[:, 1:] > 0))

  for _ in range(ndim):
    nll_sum = jax.vmap(nll_sum, in_axes=(0, None))
  sums = jax.jit(nll_sum)
  total = 0.0
  for start in range(0, len(tokens), batch_size):
    total = total + np.asarray(sums(params, jnp.asarray(tokens[start:start + batch_size])), np.float64)
  count = max(int(np.sum(tokens[:, 1:] > 0)), 1)
  return np.exp(total / count)


def generate(model: TransformerLM, params, prompts: np.ndarray, lengths: np.ndarray, key, ndim: int = 0) -> np.ndarray:
  """Samples continuations at temperature 1 until EOS or `gender_text.MAX_LEN`, re-running the causal
  model on the whole sequence each step (sequences are 20 tokens).

  Args:
    model: the LM.
    params: its parameters, with `ndim` leading model axes.
    prompts: [N, L] prompts (BOS + words, PAD after).
    lengths: [N] prompt lengths, >= 1.
    key: the sampling key; every model gets the same one (common random numbers).
    ndim: leading model axes of `params`.

  Returns:
    [*models, N, L] sequences: prompt, continuation, EOS, PAD.
  """
  n, max_len = prompts.shape
  rows = jnp.arange(n)
  banned = jnp.zeros(model.config.vocab_size, bool).at[jnp.array([gt.PAD, gt.UNK, gt.BOS])].set(True)

  def sample_one(p, tokens0):
    def body(i, carry):
      tokens, cur, done = carry
      logits = model.apply({"params": p}, tokens)
      last = jnp.take_along_axis(logits, jnp.maximum(cur - 1, 0)[:, None, None], axis=1)[:, 0]
      last = jnp.where(banned, -jnp.inf, last.astype(jnp.float32))  # Never a target in training.
      nxt = jax.random.categorical(jax.random.fold_in(key, i), last).astype(tokens.dtype)
      active = ~done & (cur < max_len)
      pos = jnp.minimum(cur, max_len - 1)
      tokens = tokens.at[rows, pos].set(jnp.where(active, nxt, tokens[rows, pos]))
      return tokens, jnp.where(active, cur + 1, cur), done | (active & (nxt == gt.EOS))
    steps = max_len - int(np.min(lengths))
    init = (tokens0, jnp.asarray(lengths, jnp.int32), jnp.zeros(n, bool))
    return jax.lax.fori_loop(0, steps, body, init)[0]

  fn = sample_one
  for _ in range(ndim):
    fn = jax.vmap(fn, in_axes=(0, None))
  return np.asarray(jax.jit(fn)(params, jnp.asarray(prompts)))


def evaluate(config, vocab, model: TransformerLM, params, ndim: int, heldout: np.ndarray,
             balanced: np.ndarray) -> list[dict]:
  """Polarity and perplexities of every model in `params` (flattened over its `ndim` leading axes)."""
  prompt_tokens, lengths, profs = gt.prompts(vocab)
  k = config.generate.samples_per_prompt
  tokens, lengths, profs = np.repeat(prompt_tokens, k, 0), np.repeat(lengths, k), np.repeat(profs, k)
  key = Streams(config.seed).key("generate")
  generated = generate(model, params, tokens, lengths, key, ndim).reshape(-1, *tokens.shape)
  ppl = perplexity(model, params, heldout, config.eval.batch_size, ndim).reshape(-1)
  ppl_balanced = perplexity(model, params, balanced, config.eval.batch_size, ndim).reshape(-1)
  out = []
  neutral = ~vocab.is_gendered(tokens)  # The role-neutral prompts ("the nurse said that").
  for g, p, pb in zip(generated, ppl, ppl_balanced):
    pol = polarity(g, lengths, profs, vocab)
    pol_neutral = polarity(g[neutral], lengths[neutral], profs[neutral], vocab)
    out.append({"polarity": pol["polarity"], "stereotype_polarity": pol["stereotype_polarity"],
                "perplexity": float(p), "perplexity_balanced": float(pb), "gendered_share": pol["gendered_share"],
                "stereotype_polarity_neutral": pol_neutral["stereotype_polarity"],
                "agreement": agreement(g, lengths, vocab), "per_profession": pol["per_profession"],
                "example": vocab.decode(g[0])})
  return out


def _row(method: str, models: list[dict]) -> dict:
  """Mean (and, over several models, the standard deviation) of each metric; None where undefined."""
  row = {"method": method}
  stats = {}
  for key in ROW_KEYS:
    values = np.array([m[key] for m in models], np.float64)
    values = values[np.isfinite(values)]
    stats[key] = (float(values.mean()) if values.size else None,
                  float(values.std(ddof=1)) if values.size > 1 else None)
  row.update({key: mean for key, (mean, _) in stats.items()})
  row.update({f"{key}_std": std for key, (_, std) in stats.items()})
  row["per_profession"] = np.mean([m["per_profession"] for m in models], axis=0).tolist()
  row["per_seed"] = [{k: m[k] if np.isfinite(m[k]) else None for k in ROW_KEYS} for m in models]
  return row


def table(rows: list[dict]) -> str:
  """The printed summary: one line per method (students: mean +- std over seeds)."""
  columns = (("polarity", "polarity", "{:.3f}"), ("stereotype_polarity", "stereo.", "{:+.3f}"),
             ("perplexity", "perplexity", "{:.3f}"), ("perplexity_balanced", "ppl_balanced", "{:.3f}"),
             ("stereotype_polarity_neutral", "stereo._neutral", "{:+.3f}"), ("agreement", "agreement", "{:.3f}"))

  def cell(row, key, fmt):
    if row[key] is None:
      return "-".ljust(17)
    std = row.get(f"{key}_std")
    return (fmt.format(row[key]) + ("" if std is None else " +- " + fmt.replace("+", "").format(std))).ljust(17)
  lines = ["method    " + "".join(h.ljust(17) for _, h, _ in columns)]
  for r in rows:
    lines.append(r["method"].ljust(10) + "".join(cell(r, key, fmt) for key, _, fmt in columns))
  lines.append("polarity: mean |profession polarity| of continuations (all 108 prompts); stereo.: signed towards "
               "the stereotype; stereo._neutral: on the 36 role-neutral prompts; agreement: continuation gender = "
               "gendered prompt's (1: always)")
  return "\n".join(lines)


def figure(rows: list[dict], path: str) -> str:
  """Polarity (gender disparity) against held-out perplexity, one labelled point per method."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6, 4.2))
  for i, r in enumerate(rows):
    ax.errorbar(r["polarity"], r["perplexity"], xerr=r["polarity_std"] or 0.0, yerr=r["perplexity_std"] or 0.0,
                fmt="s" if r["method"] == "teacher" else "o", color=f"C{i}", capsize=3, label=r["method"])
    ax.annotate(r["method"], (r["polarity"], r["perplexity"]), textcoords="offset points",
                xytext=(6, 5) if i % 2 == 0 else (6, -13))  # Alternate: teacher and distill nearly coincide.
  ax.set(xlabel="gender polarity: mean |profession polarity| (lower: fairer)",
         ylabel="held-out perplexity (biased text)", title="counterfactual role-reversal distillation")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return plots.save_figure(fig, path)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  validate(config)
  wall_start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  vocab = gt.vocabulary()
  streams = Streams(config.seed)
  train = gt.lm_corpus(vocab, config.data.train_examples, bias=config.data.bias, seed=streams.seed("corpus/train"))
  heldout = gt.lm_corpus(vocab, config.data.heldout_examples, bias=config.data.bias,
                         seed=streams.seed("corpus/heldout"))
  balanced = gt.lm_corpus(vocab, config.data.heldout_examples, bias=0.0, seed=streams.seed("corpus/balanced"))
  teacher = TransformerLM(lm_config(config.teacher, len(vocab)))
  student = TransformerLM(lm_config(config.student, len(vocab)))

  teacher_dir = os.path.join(workdir, "teacher")
  teacher_fp = _fingerprint(config, "teacher")

  def teacher_stage():
    start = time.perf_counter()
    params, summary = train_teacher(config, vocab, train)
    io_lib.save_pytree(os.path.join(teacher_dir, "params.msgpack"), params)
    return {"config": teacher_fp, "wall_s": time.perf_counter() - start, **summary}

  teacher_summary = io_lib.run_stage(teacher_dir, teacher_stage)
  _check_fingerprint(teacher_summary, teacher_fp, teacher_dir)
  teacher_params = io_lib.load_pytree(os.path.join(teacher_dir, "params.msgpack"))

  student_dir = os.path.join(workdir, "students")
  student_fp = _fingerprint(config, "teacher", "student", "distill")

  def student_stage():
    start = time.perf_counter()
    params, summary = train_students(config, vocab, train, teacher_params)
    io_lib.save_pytree(os.path.join(student_dir, "params.msgpack"), params)
    return {"config": student_fp, "wall_s": time.perf_counter() - start, **summary}

  student_summary = io_lib.run_stage(student_dir, student_stage)
  _check_fingerprint(student_summary, student_fp, student_dir)
  student_params = io_lib.load_pytree(os.path.join(student_dir, "params.msgpack"))

  eval_start = time.perf_counter()
  teacher_eval = evaluate(config, vocab, teacher, jax.tree.map(lambda x: x[None], teacher_params), 1, heldout,
                          balanced)
  student_eval = evaluate(config, vocab, student, student_params, 2, heldout, balanced)
  num_seeds = config.distill.seeds
  rows = [_row("teacher", teacher_eval)]
  for j, method in enumerate(METHODS):
    rows.append(_row(method, student_eval[j * num_seeds:(j + 1) * num_seeds]))
  eval_s = time.perf_counter() - eval_start

  figure_path = figure(rows, os.path.join(workdir, "figures", "distill_polarity_perplexity.png"))
  results = {
      "distillation": rows,
      "examples": {"teacher": teacher_eval[0]["example"],
                   **{m: student_eval[j * num_seeds]["example"] for j, m in enumerate(METHODS)}},
      "source": SOURCE,
      "models": {"teacher_params": teacher_summary["num_params"], "student_params": student_summary["num_params"]},
      "stages": {"teacher": {"wall_s": teacher_summary["wall_s"],
                             "final_loss": teacher_summary["loss_curve"][-1][1]},
                 "students": {"wall_s": student_summary["wall_s"],
                              "final_loss": student_summary["loss_curve"][-1][1]},
                 "evaluation": {"wall_s": eval_s}},
      "figures": [os.path.relpath(figure_path, workdir)],
      "wall_s": time.perf_counter() - wall_start,
      "config": config.to_dict(),
  }
  io_lib.write_results(workdir, results)
  print(table(rows))
  print(f"results: {os.path.join(workdir, 'results.json')}")
  return results
