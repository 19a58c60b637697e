"""Privacy accounting of the PATE-ASR labels: what may be published, and what stays private.

One call of `account_labels` turns the answers of one aggregator on a FIXED set of public
utterances into a public record and a private dict. The rules (Papernot et al. 2018, done so
that every published epsilon is either a formal guarantee or a smooth-sensitivity release):

  * The queried utterances are fixed before any teacher votes (a configured number per
    target, in a data-independent order); the caller passes exactly their `Labels`.
  * Every query made is charged: each output label, the final "end" query, and for
    Confident-GNMax every threshold check, answered or not.
  * Data-independent (formal) epsilon. How many queries an utterance makes depends on the
    answers, so the formal analysis charges every utterance its worst case,
    `max_queries_per_utterance` (a data-independent cap, e.g. max labels + 1), each query
    answered: `num_utterances * max_queries_per_utterance` compositions, a number fixed
    before any vote, so plain RDP composition applies (no adaptive stopping rule, no privacy
    filter). An utterance that made more queries than the cap is an error: the labeler must
    stop at the cap. Where a data-dependent figure is released (GNMax, Confident-GNMax), its
    release is composed in too: `epsilon_data_independent` is the (epsilon, delta)-DP
    guarantee, for one speaker, of EVERYTHING the record depends on (labels + release).
  * Data-dependent epsilon (GNMax, Confident-GNMax only). The data-dependent RDP of the
    REALIZED queries at order `ss_order` (the per-query bounds of Papernot et al. 2018 at the
    actual votes; as in that paper the realized transcript of queries is taken as given,
    i.e. the analysis conditions on which queries were asked), with a beta-smooth bound on
    its local sensitivity, is released ONCE with Gaussian noise (GNSS,
    `libs.accounting.release_data_dependent_epsilon`) drawn from the caller's secret `rng`.
    The published figure is
        epsilon_released = eps_delta(lambda_ss, max(eps_dd + SS * N(0, sigma_ss^2), 0) + rdp_release)
    (one order lambda_ss, dp_accounting's conversion at `delta`): a NOISY ESTIMATE (not an
    upper bound, not a worst-case guarantee) of the data-dependent epsilon of the labels,
    composed with the formal RDP cost of its own release. It is published as `epsilon`
    (`epsilon_kind` "data_dependent_released") only when it is below the formal figure;
    otherwise `epsilon` is the formal one (`epsilon_kind` "formal"). Either way
    `epsilon_data_independent` stands next to it.
  * LNMax (no smooth-sensitivity analysis here) and noisy averaging (no data-dependent
    analysis): the formal epsilon only.
  * Noiseless plurality: epsilon inf, no accountant (`epsilon_kind` "none").
  * Raw data-dependent costs, local and smooth sensitivities and the unpublished release go
    to the PRIVATE dict only. The caller writes it under `WORKDIR/private/` (`private_path`),
    a directory that is never published, logged, plotted or copied into results.json. Vote
    histograms stay in the labels' own files. Every public field is a function of public
    config and of the mechanism's outputs (answers, answered flags, the release).

One call is one release: rerunning it on the same labels with fresh noise and publishing
both is a second release that this record does not charge (averaging them would shrink the
noise). Persist the record and reuse it. Records on nested sets of the same labels (one per
target) each pay for their own release; whoever publishes several composes them.

Example:
  >>> analysis = AnalysisConfig(delta=1e-5, num_teachers=16, max_queries_per_utterance=40)
  >>> n = max_utterances(agg_cfg, analysis, target_epsilon=10.0)   # size the run first
  >>> public, private = account_labels(labels, agg_cfg, analysis, target_epsilon=10.0,
  ...                                  rng=rand.seed("smooth_sensitivity/matched/gnmax/10"))
  >>> check_public(public)
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

from dp_accounting.rdp import rdp_privacy_accountant
import numpy as np

from libs import accounting
from libs.accounting import _checks
from projects.pate_asr import aggregation

PUBLIC_RECORD_KEYS: tuple[str, ...] = (
    "method", "target_epsilon", "epsilon", "epsilon_kind", "epsilon_data_independent", "delta",
    "accountant", "unit", "num_queries_charged", "num_queries_made", "num_queries_answered",
    "num_labeled", "within_target")

EPSILON_KINDS = ("formal", "data_dependent_released", "none")
RELEASED_METHODS = ("gnmax", "confident_gnmax")  # The only ones with a smooth-sensitivity analysis.
PRIVATE_SUBDIR = "private"  # WORKDIR/private/: never published.
UNIT = "speaker"

_PRIVATE_NOTE = ("PRIVATE: functions of the teachers' votes (the sensitive data). Keep under "
                 "WORKDIR/private/; never publish, log, plot or copy into results.json.")


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
  """The public parameters of the analysis (fix them before any teacher votes).

  Attributes:
    delta: delta of every (epsilon, delta) statement, in (0, 1).
    num_teachers: K (vote histograms sum to at most K).
    max_queries_per_utterance: the data-independent cap on the queries of one utterance,
      charged to every utterance by the formal analysis (label_sync: max labels + 1).
    orders: Renyi orders of the formal analysis (default: `accounting.DEFAULT_PATE_ORDERS`).
    ss_order: the Renyi order of the data-dependent analysis and its GNSS release.
    ss_beta: smoothness beta of the smooth sensitivity; ss_order < 1 / (2 ss_beta).
    ss_sigma: noise multiplier of the GNSS release.
    release: whether GNMax and Confident-GNMax release a data-dependent figure (GNSS). False:
      they publish the formal epsilon only, and pay nothing for a release (the only way to
      meet a target below the release's own cost).

  Example:
    >>> AnalysisConfig(delta=1e-5, num_teachers=16, max_queries_per_utterance=40)
  """
  delta: float
  num_teachers: int
  max_queries_per_utterance: int
  orders: tuple[float, ...] = accounting.DEFAULT_PATE_ORDERS
  ss_order: float = 4.0
  ss_beta: float = 0.05
  ss_sigma: float = 10.0
  release: bool = True

  def __post_init__(self):
    set_ = lambda name, value: object.__setattr__(self, name, value)
    set_("delta", _checks.check_delta(self.delta))
    set_("num_teachers", _checks.check_positive_int("num_teachers", self.num_teachers))
    set_("max_queries_per_utterance",
         _checks.check_positive_int("max_queries_per_utterance", self.max_queries_per_utterance))
    set_("orders", _checks.check_rdp_orders(self.orders))
    set_("ss_beta", _checks.check_positive("ss_beta", self.ss_beta))
    set_("ss_sigma", _checks.check_positive("ss_sigma", self.ss_sigma))
    ss_order = _checks.check_finite("ss_order", self.ss_order)
    if not 1.0 < ss_order < 1.0 / (2.0 * self.ss_beta):
      raise ValueError(f"ss_order must lie in (1, 1 / (2 ss_beta)) = (1, {1 / (2 * self.ss_beta):g}), "
                       f"got {self.ss_order!r}")
    set_("ss_order", ss_order)

  @classmethod
  def from_pate_config(cls, pcfg, *, max_queries_per_utterance: int | None = None) -> "AnalysisConfig":
    """From the sweep's `config.pate` (delta, num_teachers, orders, max_queries_per_utterance,
    ss_order, ss_beta, ss_sigma); `max_queries_per_utterance` overrides the config's.

    Example:
      >>> AnalysisConfig.from_pate_config(config.pate)
    """
    orders = tuple(pcfg.orders) if pcfg.orders else accounting.DEFAULT_PATE_ORDERS
    if max_queries_per_utterance is None:
      max_queries_per_utterance = pcfg.max_queries_per_utterance
    return cls(delta=pcfg.delta, num_teachers=pcfg.num_teachers,
               max_queries_per_utterance=max_queries_per_utterance, orders=orders,
               ss_order=pcfg.ss_order, ss_beta=pcfg.ss_beta, ss_sigma=pcfg.ss_sigma)


def private_path(workdir: str, filename: str) -> str:
  """WORKDIR/private/<filename>: where the private dict goes (never published).

  Example:
    >>> private_path("runs/quick/matched", "gnmax_eps10.json")
    'runs/quick/matched/private/gnmax_eps10.json'
  """
  return os.path.join(workdir, PRIVATE_SUBDIR, filename)


# -- data-independent (formal) analysis ----------------------------------------------------


def per_query_rdp(aggregator_cfg: aggregation.AggregatorConfig, orders: Sequence[float]) -> np.ndarray:
  """Worst-case RDP of ONE query (answered), at each order: the formal per-query charge.

  gnmax: lambda / sigma^2; confident_gnmax: lambda / (2 sigma_t^2) + lambda / sigma^2 (the
  threshold check, and GNMax as if it answered); lnmax: min(eps, lambda eps^2 / 2) with
  eps = 2 / scale; noisy_average: lambda / sigma^2; plurality: inf.

  Example:
    >>> per_query_rdp(aggregation.AggregatorConfig("gnmax", sigma=2.0), [2.0, 4.0])
    array([0.5, 1. ])
  """
  orders = np.asarray(_checks.check_rdp_orders(orders))
  name = aggregator_cfg.name
  if name == "plurality":
    return np.full_like(orders, np.inf)
  if name == "gnmax":
    return orders / aggregator_cfg.sigma**2
  if name == "confident_gnmax":
    return orders / (2.0 * aggregator_cfg.sigma_threshold**2) + orders / aggregator_cfg.sigma**2
  if name == "lnmax":
    eps = accounting.lnmax_pure_epsilon(aggregator_cfg.scale)
    return np.minimum(eps, orders * eps * eps / 2.0)
  if name == "noisy_average":
    return accounting.noisy_average_rdp(aggregator_cfg.sigma, orders)
  raise ValueError(f"unknown aggregator {name!r}")


def data_independent_rdp(aggregator_cfg: aggregation.AggregatorConfig, num_queries: int,
                         orders: Sequence[float]) -> np.ndarray:
  """RDP of `num_queries` queries composed (a count fixed in advance): num_queries * per query.

  Example:
    >>> data_independent_rdp(aggregation.AggregatorConfig("gnmax", sigma=2.0), 10, [2.0])
    array([5.])
  """
  num_queries = _checks.check_count(num_queries, "num_queries")
  per_query = per_query_rdp(aggregator_cfg, orders)
  return np.zeros_like(per_query) if num_queries == 0 else num_queries * per_query


def _epsilon(orders: np.ndarray, rdp: np.ndarray, delta: float) -> float:
  if not np.any(np.isfinite(rdp)):
    return math.inf
  finite = np.isfinite(rdp)
  return float(rdp_privacy_accountant.compute_epsilon(orders[finite], rdp[finite], delta)[0])


def _release_orders(analysis_cfg: AnalysisConfig) -> np.ndarray:
  """The orders at which the GNSS release has an RDP bound: (1, 1/(2 beta)), plus ss_order."""
  limit = 1.0 / (2.0 * analysis_cfg.ss_beta)
  return np.array(sorted({o for o in analysis_cfg.orders if o < limit} | {analysis_cfg.ss_order}))


def formal_rdp(aggregator_cfg: aggregation.AggregatorConfig, analysis_cfg: AnalysisConfig,
               num_utterances: int) -> tuple[np.ndarray, np.ndarray]:
  """(orders, RDP) of the formal guarantee of a record on `num_utterances` utterances.

  num_utterances * max_queries_per_utterance worst-case queries, plus (GNMax,
  Confident-GNMax) the GNSS release, composed at the orders where both are bounded.

  Example:
    >>> orders, rdp = formal_rdp(agg_cfg, analysis, 100)
  """
  num_utterances = _checks.check_count(num_utterances, "num_utterances")
  num_queries = num_utterances * analysis_cfg.max_queries_per_utterance
  if aggregator_cfg.name in RELEASED_METHODS and analysis_cfg.release:
    orders = _release_orders(analysis_cfg)
    rdp = (data_independent_rdp(aggregator_cfg, num_queries, orders)
           + accounting.gnss_rdp(analysis_cfg.ss_beta, analysis_cfg.ss_sigma, orders))
    return orders, rdp
  orders = np.asarray(analysis_cfg.orders)
  return orders, data_independent_rdp(aggregator_cfg, num_queries, orders)


def formal_epsilon(aggregator_cfg: aggregation.AggregatorConfig, analysis_cfg: AnalysisConfig,
                   num_utterances: int) -> float:
  """The formal (epsilon, delta) of a record on `num_utterances` utterances, before any vote.

  This is what `account_labels` reports as `epsilon_data_independent` (inf for plurality).
  Use it, or `max_utterances`, to size a run: it depends on public config only.

  Example:
    >>> formal_epsilon(aggregation.AggregatorConfig("gnmax", sigma=40.0), analysis, 200)
  """
  if aggregator_cfg.name == "plurality":
    return math.inf
  orders, rdp = formal_rdp(aggregator_cfg, analysis_cfg, num_utterances)
  return _epsilon(orders, rdp, analysis_cfg.delta)


def max_utterances(aggregator_cfg: aggregation.AggregatorConfig, analysis_cfg: AnalysisConfig,
                   target_epsilon: float, *, limit: int = 10**7) -> int:
  """The most utterances whose formal epsilon is <= target_epsilon (0 if none; at most `limit`).

  The formal epsilon grows with the number of utterances, so this is a bisection over public
  quantities only: how many public utterances to query at a given noise level and target.

  Example:
    >>> max_utterances(aggregation.AggregatorConfig("gnmax", sigma=40.0), analysis, 8.0)
  """
  target_epsilon = _checks.check_epsilon(target_epsilon)
  limit = _checks.check_count(limit, "limit")
  fits = lambda n: formal_epsilon(aggregator_cfg, analysis_cfg, n) <= target_epsilon
  if not fits(0):
    return 0
  lo, hi = 0, 1  # fits(lo) holds; grow hi until it does not.
  while hi <= limit and fits(hi):
    lo, hi = hi, 2 * hi
  hi = min(hi, limit + 1)
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return lo


def calibrate(aggregator_cfg: aggregation.AggregatorConfig, analysis_cfg: AnalysisConfig,
              num_utterances: int, target_epsilon: float, *, rel_tol: float = 1e-3
              ) -> aggregation.AggregatorConfig:
  """`aggregator_cfg` with its noise scaled so that the formal epsilon of `num_utterances`
  utterances is at most `target_epsilon`, with as little noise as that allows.

  Every noise parameter (sigma, Laplace scale, sigma_threshold) is multiplied by one factor c
  (the threshold is kept), found by bisection on log c over `formal_epsilon`: public config
  only, so the result can be fixed before any teacher votes. The GNSS release of GNMax and
  Confident-GNMax is part of the formal figure; a target below what the release alone costs
  cannot be met (ValueError).

  Example:
    >>> cfg = calibrate(aggregation.AggregatorConfig("gnmax", sigma=1.0), analysis, 50, 10.0)
  """
  target_epsilon = _checks.check_epsilon(target_epsilon)
  num_utterances = _checks.check_count(num_utterances, "num_utterances")
  if aggregator_cfg.name == "plurality":
    raise ValueError("the noiseless plurality has no noise to calibrate")

  def scaled(c: float) -> aggregation.AggregatorConfig:
    return dataclasses.replace(aggregator_cfg, sigma=aggregator_cfg.sigma * c, scale=aggregator_cfg.scale * c,
                               sigma_threshold=aggregator_cfg.sigma_threshold * c)

  fits = lambda c: formal_epsilon(scaled(c), analysis_cfg, num_utterances) <= target_epsilon
  lo, hi = 1.0, 1.0
  for _ in range(80):
    if fits(hi):
      break
    lo, hi = hi, hi * 2.0
  else:
    raise ValueError(f"no noise level meets target epsilon {target_epsilon:g} for {num_utterances} utterances "
                     f"({aggregator_cfg.name}): the smooth-sensitivity release alone costs more")
  while fits(lo) and lo > 1e-6:
    lo, hi = lo / 2.0, lo
  while hi / lo > 1.0 + rel_tol:
    mid = math.sqrt(lo * hi)
    lo, hi = (lo, mid) if fits(mid) else (mid, hi)
  return scaled(hi)


# -- the record ----------------------------------------------------------------------------


def _method_name(name: str) -> str:
  return "pate_noiseless" if name == "plurality" else "pate_" + name


def _check_labels(labels: aggregation.Labels, aggregator_cfg: aggregation.AggregatorConfig,
                  analysis_cfg: AnalysisConfig) -> None:
  n = len(labels.votes)
  if len(labels.answered) != n or np.shape(labels.labeled) != (n,):
    raise ValueError(f"labels: votes ({n} utterances), answered ({len(labels.answered)}) and labeled "
                     f"(shape {np.shape(labels.labeled)}) must describe the same utterances")
  cap = analysis_cfg.max_queries_per_utterance
  for i, (votes, answered) in enumerate(zip(labels.votes, labels.answered)):
    votes, answered = np.asarray(votes), np.asarray(answered)
    if votes.ndim != 2 or answered.shape != (votes.shape[0],):
      raise ValueError(f"labels utterance {i}: votes must be [queries, classes] and answered [queries], got "
                       f"{votes.shape} and {answered.shape}")
    if votes.shape[0] > cap:
      raise ValueError(f"labels utterance {i} made {votes.shape[0]} queries, more than "
                       f"max_queries_per_utterance = {cap}: the formal epsilon charges only the cap, so the "
                       f"labeler must stop every utterance at the cap")
    if aggregator_cfg.name != "confident_gnmax" and not answered.all():
      raise ValueError(f"labels utterance {i}: {aggregator_cfg.name} answers every query, but answered has "
                       f"False entries")


def _accountant(aggregator_cfg: aggregation.AggregatorConfig, analysis_cfg: AnalysisConfig,
                kind: str) -> str:
  if kind == "none":
    return "none (noiseless plurality: not private, epsilon inf)"
  cap = analysis_cfg.max_queries_per_utterance
  formal = (f"RDP, data-independent PATE analysis ({aggregator_cfg.name}): every utterance charged "
            f"{cap} queries, each answered, composed over a count fixed in advance")
  if aggregator_cfg.name in RELEASED_METHODS and analysis_cfg.release:
    formal += ", plus the GNSS release of the data-dependent figure"
  if kind == "formal":
    return formal + "; dp_accounting conversion at delta; a formal guarantee"
  return (f"RDP at order {analysis_cfg.ss_order:g}, data-dependent PATE analysis (Papernot et al. 2018) of "
          f"the realized queries, released with smooth-sensitivity Gaussian noise (GNSS, beta "
          f"{analysis_cfg.ss_beta:g}, sigma {analysis_cfg.ss_sigma:g}) and composed with the release's own "
          f"RDP cost; dp_accounting conversion at delta; a noisy estimate, not a worst-case guarantee "
          f"(that is epsilon_data_independent)")


def _data_dependent_release(labels: aggregation.Labels, aggregator_cfg: aggregation.AggregatorConfig,
                            analysis_cfg: AnalysisConfig, rng) -> dict[str, Any]:
  """The GNSS release of the data-dependent RDP of the realized queries; all of it private."""
  order = analysis_cfg.ss_order
  num_teachers = analysis_cfg.num_teachers
  confident = aggregator_cfg.name == "confident_gnmax"
  ledger = accounting.PateLedger(analysis_cfg.orders, num_teachers=num_teachers)
  ledger_ss = accounting.PateLedger([order], num_teachers=num_teachers)
  local = np.zeros(num_teachers)
  made = [i for i, v in enumerate(labels.votes) if len(v)]
  if made:
    votes = np.concatenate([np.asarray(labels.votes[i]) for i in made])
    answered = np.concatenate([np.asarray(labels.answered[i], bool) for i in made])
    for led in (ledger, ledger_ss):
      if confident:
        led.record_confident_gnmax(votes, aggregator_cfg.threshold, aggregator_cfg.sigma_threshold,
                                   aggregator_cfg.sigma, answered)
      else:
        led.record_gnmax(votes, aggregator_cfg.sigma)
    kwargs = dict(sigma=aggregator_cfg.sigma)
    if confident:
      kwargs.update(answered_mask=answered, threshold=aggregator_cfg.threshold,
                    sigma_threshold=aggregator_cfg.sigma_threshold)
    local = accounting.total_local_sensitivity(votes, num_teachers, order, **kwargs)
  smooth = accounting.smooth_sensitivity(local, analysis_cfg.ss_beta)
  dd_rdp = float(ledger_ss.rdp_data_dependent[0])
  released = accounting.release_data_dependent_epsilon(
      dd_rdp, smooth, analysis_cfg.ss_beta, analysis_cfg.ss_sigma, order, analysis_cfg.delta, rng=rng)
  # The true data-dependent RDP is >= 0: clipping the noisy value there is post-processing,
  # and keeps the published figure at least the release's own cost.
  noisy_dd = max(released.noisy_data_dependent_rdp, 0.0)
  total = noisy_dd + released.release_rdp
  return {
      "data_dependent_rdp_at_ss_order": dd_rdp,
      "data_dependent_epsilon_raw": ledger.epsilon(analysis_cfg.delta, data_dependent=True),
      "local_sensitivity": local.tolist(),
      "smooth_sensitivity": smooth,
      "ss_order": order, "ss_beta": analysis_cfg.ss_beta, "ss_sigma": analysis_cfg.ss_sigma,
      "noisy_data_dependent_rdp": released.noisy_data_dependent_rdp,
      "release_rdp": released.release_rdp,
      "release_epsilon": released.release_epsilon,
      "released_total_rdp": total,
      "released_epsilon": _epsilon(np.array([order]), np.array([total]), analysis_cfg.delta),
  }


def account_labels(labels: aggregation.Labels, aggregator_cfg: aggregation.AggregatorConfig,
                   analysis_cfg: AnalysisConfig, *, target_epsilon: float,
                   rng: np.random.Generator | int | None) -> tuple[dict[str, Any], dict[str, Any]]:
  """The public record and the private analysis of one aggregator's labels (see the module doc).

  Args:
    labels: the answers for EXACTLY the utterances queried, a set fixed before any vote.
    aggregator_cfg: the aggregator that answered them.
    analysis_cfg: delta, teachers, the per-utterance query cap, orders, GNSS parameters.
    target_epsilon: the budget the record is compared with (> 0; inf for plurality).
    rng: fresh SECRET randomness for the GNSS release (GNMax, Confident-GNMax): a numpy
      Generator or an int seed from `libs.dp.randomness.DpRandomness.seed(purpose)`, one
      purpose per published figure, never the config seed. Ignored by the other aggregators.

  Returns:
    (public, private): `public` has exactly PUBLIC_RECORD_KEYS, safe for results.json;
    `private` (JSON-ready) holds the raw data-dependent costs, the sensitivities and the
    release, for WORKDIR/private/ only.

  Raises:
    ValueError: inconsistent labels, an utterance over the query cap, a bad target, or no rng
      where a release is made.

  Example:
    >>> public, private = account_labels(labels, aggregation.AggregatorConfig("gnmax", sigma=40.0),
    ...                                  analysis, target_epsilon=8.0, rng=rand.seed("ss/gnmax/8"))
  """
  if not isinstance(analysis_cfg, AnalysisConfig):
    raise ValueError(f"analysis_cfg must be a AnalysisConfig, got {type(analysis_cfg).__name__}")
  if not (_checks.is_real(target_epsilon) and target_epsilon > 0):
    raise ValueError(f"target_epsilon must be > 0 (inf allowed), got {target_epsilon!r}")
  target_epsilon = float(target_epsilon)
  name = aggregator_cfg.name
  if name in RELEASED_METHODS and analysis_cfg.release and rng is None:
    raise ValueError(f"{name}: rng is required (secret randomness for the smooth-sensitivity release)")
  _check_labels(labels, aggregator_cfg, analysis_cfg)
  num_utterances = len(labels.votes)
  private: dict[str, Any] = {"note": _PRIVATE_NOTE, "method": _method_name(name)}
  eps_formal = formal_epsilon(aggregator_cfg, analysis_cfg, num_utterances)
  if name == "plurality":
    epsilon, kind = math.inf, "none"
  elif name in RELEASED_METHODS and analysis_cfg.release:
    private.update(_data_dependent_release(labels, aggregator_cfg, analysis_cfg, rng))
    if private["released_epsilon"] < eps_formal:
      epsilon, kind = private["released_epsilon"], "data_dependent_released"
    else:
      epsilon, kind = eps_formal, "formal"
  else:
    epsilon, kind = eps_formal, "formal"
  public = {
      "method": _method_name(name),
      "target_epsilon": target_epsilon,
      "epsilon": float(epsilon),
      "epsilon_kind": kind,
      "epsilon_data_independent": float(eps_formal),
      "delta": analysis_cfg.delta,
      "accountant": _accountant(aggregator_cfg, analysis_cfg, kind),
      "unit": UNIT,
      "num_queries_charged": num_utterances * analysis_cfg.max_queries_per_utterance,
      "num_queries_made": int(sum(len(v) for v in labels.votes)),
      "num_queries_answered": int(sum(int(np.sum(a)) for a in labels.answered)),
      "num_labeled": int(np.sum(labels.labeled)),
      "within_target": bool(epsilon <= target_epsilon),
  }
  check_public(public)
  return public, private


def check_public(record: dict[str, Any]) -> dict[str, Any]:
  """Returns `record` if its keys are exactly PUBLIC_RECORD_KEYS (and its kind is known); raises otherwise.

  Call it on every PATE record before it reaches results.json, logs or metrics.

  Example:
    >>> check_public({**record, "smooth_sensitivity": 0.3})   # ValueError: not public
  """
  keys = set(record)
  extra, missing = keys - set(PUBLIC_RECORD_KEYS), set(PUBLIC_RECORD_KEYS) - keys
  if extra or missing:
    raise ValueError(f"not a public PATE record: unexpected keys {sorted(extra)}, missing keys {sorted(missing)} "
                     f"(raw data-dependent quantities belong in the private dict)")
  if record["epsilon_kind"] not in EPSILON_KINDS:
    raise ValueError(f"epsilon_kind must be one of {EPSILON_KINDS}, got {record['epsilon_kind']!r}")
  return record
