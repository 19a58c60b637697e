"""Tests for libs.accounting.pate against brute-force float64 references.

References are computed independently of the library: exact output distributions of GNMax
and LNMax by 1-D numerical integration (scipy.integrate.quad), exact Renyi divergences over
every neighbouring histogram, Monte Carlo, and enumeration of vote-move balls.
"""

import itertools
import json
import math

import dp_accounting
import numpy as np
import pytest
from scipy import integrate
from scipy import special
from scipy import stats

from libs.accounting import pate

ORDERS = np.array([1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0])


# -- independent references ----------------------------------------------------------------


def _neighbours(hist):
  """Histograms reachable by moving one teacher's vote to another class."""
  hist = list(hist)
  for i, j in itertools.permutations(range(len(hist)), 2):
    if hist[i] > 0:
      other = hist.copy()
      other[i] -= 1
      other[j] += 1
      yield tuple(other)


def _gnmax_probs(hist, sigma):
  """Exact Pr[GNMax = i] = integral of phi(z) prod_{j != i} Phi(z + (n_i - n_j) / sigma) dz."""
  n = np.asarray(hist, dtype=np.float64)
  probs = []
  for i in range(n.size):
    g = (n[i] - np.delete(n, i)) / sigma
    f = lambda z, g=g: math.exp(stats.norm.logpdf(z) + special.log_ndtr(z + g).sum())
    points = sorted(set(np.clip(np.concatenate([[0.0], -g, -g / 2]), -39.0, 39.0)))
    probs.append(integrate.quad(f, -40, 40, points=points, epsabs=0, epsrel=1e-11,
                                limit=400)[0])
  return np.array(probs)


def _laplace_logcdf(x, b):
  return np.where(x < 0, math.log(0.5) + np.minimum(x, 0) / b,
                  np.log1p(-0.5 * np.exp(-np.maximum(x, 0) / b)))


def _lnmax_probs(hist, b):
  """Exact Pr[LNMax = i] with i.i.d. Laplace(b) noise, by integration over the winner's noise."""
  n = np.asarray(hist, dtype=np.float64)
  probs = []
  for i in range(n.size):
    d = n[i] - np.delete(n, i)
    f = lambda z, d=d: math.exp(-math.log(2 * b) - abs(z) / b + _laplace_logcdf(z + d, b).sum())
    lim = 60 * b + np.abs(d).max()
    points = sorted(set(np.concatenate([[0.0], -d])))
    probs.append(integrate.quad(f, -lim, lim, points=points, epsabs=0, epsrel=1e-11,
                                limit=400)[0])
  return np.array(probs)


def _renyi(p, p2, lam):
  return math.log(np.sum(p**lam * p2**(1 - lam))) / (lam - 1)


def _random_histograms(rng, count, num_teachers, num_classes, concentration):
  return np.stack([rng.multinomial(num_teachers, rng.dirichlet(np.full(num_classes,
                                                                       concentration)))
                   for _ in range(count)])


# -- data-dependent <= data-independent, monotone in agreement --------------------------------


@pytest.mark.parametrize("sigma", [5.0, 20.0, 40.0, 100.0])
def test_gnmax_dependent_never_exceeds_independent(sigma):
  rng = np.random.default_rng(int(sigma))
  votes = np.concatenate([_random_histograms(rng, 300, 250, 10, c) for c in (0.05, 0.3, 3.0)])
  orders = np.array(pate.DEFAULT_ORDERS)
  rdp = pate.gnmax_rdp_batch(votes, sigma, orders)
  assert rdp.shape == (votes.shape[0], orders.size)
  assert np.all(rdp >= 0) and np.all(np.isfinite(rdp))
  assert np.all(rdp <= orders / sigma**2)
  if sigma <= 40:  # with sigma = 100 and 250 teachers even unanimity leaves q large
    assert np.any(rdp < 0.5 * orders / sigma**2)  # the data-dependent bound is actually used
  # The batch path agrees with the single-histogram one.
  for k in (0, 301, 899):
    np.testing.assert_array_equal(rdp[k], pate.gnmax_rdp(votes[k], sigma, orders))


