"""Membership inference: attack scores, ROC metrics and the bound a DP guarantee implies.

* `loss_scores`: the loss-threshold attack (Yeom et al. 2018): lower loss, more member-like.
* `lira_scores`: the likelihood-ratio attack (Carlini et al. 2022) from shadow models: per
  example, Gaussians fitted to the logit-scaled confidence of shadow models trained with and
  without it; `online` compares both, `offline` only the without-side.
* `roc_metrics`: AUC and TPR at fixed FPRs (sklearn's ROC, interpolated at the FPR).
* `dp_tpr_bound`: the largest TPR an (epsilon, delta)-DP mechanism allows at a given FPR,
  TPR <= min(e^eps FPR + delta, 1 - e^-eps (1 - delta - FPR)) (Kairouz et al. 2015).
* `profile_tpr_bound`: the same bound minimised over a mechanism's whole privacy profile
  (delta(epsilon) for many epsilons, e.g. from the PLD accountant): a mechanism is
  (epsilon, delta(epsilon))-DP for every epsilon at once, which is much tighter than any one
  pair (for the Gaussian mechanism it is its exact trade-off curve, Dong et al. 2022).

`sequence_logit_confidence` is the logit-scaled confidence of sequence models (from the log-
probability of the whole output); `balanced_membership` draws the protocol's split (every example
in half of the models).

Scores are "higher means member" everywhere.

Example:
  >>> conf = logit_confidence(log_probs, labels)                 # [models, examples]
  >>> scores = lira_scores(conf, membership, target=0)           # the attack on model 0
  >>> roc_metrics(scores[membership[0]], scores[~membership[0]])
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from sklearn import metrics as sk_metrics

from libs import accounting

DEFAULT_FPRS = (0.001, 0.01)


def logit_confidence(log_probs, labels) -> np.ndarray:
  """log(p_y / (1 - p_y)) of the true label, computed stably from log-probabilities [..., classes]."""
  log_probs = np.asarray(log_probs, np.float64)
  labels = np.asarray(labels)
  log_py = np.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
  # log(1 - p_y) = log(sum of the other classes' probabilities): no cancellation near p_y = 1.
  others = np.where(np.arange(log_probs.shape[-1]) == labels[..., None], -np.inf, log_probs)
  return log_py - np.logaddexp.reduce(others, axis=-1)


def sequence_logit_confidence(log_probs) -> np.ndarray:
  """log(p / (1 - p)) from log p of a whole output (e.g. a transcript's log-probability under an
  ASR model, minus its loss), stably: log(1 - p) = log(-expm1(log p)).

  log p = 0 (p = 1, or a loss that rounded to 0 or below) is taken as log p = -tiny, which gives
  the largest finite confidence (about 708) instead of inf.

  Example:
    >>> sequence_logit_confidence(-nll)   # [models, utterances] from the per-utterance NLL
  """
  log_p = np.minimum(np.asarray(log_probs, np.float64), -np.finfo(np.float64).tiny)
  return log_p - np.log(-np.expm1(log_p))


def balanced_membership(num_models: int, num_examples: int, rng: np.random.Generator) -> np.ndarray:
  """bool [models, examples]: every example in exactly half of the models (Carlini et al. 2022).

  With any one model left out as the target, each example still has shadow models trained with
  it and without it; a model holds about half of the examples.
  """
  if num_models < 2 or num_models % 2:
    raise ValueError(f"num_models must be even and >= 2, got {num_models}")
  order = np.argsort(rng.random((num_models, num_examples)), axis=0)  # A random permutation per example.
  return order < num_models // 2


def loss_scores(losses) -> np.ndarray:
  """The loss-threshold attack's scores: minus the per-example loss."""
  return -np.asarray(losses, np.float64)


def lira_scores(confidences, membership, target: int, *, online: bool = True, global_variance: bool = True,
                min_std: float = 1e-3) -> np.ndarray:
  """LiRA scores of model `target`'s examples, using every other model as a shadow model.

  Args:
    confidences: [models, examples] logit-scaled confidences (`logit_confidence`).
    membership: bool [models, examples]: which examples each model was trained on.
    target: the attacked model (excluded from the shadow statistics).
    online: use the shadow models trained WITH each example too (needs some for every example).
    global_variance: one variance per side pooled over examples (Carlini et al.'s choice for few
      shadow models) instead of per-example variances.
    min_std: floor on the fitted standard deviations.

  Returns:
    [examples] scores, higher: more likely a member of `target`'s training set.
  """
  conf = np.asarray(confidences, np.float64)
  member = np.asarray(membership, bool)
  if conf.shape != member.shape or conf.ndim != 2:
    raise ValueError(f"confidences and membership must both be [models, examples], got {conf.shape}, {member.shape}")
  if not 0 <= target < conf.shape[0]:
    raise ValueError(f"target must index a model, got {target} of {conf.shape[0]}")
  shadows = np.arange(conf.shape[0]) != target
  c, m = conf[shadows], member[shadows]
  x = conf[target]

  def fit(mask):
    count = mask.sum(0)
    if (count < 1).any():
      side = "with" if mask is m else "without"
      raise ValueError(f"every example needs at least one shadow model trained {side} it; "
                       f"{int((count < 1).sum())} have none")
    mean = np.where(mask, c, 0).sum(0) / count
    resid = np.where(mask, c - mean, 0) ** 2
    if global_variance:
      std = np.full_like(mean, math.sqrt(resid.sum() / max(mask.sum() - 1, 1)))
    else:
      std = np.sqrt(resid.sum(0) / np.maximum(count - 1, 1))
    return mean, np.maximum(std, min_std)

  mean_out, std_out = fit(~m)
  if not online:
    return stats.norm.logcdf(x, mean_out, std_out)
  mean_in, std_in = fit(m)
  return stats.norm.logpdf(x, mean_in, std_in) - stats.norm.logpdf(x, mean_out, std_out)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, at: float) -> float:
  """The best TPR among ROC points with FPR <= `at` (no interpolation above the budget)."""
  ok = fpr <= at
  return float(tpr[ok].max()) if ok.any() else 0.0


