"""Embedding association tests: WEAT effect sizes, CEAT sampling and random-effects combination.

Intrinsic bias metrics of language representations (Caliskan et al. 2017; for contextualized
embeddings, CEAT: Guo & Caliskan 2021). For target word sets X, Y (male / female terms) and
attribute sets A, B (male- / female-stereotyped professions), a word's association is

  s(w, A, B) = mean_{a in A} cos(w, a) - mean_{b in B} cos(w, b),

and the WEAT effect size is

  ES = (mean_{x in X} s(x, A, B) - mean_{y in Y} s(y, A, B)) / std_{w in X u Y} s(w, A, B)

(sample standard deviation, ddof = 1). A contextualized model gives each occurrence of a word its
own embedding, so CEAT draws, N times, one random occurrence (context) of every word, computes
ES_i and its in-sample variance v_i = var_{w in X u Y} s(w, A, B) (ddof = 1), and combines them
with a random-effects meta-analysis: the DerSimonian-Laird between-sample variance

  Q = sum_i u_i (ES_i - ES_fixed)^2,  u_i = 1 / v_i,  ES_fixed = sum u_i ES_i / sum u_i,
  tau^2 = max(0, (Q - (N - 1)) / (sum u_i - sum u_i^2 / sum u_i)),

weights w_i = 1 / (v_i + tau^2), the combined effect size CES = sum w_i ES_i / sum w_i, its
standard error sqrt(1 / sum w_i) and a two-sided z-test p-value.

Everything runs in NumPy float64 on the host (STYLE.md: host-side statistics).

Example:
  >>> es, v = weat_effect_size(x, y, a, b)             # rows are embeddings
  >>> samples = ceat_samples(occurrences, X, Y, A, B, num_samples=1000, rng=np.random.default_rng(0))
  >>> combined = random_effects(samples.effect_sizes, samples.variances)
  >>> combined.effect_size, combined.ci, combined.p_value
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import scipy.stats

_EPS = 1e-12


def _unit(rows: np.ndarray) -> np.ndarray:
  rows = np.asarray(rows, np.float64)
  return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), _EPS)


def associations(w: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """s(w, A, B) for every row of `w` ([..., n, d] -> [..., n]); `a` [..., na, d], `b` [..., nb, d]."""
  w, a, b = _unit(w), _unit(a), _unit(b)
  return (np.einsum("...nd,...md->...nm", w, a).mean(-1) - np.einsum("...nd,...md->...nm", w, b).mean(-1))


def weat_effect_size(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """WEAT effect size and its in-sample variance v = var_{X u Y} s(w, A, B) (ddof 1).

  Leading axes broadcast (one test per leading index): x [..., nx, d], y [..., ny, d], a, b likewise.
  A test whose associations are all equal has standard deviation 0: its effect size is 0 (no
  separation), its variance `_EPS` (not a division by zero).

  Returns:
    (effect sizes [...], variances [...]).
  """
  sx, sy = associations(x, a, b), associations(y, a, b)
  if sx.shape[-1] < 1 or sy.shape[-1] < 1 or sx.shape[-1] + sy.shape[-1] < 3:
    raise ValueError(f"weat_effect_size needs >= 1 word per target set and >= 3 in all, got {sx.shape[-1]} "
                     f"and {sy.shape[-1]}")
  both = np.concatenate([sx, sy], axis=-1)
  var = both.var(axis=-1, ddof=1)
  std = np.sqrt(var)
  diff = sx.mean(-1) - sy.mean(-1)
  es = np.where(std > _EPS, diff / np.maximum(std, _EPS), 0.0)
  return es, np.maximum(var, _EPS)


@dataclasses.dataclass(frozen=True)
class CeatSamples:
  """The N sampled WEAT tests of a CEAT run."""
  effect_sizes: np.ndarray  # [N]
  variances: np.ndarray     # [N]


def ceat_samples(occurrences: Mapping[str, np.ndarray], x_words: Sequence[str], y_words: Sequence[str],
                 a_words: Sequence[str], b_words: Sequence[str], *, num_samples: int,
                 rng: np.random.Generator) -> CeatSamples:
  """CEAT's N tests: each draws one random occurrence (row of `occurrences[word]`, [k_w, d]) of
  every word of the four sets and computes the WEAT effect size and variance.

  Raises:
    ValueError: naming a word that has no occurrence.
  """
  if num_samples < 2:
    raise ValueError(f"ceat_samples needs num_samples >= 2 for a between-sample variance, got {num_samples}")
  sets = []
  for words in (x_words, y_words, a_words, b_words):
    rows = []
    for word in words:
      occ = np.asarray(occurrences.get(word, np.zeros((0, 0))))
      if occ.ndim != 2 or occ.shape[0] == 0:
        raise ValueError(f"ceat_samples: the word {word!r} has no occurrence (contextual embedding) to draw from")
      rows.append(occ[rng.integers(occ.shape[0], size=num_samples)])  # [N, d]
    sets.append(np.stack(rows, axis=1))  # [N, words, d]
  es, var = weat_effect_size(*sets)
  return CeatSamples(es, var)


@dataclasses.dataclass(frozen=True)
class RandomEffects:
  """A random-effects combination of effect sizes (DerSimonian-Laird)."""
  effect_size: float      # the combined effect size (CES)
  standard_error: float
  tau2: float             # the between-sample variance
  q: float                # Cochran's Q
  p_value: float          # two-sided z-test of CES = 0
  ci: tuple[float, float]  # the normal confidence interval at `confidence`


def random_effects(effect_sizes, variances, *, confidence: float = 0.95) -> RandomEffects:
  """Combines per-sample effect sizes and their in-sample variances (DerSimonian-Laird)."""
  es = np.asarray(effect_sizes, np.float64)
  v = np.asarray(variances, np.float64)
  if es.ndim != 1 or es.shape != v.shape or es.size < 2:
    raise ValueError(f"random_effects needs two 1-D arrays of the same length >= 2, got {es.shape} and {v.shape}")
  if np.any(~np.isfinite(es)) or np.any(~(v > 0)):
    raise ValueError("random_effects needs finite effect sizes and positive variances")
  u = 1.0 / v
  fixed = np.sum(u * es) / np.sum(u)
  q = float(np.sum(u * (es - fixed) ** 2))
  denom = np.sum(u) - np.sum(u ** 2) / np.sum(u)
  tau2 = max(0.0, (q - (es.size - 1)) / denom) if denom > 0 else 0.0
  w = 1.0 / (v + tau2)
  ces = float(np.sum(w * es) / np.sum(w))
  se = float(np.sqrt(1.0 / np.sum(w)))
  z = ces / se
  p = float(2.0 * scipy.stats.norm.sf(abs(z)))
  half = float(scipy.stats.norm.ppf(0.5 + confidence / 2.0)) * se
  return RandomEffects(ces, se, float(tau2), q, p, (ces - half, ces + half))