@pytest.mark.parametrize("scale", [2.0, 10.0, 50.0])
def test_lnmax_dependent_never_exceeds_independent(scale):
  rng = np.random.default_rng(7)
  votes = np.concatenate([_random_histograms(rng, 200, 250, 10, c) for c in (0.05, 3.0)])
  orders = np.array(pate.DEFAULT_ORDERS)
  eps = pate.lnmax_pure_epsilon(scale)
  assert eps == 2.0 / scale
  indep = np.minimum(eps, orders * eps**2 / 2)
  for v in votes[::10]:
    rdp = pate.lnmax_rdp(v, scale, orders)
    assert np.all(rdp >= 0) and np.all(rdp <= indep * (1 + 1e-12))


def test_dependent_cost_shrinks_as_agreement_grows():
  orders = np.array(pate.DEFAULT_ORDERS)
  hists = [np.array([125 + k, 125 - k, 0, 0]) for k in range(0, 126, 5)]  # growing margin
  for fn, param in ((pate.gnmax_rdp, 40.0), (pate.lnmax_rdp, 20.0)):
    rdp = np.stack([fn(h, param, orders) for h in hists])
    assert np.all(np.diff(rdp, axis=0) <= 1e-15), fn.__name__
    assert rdp[-1, 20] < 0.1 * rdp[0, 20]
  # Selection far below the threshold: the answer is almost surely "no" and the cost falls
  # with the distance - at moderate orders; at orders >= ~400 the Gaussian tail ratio
  # p_m / p_(m-1), which grows with the distance, dominates the Renyi divergence.
  moderate = orders <= 256
  thr_far = np.stack([pate.threshold_rdp(np.array([m, 250 - m]), 600.0, 50.0, orders)
                      for m in range(250, 125, -5)])
  assert np.all(np.diff(thr_far[:, moderate], axis=0) <= 1e-15)
  assert np.all(thr_far <= orders / (2 * 50.0**2))


def test_unanimous_teachers_cost_orders_of_magnitude_less():
  orders = np.array([5.0, 10.0, 20.0, 2.0, 50.0])
  unanimous = np.array([250] + [0] * 9)
  split = np.array([130, 120] + [0] * 8)
  indep = orders / 40.0**2
  dd = pate.gnmax_rdp(unanimous, 40.0, orders)
  assert np.all(dd[:3] < indep[:3] / 100)  # typical optimal orders for PATE budgets
  assert np.all(dd[3:] < indep[3:] / 10)
  np.testing.assert_array_equal(pate.gnmax_rdp(split, 40.0, orders), indep)


# -- the theorem formulas against plain float64 re-implementations ---------------------------------


def _theorem6_reference(q, sigma, lam):
  """Papernot et al. 2018 Thm. 6 with Prop. 10's mu1, mu2, written out directly."""
  indep = lam / sigma**2
  mu2 = sigma * math.sqrt(math.log(1 / q))
  mu1 = mu2 + 1
  eps1, eps2 = mu1 / sigma**2, mu2 / sigma**2
  if not (mu2 > 1 and lam < mu1
          and q <= math.exp((mu2 - 1) * eps2) / (mu1 / (mu1 - 1) * mu2 / (mu2 - 1))**mu2):
    return indep
  a = (1 - q) / (1 - (q * math.exp(eps2))**((mu2 - 1) / mu2))
  b = math.exp(eps1) / q**(1 / (mu1 - 1))
  return min(indep, math.log((1 - q) * a**(lam - 1) + q * b**(lam - 1)) / (lam - 1))


def _theorem3_reference(q, scale, lam):
  """Papernot et al. 2017 Thm. 3 (gamma = 1 / scale, the mechanism is 2 gamma-DP)."""
  gamma = 1 / scale
  eps = 2 * gamma
  indep = min(eps, lam * eps**2 / 2)
  if not q < (math.exp(2 * gamma) - 1) / (math.exp(4 * gamma) - 1):
    return indep
  l = lam - 1
  alpha = math.log((1 - q) * ((1 - q) / (1 - math.exp(2 * gamma) * q))**l
                   + q * math.exp(2 * gamma * l))
  return min(indep, alpha / l)