def roc_metrics(member_scores, non_member_scores, fprs=DEFAULT_FPRS) -> dict:
  """{"auc", "tpr_at_fpr_<f>" for f in fprs, "roc": (fpr, tpr)} of a membership attack."""
  member = np.asarray(member_scores, np.float64).ravel()
  non_member = np.asarray(non_member_scores, np.float64).ravel()
  if member.size == 0 or non_member.size == 0:
    raise ValueError("need at least one member and one non-member score")
  if not (np.isfinite(member).all() and np.isfinite(non_member).all()):
    raise ValueError("scores must be finite")
  y = np.concatenate([np.ones(member.size), np.zeros(non_member.size)])
  s = np.concatenate([member, non_member])
  fpr, tpr, _ = sk_metrics.roc_curve(y, s)
  out = {"auc": float(sk_metrics.roc_auc_score(y, s)), "roc": (fpr, tpr)}
  for f in fprs:
    out[f"tpr_at_fpr_{f:g}"] = tpr_at_fpr(fpr, tpr, f)
  return out


def dp_tpr_bound(fpr, epsilon: float, delta: float) -> np.ndarray:
  """The largest TPR at `fpr` that any test can reach against an (epsilon, delta)-DP mechanism."""
  fpr = np.asarray(fpr, np.float64)
  if not epsilon >= 0 or not 0 <= delta < 1:
    raise ValueError(f"need epsilon >= 0 and 0 <= delta < 1, got {epsilon}, {delta}")
  if math.isinf(epsilon):
    return np.ones_like(fpr)
  bound = np.minimum(math.exp(epsilon) * fpr + delta, 1 - math.exp(-epsilon) * (1 - delta - fpr))
  return np.clip(bound, 0.0, 1.0)


def profile_tpr_bound(fpr, epsilons, deltas) -> np.ndarray:
  """min over the profile's (epsilon, delta) pairs of `dp_tpr_bound`: [len(fpr)] or scalar."""
  fpr = np.asarray(fpr, np.float64)
  eps = np.asarray(epsilons, np.float64).ravel()
  dels = np.asarray(deltas, np.float64).ravel()
  if eps.shape != dels.shape or eps.size == 0:
    raise ValueError(f"need as many deltas as epsilons (at least one), got {eps.size} and {dels.size}")
  bounds = [dp_tpr_bound(fpr, e, min(max(d, 0.0), 1 - 1e-16)) for e, d in zip(eps, dels)]
  return np.min(np.stack(bounds), axis=0)


def pooled_attack_scores(losses, confidences, membership, targets: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """(member scores, non-member scores) of `loss` and `lira`, pooled over models 0..targets-1,
  each attacked with all the others as shadow models.

  Args:
    losses: [models, examples] per-example losses (for the loss-threshold attack).
    confidences: [models, examples] logit-scaled confidences (for LiRA).
    membership: bool [models, examples].
    targets: how many models to attack.
  """
  losses, membership = np.asarray(losses), np.asarray(membership, bool)
  out = {}
  for name in ("loss", "lira"):
    ins, outs = [], []
    for t in range(targets):
      s = loss_scores(losses[t]) if name == "loss" else lira_scores(confidences, membership, t)
      ins.append(s[membership[t]])
      outs.append(s[~membership[t]])
    out[name] = (np.concatenate(ins), np.concatenate(outs))
  return out


def dpsgd_privacy_profile(noise_multiplier: float, sampling_probability: float, steps: int, max_epsilon: float,
                          points: int = 120) -> tuple[np.ndarray, np.ndarray]:
  """(epsilons, deltas) of a DP-SGD run's privacy profile (PLD accountant) on [0, max_epsilon],
  for `profile_tpr_bound`."""
  acct = accounting.make_accountant("pld").compose(
      accounting.poisson_gaussian_event(noise_multiplier, sampling_probability, steps))
  grid = np.linspace(0.0, max_epsilon, points)
  return grid, np.array([acct.get_delta(e) for e in grid])
