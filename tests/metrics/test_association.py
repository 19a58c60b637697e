"""WEAT/CEAT effect sizes and the random-effects combination against float64 loops of the formulas."""

import math

import numpy as np
import pytest
import scipy.stats

from libs.metrics import association


def _cos(u, v):
  return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def _weat_loop(x, y, a, b):
  def s(w):
    return sum(_cos(w, ai) for ai in a) / len(a) - sum(_cos(w, bi) for bi in b) / len(b)
  sx, sy = [s(w) for w in x], [s(w) for w in y]
  both = sx + sy
  mean = sum(both) / len(both)
  var = sum((v - mean) ** 2 for v in both) / (len(both) - 1)
  return (sum(sx) / len(sx) - sum(sy) / len(sy)) / math.sqrt(var), var


def _dersimonian_laird_loop(es, v):
  u = [1 / vi for vi in v]
  fixed = sum(ui * e for ui, e in zip(u, es)) / sum(u)
  q = sum(ui * (e - fixed) ** 2 for ui, e in zip(u, es))
  c = sum(u) - sum(ui * ui for ui in u) / sum(u)
  tau2 = max(0.0, (q - (len(es) - 1)) / c)
  w = [1 / (vi + tau2) for vi in v]
  ces = sum(wi * e for wi, e in zip(w, es)) / sum(w)
  return ces, math.sqrt(1 / sum(w)), tau2, q


def test_weat_effect_size_matches_a_loop_over_the_formula():
  rng = np.random.default_rng(0)
  x, y, a, b = (rng.normal(size=(n, 6)) for n in (5, 4, 3, 6))
  es, var = association.weat_effect_size(x, y, a, b)
  ref_es, ref_var = _weat_loop(x.tolist(), y.tolist(), a.tolist(), b.tolist())
  np.testing.assert_allclose(es, ref_es, rtol=1e-12)
  np.testing.assert_allclose(var, ref_var, rtol=1e-12)


def test_weat_effect_size_broadcasts_over_leading_axes_and_is_scale_invariant():
  rng = np.random.default_rng(1)
  x, y, a, b = (rng.normal(size=(3, n, 4)) for n in (4, 4, 2, 2))
  es, _ = association.weat_effect_size(x, y, a, b)
  for i in range(3):
    np.testing.assert_allclose(es[i], association.weat_effect_size(x[i], y[i], a[i], b[i])[0], rtol=1e-12)
  np.testing.assert_allclose(association.weat_effect_size(7 * x, y, 0.1 * a, b)[0], es, rtol=1e-12)
  # Swapping the target sets flips the sign; swapping the attributes too restores it.
  np.testing.assert_allclose(association.weat_effect_size(y, x, a, b)[0], -es, rtol=1e-12)
  np.testing.assert_allclose(association.weat_effect_size(y, x, b, a)[0], es, rtol=1e-12)


def test_a_planted_association_gives_a_large_positive_effect():
  rng = np.random.default_rng(2)
  direction = np.eye(8)[0]
  x = rng.normal(size=(10, 8)) * 0.3 + direction
  y = rng.normal(size=(10, 8)) * 0.3 - direction
  a = rng.normal(size=(10, 8)) * 0.3 + direction
  b = rng.normal(size=(10, 8)) * 0.3 - direction
  es, _ = association.weat_effect_size(x, y, a, b)
  assert es > 1.5  # The maximum is 2 (perfect separation with two point masses).


def test_identical_associations_give_zero_effect_not_nan():
  x = y = a = b = np.ones((3, 4))
  es, var = association.weat_effect_size(x, y, a, b)
  assert es == 0.0 and var > 0


def test_random_effects_matches_dersimonian_laird_by_hand():
  rng = np.random.default_rng(3)
  es = rng.normal(0.5, 0.4, size=50)
  v = rng.uniform(0.01, 0.05, size=50)
  out = association.random_effects(es, v)
  ces, se, tau2, q = _dersimonian_laird_loop(es.tolist(), v.tolist())
  assert tau2 > 0  # The spread (0.4) is far above the in-sample variances: heterogeneous.
  np.testing.assert_allclose([out.effect_size, out.standard_error, out.tau2, out.q], [ces, se, tau2, q], rtol=1e-12)
  np.testing.assert_allclose(out.p_value, 2 * scipy.stats.norm.sf(abs(ces / se)), rtol=1e-10)
  np.testing.assert_allclose(out.ci, [ces - 1.959963984540054 * se, ces + 1.959963984540054 * se], rtol=1e-10)


def test_homogeneous_samples_reduce_to_the_fixed_effect_mean():
  es = np.array([0.3, 0.31, 0.29, 0.3])
  v = np.array([1.0, 2.0, 1.0, 4.0])
  out = association.random_effects(es, v)
  assert out.tau2 == 0.0
  np.testing.assert_allclose(out.effect_size, np.sum(es / v) / np.sum(1 / v), rtol=1e-12)


def test_ceat_samples_draw_one_occurrence_per_word():
  rng = np.random.default_rng(4)
  occ = {w: rng.normal(size=(k, 5)) for w, k in zip("xyzabcd", (3, 1, 2, 4, 1, 2, 2))}
  samples = association.ceat_samples(occ, ["x", "y"], ["z"], ["a", "b"], ["c", "d"], num_samples=30,
                                     rng=np.random.default_rng(0))
  assert samples.effect_sizes.shape == samples.variances.shape == (30,)
  # Every sample is the WEAT of some choice of occurrences: recompute sample 0 by drawing again.
  replay = np.random.default_rng(0)
  picks = {w: occ[w][replay.integers(occ[w].shape[0], size=30)] for w in "xyzabcd"}
  x = np.stack([picks["x"][0], picks["y"][0]])
  es0, _ = association.weat_effect_size(x, picks["z"][:1], np.stack([picks["a"][0], picks["b"][0]]),
                                        np.stack([picks["c"][0], picks["d"][0]]))
  np.testing.assert_allclose(samples.effect_sizes[0], es0, rtol=1e-12)
  with pytest.raises(ValueError, match="'q' has no occurrence"):
    association.ceat_samples(occ, ["q"], ["z"], ["a"], ["c"], num_samples=5, rng=rng)