@pytest.mark.parametrize("sigma", [2.0, 10.0, 40.0])
def test_gnmax_rdp_matches_plain_theorem6(sigma):
  orders = np.array([1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0])
  hists = [np.array([250 - k, k, 0, 0, 0]) for k in range(0, 126, 3)]
  dd_used = 0
  for h in hists:
    q = min(sum(0.5 * special.erfc((h[0] - x) / (2 * sigma)) for x in h[1:]), 1 - 1 / h.size)
    if q < 1e-250:  # the plain formula underflows; the log-space library does not
      continue
    want = np.array([_theorem6_reference(q, sigma, lam) for lam in orders])
    np.testing.assert_allclose(pate.gnmax_rdp(h, sigma, orders), want, rtol=1e-6, atol=1e-15)
    dd_used += np.sum(want < orders / sigma**2)
  assert dd_used > 10


@pytest.mark.parametrize("scale", [0.5, 2.0, 10.0])
def test_lnmax_rdp_matches_plain_theorem3(scale):
  orders = np.array([1.5, 2.0, 3.0, 5.0, 10.0, 50.0])
  eps = 2 / scale
  boundary = 1 / (math.exp(eps) + 1)
  qs = np.concatenate([np.geomspace(1e-9, 0.9 * boundary, 30),
                       boundary * np.array([0.99, 0.999, 1.001, 1.2]), [0.6]])
  got = pate._lnmax_rdp_from_log_q(np.log(qs), scale, orders)  # pylint: disable=protected-access
  want = np.array([[_theorem3_reference(q, scale, lam) for lam in orders] for q in qs])
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-15)
  # Through the public API with an independently computed Lemma 4 q.
  h = np.array([12, 5, 1])
  g = (h[0] - h[1:]) / scale
  q = np.sum((2 + g) / (4 * np.exp(g)))
  want = [_theorem3_reference(q, scale, lam) for lam in orders]
  np.testing.assert_allclose(pate.lnmax_rdp(h, scale, orders), want, rtol=1e-6, atol=1e-15)


# -- q bounds against exact probabilities ------------------------------------------------------


@pytest.mark.parametrize("hist,sigma", [((10, 8, 3), 2.0), ((20, 5, 5, 0), 3.0),
                                        ((6, 6, 1), 1.5), ((30, 2, 1, 0, 0), 4.0),
                                        ((9, 1), 2.0), ((12, 12), 5.0)])
def test_gnmax_q_bound_dominates_exact(hist, sigma):
  p = _gnmax_probs(hist, sigma)
  assert p.sum() == pytest.approx(1.0, abs=1e-9)
  q_exact = 1.0 - p[int(np.argmax(hist))]
  q_bound = math.exp(pate.gnmax_log_q(np.array(hist), sigma))
  assert q_bound >= q_exact * (1 - 1e-9)
  if len(hist) == 2 and hist[0] != hist[1]:  # the union bound is exact for two classes
    assert q_bound == pytest.approx(q_exact, rel=1e-8)
  assert q_bound <= 1 - 1 / len(hist) + 1e-15


def test_gnmax_q_exact_matches_monte_carlo():
  hist, sigma = np.array([6.0, 4.0, 2.0, 0.0]), 2.0
  rng = np.random.default_rng(0)
  wins = np.argmax(hist + sigma * rng.standard_normal((400_000, 4)), axis=1)
  q_mc = np.mean(wins != 0)
  q_exact = 1 - _gnmax_probs(hist, sigma)[0]
  assert abs(q_mc - q_exact) < 5 * math.sqrt(q_exact * (1 - q_exact) / 400_000)
  assert math.exp(pate.gnmax_log_q(hist, sigma)) >= q_exact


@pytest.mark.parametrize("hist,scale", [((10, 8, 3), 2.0), ((20, 3, 1), 2.0),
                                        ((5, 3, 2), 1.0), ((9, 1), 4.0), ((40, 0, 0), 5.0)])
def test_lnmax_q_bound_dominates_exact(hist, scale):
  p = _lnmax_probs(hist, scale)
  assert p.sum() == pytest.approx(1.0, abs=1e-9)
  q_exact = 1.0 - p[int(np.argmax(hist))]
  q_bound = math.exp(pate.lnmax_log_q(np.array(hist), scale))
  assert q_bound >= q_exact * (1 - 1e-9)
  if len(hist) == 2:  # exact pairwise probability
    assert q_bound == pytest.approx(q_exact, rel=1e-8)


# -- RDP bounds against exact Renyi divergences over all neighbours --------------------------


@pytest.mark.parametrize("hist,sigma", [((18, 2, 0), 2.0), ((15, 4, 1), 2.0), ((12, 6, 2), 2.0),
                                        ((22, 8, 0), 3.0), ((5, 1, 0), 1.0)])
def test_gnmax_rdp_dominates_exact_divergence(hist, sigma):
  bound = pate.gnmax_rdp(np.array(hist), sigma, ORDERS)
  assert np.any(bound < ORDERS / sigma**2)  # the data-dependent branch is exercised
  p = _gnmax_probs(hist, sigma)
  for other in _neighbours(hist):
    p2 = _gnmax_probs(other, sigma)
    exact = np.array([_renyi(p, p2, lam) for lam in ORDERS])
    assert np.all(exact <= bound * (1 + 1e-7)), (other, exact / bound)


@pytest.mark.parametrize("hist,scale", [((16, 3, 1), 2.0), ((8, 1, 1), 1.0), ((40, 0, 0), 5.0)])
def test_lnmax_rdp_dominates_exact_divergence(hist, scale):
  orders = np.array([1.5, 2.0, 3.0, 5.0, 8.0, 20.0, 50.0])
  bound = pate.lnmax_rdp(np.array(hist), scale, orders)
  eps = 2 / scale
  assert np.any(bound < 0.5 * np.minimum(eps, orders * eps**2 / 2))
  p = _lnmax_probs(hist, scale)
  for other in _neighbours(hist):
    p2 = _lnmax_probs(other, scale)
    exact = np.array([_renyi(p, p2, lam) for lam in orders])
    assert np.all(exact <= bound * (1 + 1e-7)), (other, exact / bound)


# -- threshold (Confident-GNMax selection) ---------------------------------------------------


def _bernoulli_renyi_direct(p, p2, lam):
  """p = (Pr[yes], Pr[no]) from sf / cdf, so that no 1 - p cancellation loses digits."""
  return math.log(p[0]**lam * p2[0]**(1 - lam) + p[1]**lam * p2[1]**(1 - lam)) / (lam - 1)


@pytest.mark.parametrize("threshold,sigma_t", [(8.0, 2.0), (6.0, 1.0), (150.0, 100.0)])
def test_threshold_matches_direct_bernoulli_divergence(threshold, sigma_t):
  num_teachers = 12
  orders = np.array([1.5, 2.0, 3.0, 10.0])
  pr = lambda m: (stats.norm.sf(threshold - m, scale=sigma_t),
                  stats.norm.cdf(threshold - m, scale=sigma_t))
  for hist in itertools.product(range(num_teachers + 1), repeat=3):
    if sum(hist) != num_teachers:
      continue
    m = max(hist)
    got = pate.threshold_rdp(np.array(hist), threshold, sigma_t, orders,
                             num_teachers=num_teachers)
    assert np.all(got <= orders / (2 * sigma_t**2))
    assert math.exp(pate.log_pr_answered(np.array(hist), threshold, sigma_t)) == \
        pytest.approx(pr(m)[0], rel=1e-12)
    # Brute force over actual neighbours: the bound dominates, and is exact when both
    # m - 1 and m + 1 are reachable (unique top class, m < T).
    exact = np.array([max(_bernoulli_renyi_direct(pr(m), pr(max(o)), lam)
                          for o in _neighbours(hist)) for lam in orders])
    assert np.all(got >= exact * (1 - 1e-9) - 1e-15)
    top_unique = sorted(hist)[-1] > sorted(hist)[-2]
    if top_unique and m < num_teachers:
      np.testing.assert_allclose(got, exact, rtol=1e-8, atol=1e-15)


def test_threshold_without_num_teachers_considers_m_plus_one():
  hist, orders = np.array([12, 0, 0]), np.array([2.0])
  clipped = pate.threshold_rdp(hist, 8.0, 2.0, orders, num_teachers=12)
  unclipped = pate.threshold_rdp(hist, 8.0, 2.0, orders)
  assert unclipped >= clipped


# -- smooth sensitivity ------------------------------------------------------------------------

_T, _C = 12, 3
_HISTS = [h for h in itertools.product(range(_T + 1), repeat=_C) if sum(h) == _T]


@pytest.mark.parametrize("sigma,order", [(1.0, 3.0), (0.7, 2.5), (2.0, 2.0)])
def test_gnmax_local_sensitivity_dominates_brute_force(sigma, order):
  f = {h: pate.gnmax_rdp(np.array(h), sigma, order).item() for h in _HISTS}
  assert np.mean([f[h] < order / sigma**2 for h in _HISTS]) > 0.2  # dd branch in play
  ls_true = {h: max(abs(f[h] - f[o]) for o in _neighbours(h)) for h in _HISTS}
  bounds = {h: pate.gnmax_local_sensitivity(np.array(h), _T, sigma, order) for h in _HISTS}
  beta = 0.1
  ss = {h: pate.gnmax_smooth_sensitivity(np.array(h), _T, sigma, order, beta) for h in _HISTS}
  for h in _HISTS:
    ls = bounds[h]
    assert ls.shape == (_T,) and np.all(ls >= 0) and np.all(np.diff(ls) >= 0)
    assert ss[h] >= ls[0] >= ls_true[h]
    # LS_d bounds the largest LS within d moves (enumerated balls), for every d.
    ball = {h}
    for d in range(_T):
      assert ls[d] >= max(ls_true[m] for m in ball), (h, d)
      ball |= {o for m in ball for o in _neighbours(m)}
    # The last entry stands for all d >= T - 1 and must bound the global range of F.
    assert ls[-1] >= max(f.values()) - min(f.values())
    for o in _neighbours(h):
      # Admissibility and beta-smoothness, which the GNSS guarantee needs.
      assert np.all(ls[:-1] <= bounds[o][1:] * (1 + 1e-12))
      assert ss[h] <= math.exp(beta) * ss[o] * (1 + 1e-12)


def test_threshold_local_sensitivity_dominates_brute_force():
  threshold, sigma_t, order = 8.0, 2.0, 3.0
  f = {h: pate.threshold_rdp(np.array(h), threshold, sigma_t, order, num_teachers=_T).item()
       for h in _HISTS}
  ls_true = {h: max(abs(f[h] - f[o]) for o in _neighbours(h)) for h in _HISTS}
  for h in _HISTS:
    ls = pate.threshold_local_sensitivity(np.array(h), _T, threshold, sigma_t, order)
    assert ls.shape == (_T,) and np.all(ls >= 0)
    ball = {h}
    for d in range(4):
      assert ls[d] >= max(ls_true[m] for m in ball) * (1 - 1e-12)
      ball |= {o for m in ball for o in _neighbours(m)}
    for o in _neighbours(h):
      other = pate.threshold_local_sensitivity(np.array(o), _T, threshold, sigma_t, order)
      assert np.all(ls[:-1] <= other[1:] * (1 + 1e-12))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 5.0, 40.0, 150.0])
def test_data_dependent_gnmax_rdp_is_monotone_in_q(sigma):
  # The smooth-sensitivity bound relies on this (and re-checks it at run time).
  log_q = -np.geomspace(1e4, 1e-3, 20000)  # increasing q
  orders = np.array([1.5, 2.0, 5.0, 20.0, 100.0])
  rdp = pate._gnmax_rdp_from_log_q(log_q, sigma, orders)  # pylint: disable=protected-access
  assert np.all(np.diff(rdp, axis=0) >= -1e-12 * rdp.max(axis=0) - 1e-300)


def test_total_local_sensitivity_sums_per_query_bounds():
  rng = np.random.default_rng(3)
  votes = _random_histograms(rng, 20, 50, 5, 0.2)
  answered = rng.random(20) < 0.5
  total = pate.total_local_sensitivity(votes, 50, 10.0, sigma=8.0, answered_mask=answered,
                                       threshold=30.0, sigma_threshold=10.0)
  expected = sum(pate.gnmax_local_sensitivity(v, 50, 8.0, 10.0) for v in votes[answered])
  expected = expected + sum(pate.threshold_local_sensitivity(v, 50, 30.0, 10.0, 10.0)
                            for v in votes)
  np.testing.assert_allclose(total, expected, rtol=1e-12)
  assert pate.smooth_sensitivity(total, 0.05) >= total[0]


def test_gnss_rdp_formula_and_range():
  beta, sigma_ss, lam = 0.02, 8.0, 10.0
  expected = (lam * math.exp(2 * beta) / sigma_ss**2
              + (-0.5 * math.log(1 - 2 * lam * beta) + beta * lam) / (lam - 1))
  assert pate.gnss_rdp(beta, sigma_ss, lam) == pytest.approx(expected, rel=1e-14)
  with pytest.raises(ValueError, match="orders"):
    pate.gnss_rdp(beta, sigma_ss, [10.0, 25.0])  # 1 / (2 beta) = 25
  with pytest.raises(ValueError, match="orders"):
    pate.gnss_rdp(beta, sigma_ss, 1.0)
  with pytest.raises(ValueError, match="beta"):
    pate.gnss_rdp(-0.1, sigma_ss, 2.0)
  with pytest.raises(ValueError, match="sigma_ss"):
    pate.gnss_rdp(beta, 0.0, 2.0)


def test_release_data_dependent_epsilon():
  args = dict(data_dependent_rdp=0.8, smooth_sens=0.01, beta=0.02, sigma_ss=8.0, order=20.0,
              delta=1e-5)
  out = pate.release_data_dependent_epsilon(**args, rng=123)
  z = np.random.default_rng(123).standard_normal()
  assert out.noisy_data_dependent_rdp == pytest.approx(0.8 + 0.01 * 8.0 * z, rel=1e-14)
  release = pate.gnss_rdp(0.02, 8.0, 20.0)
  assert out.release_rdp == pytest.approx(release, rel=1e-14)
  assert out.noisy_total_rdp == pytest.approx(out.noisy_data_dependent_rdp + release)
  conv = lambda r: r + math.log1p(-1 / 20) - math.log(1e-5 * 20) / 19
  assert out.noisy_epsilon == pytest.approx(conv(out.noisy_total_rdp), rel=1e-12)
  assert out.release_epsilon == pytest.approx(conv(release), rel=1e-12)
  again = pate.release_data_dependent_epsilon(**args, rng=np.random.default_rng(123))
  assert again == out
  with pytest.raises(ValueError, match="rng"):
    pate.release_data_dependent_epsilon(**args, rng="seed")
  with pytest.raises(ValueError, match="orders"):
    pate.release_data_dependent_epsilon(**{**args, "order": 30.0}, rng=0)


# -- ledger ------------------------------------------------------------------------------------


def test_pate_ledger_totals_are_sums_of_per_query_values():
  rng = np.random.default_rng(11)
  votes = _random_histograms(rng, 50, 100, 10, 0.2)
  answered = rng.random(50) < 0.6
  orders = np.array(pate.DEFAULT_ORDERS)
  ledger = pate.PateLedger(num_teachers=100)
  ledger.record_confident_gnmax(votes, 60.0, 20.0, 10.0, answered)
  ledger.record_lnmax(votes[:10], 20.0)
  ledger.record_noisy_average(7, 30.0)
  dd = (sum(pate.threshold_rdp(v, 60.0, 20.0, orders, num_teachers=100) for v in votes)
        + sum(pate.gnmax_rdp(v, 10.0, orders) for v in votes[answered])
        + sum(pate.lnmax_rdp(v, 20.0, orders) for v in votes[:10])
        + 7 * pate.noisy_average_rdp(30.0, orders))
  eps = 0.1
  indep = (50 * orders / (2 * 20.0**2) + answered.sum() * orders / 10.0**2
           + 10 * np.minimum(eps, orders * eps**2 / 2) + 7 * orders / 30.0**2)
  np.testing.assert_allclose(ledger.rdp_data_dependent, dd, rtol=1e-12)
  np.testing.assert_allclose(ledger.rdp_data_independent, indep, rtol=1e-12)
  assert np.all(ledger.rdp_data_dependent <= ledger.rdp_data_independent * (1 + 1e-12))
  assert ledger.num_queries == 50 + 10 + 7
  assert ledger.num_answered == answered.sum() + 10 + 7
  assert ledger.epsilon(1e-5, data_dependent=True) <= ledger.epsilon(1e-5)
  restored = pate.PateLedger.from_state_dict(json.loads(json.dumps(ledger.state_dict())))
  assert restored.summary(1e-5) == ledger.summary(1e-5)


def test_pate_ledger_data_independent_epsilon_matches_dp_accounting():
  rng = np.random.default_rng(5)
  votes = _random_histograms(rng, 300, 250, 10, 0.3)
  ledger = pate.PateLedger()
  ledger.record_gnmax(votes, 40.0)
  # GNMax = Gaussian mechanism with L2 sensitivity sqrt(2): noise multiplier sigma / sqrt(2).
  acct = dp_accounting.rdp.RdpAccountant(list(pate.DEFAULT_ORDERS))
  acct.compose(dp_accounting.GaussianDpEvent(40.0 / math.sqrt(2)), 300)
  assert ledger.epsilon(1e-5) == pytest.approx(acct.get_epsilon(1e-5), rel=1e-12)
  assert ledger.epsilon(1e-5, data_dependent=True) < ledger.epsilon(1e-5)


def test_pate_ledger_would_exceed_stops_before_target():
  ledger = pate.PateLedger()
  votes = np.array([[200, 50, 0]] * 10)
  target, delta, answered = 1.0, 1e-5, 0
  while not ledger.would_exceed(target, delta, num_queries=10, gnmax_sigma=40.0):
    ledger.record_gnmax(votes, 40.0)
    answered += 10
  assert ledger.epsilon(delta) <= target
  ledger.record_gnmax(votes, 40.0)
  assert ledger.epsilon(delta) > target  # the refused batch would indeed have overspent
  assert answered > 0
  with pytest.raises(ValueError, match="gnmax_sigma"):
    ledger.would_exceed(target, delta, gnmax_sigma=-1.0)
  with pytest.raises(ValueError, match="target_epsilon"):
    ledger.would_exceed(0.0, delta, gnmax_sigma=1.0)
  with pytest.raises(ValueError, match="at least one"):
    ledger.would_exceed(target, delta)


def test_gnmax_rdp_batch_matches_per_query_references():
  # The batch size of benchmarks/pate_analysis.py, which times this call (no wall-clock
  # assertion here: it fails on a loaded machine and tells nothing about correctness).
  rng = np.random.default_rng(0)
  votes = _random_histograms(rng, 5000, 250, 30, 0.1)
  orders = np.array(pate.DEFAULT_ORDERS[:30])
  sigma = 40.0
  got = pate.gnmax_rdp_batch(votes, sigma, orders)
  assert got.shape == (5000, 30) and np.all(np.isfinite(got))
  assert np.all((got >= 0) & (got <= orders / sigma**2 * (1 + 1e-12)))
  rows = rng.choice(5000, 60, replace=False)
  for i in rows:
    # Vectorised == the per-query API, and == Theorem 6 written out in plain float64.
    np.testing.assert_allclose(got[i], pate.gnmax_rdp(votes[i], sigma, orders), rtol=1e-12)
    h = votes[i]
    top = h.max()
    q = min(sum(0.5 * special.erfc((top - x) / (2 * sigma)) for x in np.delete(h, h.argmax())),
            1 - 1 / h.size)
    want = [_theorem6_reference(q, sigma, lam) for lam in orders]
    np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-15)
  assert np.sum(got < orders / sigma**2) > 1000  # the data-dependent bound is exercised


# -- bad inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("call,name", [
    (lambda: pate.gnmax_rdp(np.array([3, 1]), -1.0, ORDERS), "sigma"),
    (lambda: pate.gnmax_rdp(np.array([3, -1]), 1.0, ORDERS), "votes"),
    (lambda: pate.gnmax_rdp(np.array([[3, 1]]), 1.0, ORDERS), "votes"),
    (lambda: pate.gnmax_rdp(np.array([3, 1]), 1.0, [0.5, 2.0]), "orders"),
    (lambda: pate.gnmax_rdp(np.array([3, 1]), 1.0, [1.0]), "orders"),
    (lambda: pate.gnmax_log_q(np.array([3, 1]), 0.0), "sigma"),
    (lambda: pate.gnmax_rdp_batch(np.array([3, 1]), 1.0, ORDERS), "votes_batch"),
    (lambda: pate.lnmax_rdp(np.array([3, 1]), -2.0, ORDERS), "scale"),
    (lambda: pate.lnmax_pure_epsilon(0.0), "scale"),
    (lambda: pate.threshold_rdp(np.array([3, 1]), 2.0, -1.0, ORDERS), "sigma_threshold"),
    (lambda: pate.threshold_rdp(np.array([3, 1]), 2.0, 1.0, ORDERS, num_teachers=3),
     "votes"),
    (lambda: pate.noisy_average_rdp(-1.0, ORDERS), "sigma"),
    (lambda: pate.gnmax_local_sensitivity(np.array([3, 1]), 0, 1.0, 2.0), "num_teachers"),
    (lambda: pate.gnmax_local_sensitivity(np.array([[3, 1]]), 4, 1.0, 2.0), "votes"),
    (lambda: pate.gnmax_smooth_sensitivity(np.array([3, 1]), 4, 1.0, 2.0, -0.1), "beta"),
    (lambda: pate.PateLedger(orders=[1.0, 2.0]), "orders"),
    (lambda: pate.PateLedger().record_gnmax(np.array([3, 1]), 1.0), "votes_batch"),
    (lambda: pate.PateLedger().record_gnmax(np.array([[3, 1]]), 1.0, [True, False]),
     "answered_mask"),
    (lambda: pate.PateLedger().record_threshold(np.array([[3, -1]]), 1.0, 1.0), "votes_batch"),
    (lambda: pate.PateLedger().epsilon(1.0), "delta"),
    (lambda: pate.PateLedger().epsilon(0.0), "delta"),
    (lambda: pate.PateLedger().record_noisy_average(-1, 1.0), "num_queries"),
    (lambda: pate.release_data_dependent_epsilon(0.5, -0.1, 0.02, 8.0, 10.0, 1e-5, 0),
     "smooth_sens"),
    (lambda: pate.release_data_dependent_epsilon(-0.5, 0.1, 0.02, 8.0, 10.0, 1e-5, 0),
     "data_dependent_rdp"),
    (lambda: pate.release_data_dependent_epsilon(0.5, 0.1, 0.02, 8.0, 10.0, 2.0, 0), "delta"),
    (lambda: pate.smooth_sensitivity(np.array([-1.0]), 0.1), "local_sensitivity"),
    (lambda: pate.threshold_local_sensitivity(np.array([3.5, 1]), 5, 2.0, 1.0, 2.0), "votes"),
])
def test_bad_inputs_name_the_argument(call, name):
  with pytest.raises(ValueError, match=name):
    call()


def test_released_total_never_falls_below_the_release_cost():
  # A zero data-dependent cost with a large smooth sensitivity: about half of the noise draws
  # are negative; the published total must still include the release's formal RDP in full.
  from libs.accounting import release_data_dependent_epsilon, gnss_rdp  # pylint: disable=import-outside-toplevel
  totals = []
  for seed in range(40):
    r = release_data_dependent_epsilon(0.0, 5.0, 0.05, 2.0, 4.0, 1e-5, rng=seed)
    assert r.noisy_total_rdp >= r.release_rdp - 1e-12
    assert r.noisy_epsilon >= r.release_epsilon - 1e-9
    totals.append(r.noisy_total_rdp)
  assert r.release_rdp == pytest.approx(float(gnss_rdp(0.05, 2.0, 4.0)))
  assert min(totals) == pytest.approx(r.release_rdp)  # some draws were negative and were clipped
