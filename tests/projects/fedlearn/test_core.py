"""fedlearn core: algorithms (vmap on a mesh vs a sequential loop), FedAvg vs centralized GD,
selection unbiasedness and dropout, DP clipping / noise / accounting, refusals, config validation.

Uses a linear-regression model (closed-form gradients) so references are independent of the
code under test; runs on the 8 fake CPU devices of tests/conftest.py.
"""

import functools
import os
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from libs import accounting
from libs.accounting import PrivacyBudgetExceeded
from libs.train.mesh import make_mesh
from libs.train.rng import Streams
from projects.fedlearn import algorithms as alg_lib
from projects.fedlearn import privacy
from projects.fedlearn import selection
from projects.fedlearn import rounds
from projects.fedlearn import simulation
from projects.fedlearn import validation

DIM = 5


def loss_fn(params, x, y):
  return 0.5 * jnp.square(x @ params["w"] + params["b"] - y)


def _clients(num=13, max_examples=12, seed=0, with_control=False):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num, max_examples, DIM)).astype(np.float32)
  y = (x @ rng.normal(size=DIM) + 0.3 * rng.normal(size=(num, max_examples))).astype(np.float32)
  n = rng.integers(0, max_examples + 1, size=num)
  n[0] = 0  # An empty client must contribute nothing.
  n[1] = max_examples
  mask = (np.arange(max_examples)[None] < n[:, None]).astype(np.float32)
  x[mask == 0] = 1e3  # Padding garbage must not leak into updates.
  control = None
  if with_control:
    control = {"w": 0.1 * rng.normal(size=(num, DIM)).astype(np.float32),
               "b": 0.1 * rng.normal(size=(num,)).astype(np.float32)}
  return alg_lib.Clients((x, y), mask, np.arange(100, 100 + num, dtype=np.int32), control), n


def _params():
  return {"w": jnp.asarray(np.linspace(-0.5, 0.5, DIM), jnp.float32), "b": jnp.asarray(0.1, jnp.float32)}


CASES = {
    # One full-batch GD step: also the centralized-GD and dropout tests' round (one compile).
    "fedavg": dict(name="fedavg", client=alg_lib.ClientConfig(0.3, num_epochs=1, batch_size=0)),
    "fedprox": dict(name="fedprox", client=alg_lib.ClientConfig(0.05, num_epochs=1, batch_size=3, prox_mu=0.5),
                    chunk_size=8),
    "fedopt_yogi": dict(name="fedopt", client=alg_lib.ClientConfig(0.05, num_steps=3, batch_size=5),
                        server_optimizer_name="yogi", server_learning_rate=0.05),
    "scaffold": dict(name="scaffold", client=alg_lib.ClientConfig(0.05, num_epochs=1, batch_size=4),
                     num_devices=500),
    "dp_adaptive": dict(name="fedavg", client=alg_lib.ClientConfig(0.05, num_epochs=1, batch_size=4),
                        dp=alg_lib.DPConfig(clip_norm=0.3, noise_multiplier=0.7, expected_clients=10.0,
                                            adaptive=True, count_noise_std=0.5)),
}


@functools.lru_cache(maxsize=None)
def _round(case):
  """(algorithm, round_fn on the 8-device mesh) of a case, built once per test session."""
  kw = dict(CASES[case])
  alg = alg_lib.make_algorithm(kw.pop("name"), loss_fn, kw.pop("client"), **kw)
  return alg, rounds.build_round(alg, make_mesh())


def _run_padded(case, state, clients, weights, key):
  alg, round_fn = _round(case)
  mesh = make_mesh()
  padded, padded_w = rounds.pad_clients(clients, weights, mesh.size)
  return round_fn(state, rounds.shard_clients(padded, mesh), padded_w, key)


@pytest.mark.parametrize("case", sorted(CASES))
def test_vmapped_sharded_round_matches_sequential_loop(case):
  name = CASES[case]["name"]
  alg, round_fn = _round(case)
  clients, n = _clients(with_control=name == "scaffold")
  if CASES[case].get("dp"):
    weights = (n > 0).astype(np.float32)
  else:
    weights = (n / n.sum()).astype(np.float32)
  state = alg.init(_params())
  if name == "scaffold":
    state = state.replace(control={"w": jnp.full(DIM, 0.05), "b": jnp.asarray(-0.02)})
  mesh = make_mesh()
  assert mesh.size == 8
  padded, padded_w = rounds.pad_clients(clients, weights, mesh.size)
  assert len(padded_w) == 16
  key = jax.random.key(3)
  new, diag = round_fn(state, rounds.shard_clients(padded, mesh), padded_w, key)
  assert new.params["w"].sharding.is_fully_replicated and diag["loss"].sharding.spec[0] == "data"
  ref, ref_diag = alg_lib.sequential_apply(alg, state, clients, weights, key)
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref)):
    assert np.all(np.isfinite(np.asarray(a)))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
  np.testing.assert_array_equal(np.asarray(diag["num_steps"])[:13], ref_diag["num_steps"])
  assert int(new.round) == 1
  # The round did something, and the empty client took no step.
  assert not np.allclose(np.asarray(new.params["w"]), np.asarray(state.params["w"]))
  assert int(diag["num_steps"][0]) == 0 and np.all(np.asarray(diag["num_steps"])[13:] == 0)
  if name == "scaffold":
    np.testing.assert_allclose(np.asarray(diag["control_delta"]["w"])[:13], ref_diag["control_delta"]["w"],
                               rtol=2e-5, atol=2e-6)
  # Purity: the same inputs give the same outputs.
  again, _ = round_fn(state, rounds.shard_clients(padded, mesh), padded_w, key)
  np.testing.assert_array_equal(np.asarray(again.params["w"]), np.asarray(new.params["w"]))


def test_fedavg_one_full_batch_step_equals_centralized_gd():
  clients, n = _clients(num=13, seed=4)
  lr = CASES["fedavg"]["client"].learning_rate
  state = _round("fedavg")[0].init(_params())
  new, _ = _run_padded("fedavg", state, clients, (n / n.sum()).astype(np.float32), jax.random.key(0))
  # Float64 NumPy gradient descent on the pooled real examples.
  x, y = clients.data
  real = clients.mask > 0
  px, py = x[real].astype(np.float64), y[real].astype(np.float64)
  w, b = np.asarray(state.params["w"], np.float64), float(state.params["b"])
  r = px @ w + b - py
  w_ref = w - lr * px.T @ r / len(py)
  b_ref = b - lr * r.mean()
  np.testing.assert_allclose(np.asarray(new.params["w"]), w_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(new.params["b"]), b_ref, rtol=1e-5, atol=1e-6)


def test_fedprox_pulls_towards_the_server_model():
  clients, _ = _clients(num=2, seed=5)
  data = tuple(x[1] for x in clients.data)

  @jax.jit
  def moves(params, data, mask, key):  # One compilation for both settings.
    return [alg_lib.tree_l2_norm(alg_lib.client_update(
        loss_fn, params, data, mask, key, alg_lib.ClientConfig(0.1, num_epochs=2, batch_size=4, prox_mu=mu))[0])
            for mu in (1e-9, 5.0)]

  free, pulled = moves(_params(), data, clients.mask[1], jax.random.key(1))
  assert 0 < float(pulled) < 0.7 * float(free)


@pytest.mark.parametrize("scheme", selection.SCHEMES)
@pytest.mark.parametrize("dropout_mode", [None, "independent", "fixed"])
def test_selection_weights_are_unbiased(scheme, dropout_mode):
  rng = np.random.default_rng(0)
  n = np.minimum(rng.zipf(1.6, 60), 300)
  n[:3] = 0
  values = rng.normal(size=60)
  target = np.sum(n * values) / n.sum()
  draws = []
  gen = np.random.default_rng(1)
  for _ in range(3000):
    sel = selection.select(scheme, n, 8, gen, cap_ratio=3.0)
    if dropout_mode:
      sel, _ = selection.apply_dropout(sel, 0.3, gen, mode=dropout_mode)
    draws.append(np.sum(sel.weights * values[sel.ids]))
  draws = np.asarray(draws)
  stderr = draws.std() / math.sqrt(len(draws))
  assert abs(draws.mean() - target) < 4 * stderr, (draws.mean(), target, stderr)
  # And the test has power: ignoring the example counts gives a visibly biased estimate.
  if scheme == "uniform" and dropout_mode is None:
    assert abs(np.mean(values[n > 0]) - target) > 4 * stderr


def test_capped_activity_probabilities():
  n = np.array([0, 1, 2, 3, 50, 100, 400])
  p = selection.inclusion_probabilities("activity_capped", n, 3, cap_ratio=1.5)
  cap = 1.5 * 3 / 7
  assert p.max() <= cap + 1e-12 and abs(p.sum() - 3) < 1e-9 and p[0] == 0
  free = (p < cap - 1e-12) & (n > 0)
  np.testing.assert_allclose(p[free] / n[free], p[free][0] / n[free][0])  # proportional below the cap
  with pytest.raises(ValueError, match="cap_ratio too small"):
    selection.inclusion_probabilities("activity_capped", n, 3, cap_ratio=1.0 + 1e-9 - 0.5)


def test_dropout_round_equals_round_on_survivors():
  """Dropped devices train but never report: same state as a round of the survivors alone."""
  clients, n = _clients(num=13, seed=6)
  state = _round("fedavg")[0].init(_params())
  sel = selection.Selection(np.arange(13), n / n.sum(), 13)
  dropped, survived = selection.apply_dropout(sel, 0.4, np.random.default_rng(2), weighting="normalized",
                                              mode="fixed")
  assert survived.sum() == 8 and dropped.num_dropped == 5
  assert abs(dropped.weights.sum() - 1) < 1e-12 and np.all(dropped.weights[~survived] == 0)
  key = jax.random.key(5)
  with_dropouts, _ = _run_padded("fedavg", state, clients, dropped.weights.astype(np.float32), key)
  keep = np.flatnonzero(survived)
  only = alg_lib.Clients(tuple(x[keep] for x in clients.data), clients.mask[keep], clients.ids[keep])
  w = n[keep] / n[keep].sum()
  survivors, _ = _run_padded("fedavg", state, only, w.astype(np.float32), key)
  assert not np.allclose(np.asarray(survivors.params["w"]), np.asarray(state.params["w"]))
  np.testing.assert_allclose(np.asarray(with_dropouts.params["w"]), np.asarray(survivors.params["w"]),
                             rtol=1e-5, atol=1e-7)


@functools.lru_cache(maxsize=None)
def _dp_apply(noise, expected, adaptive):
  # Count noise 1e-6: adaptive clipping needs some, and this little keeps the clip steps exact to 1e-6.
  dp = alg_lib.DPConfig(clip_norm=1.0, noise_multiplier=noise, expected_clients=expected, adaptive=adaptive,
                        clip_learning_rate=0.2, target_quantile=0.5, count_noise_std=1e-6 if adaptive else None)
  alg = alg_lib.make_algorithm("fedavg", loss_fn, alg_lib.ClientConfig(0.5, num_epochs=2, batch_size=4), dp=dp)
  return alg, jax.jit(alg.apply)


def _dp_round(clip, noise, clients, weights, key, expected=1.0, adaptive=False, dim=DIM):
  alg, apply = _dp_apply(noise, expected, adaptive)
  params = {"w": jnp.zeros(dim, jnp.float32), "b": jnp.zeros((), jnp.float32)}
  state = alg.init(params).replace(clip_norm=jnp.asarray(clip, jnp.float32))
  new, diag = apply(state, clients, weights, key)
  return state, new, diag


def test_dp_clipping_bounds_each_device_and_adaptive_clip_moves():
  clients, _ = _clients(num=6, seed=7)
  for clip in (1e-3, 0.05, 1.0, 1e3):
    for c in range(1, 6):
      one = alg_lib.Clients(tuple(x[c:c + 1] for x in clients.data), clients.mask[c:c + 1], clients.ids[c:c + 1])
      _, new, diag = _dp_round(clip, 0.0, one, np.ones(1, np.float32), jax.random.key(c), adaptive=True)
      moved = math.sqrt(float(jnp.sum(new.params["w"] ** 2) + new.params["b"] ** 2))
      raw = float(diag["delta_norm"][0])
      assert moved <= clip * (1 + 1e-5)
      np.testing.assert_allclose(moved, min(raw, clip), rtol=1e-4)
      # Adaptive clipping (count noise 1e-6): under the clip -> fraction 1 -> C shrinks by
      # exp(-0.2 * (1 - 0.5)); over it -> fraction 0 -> C grows by exp(0.1).
      np.testing.assert_allclose(float(new.clip_norm), clip * math.exp(-0.1 if raw <= clip else 0.1), rtol=1e-5)
      assert float(diag["clipped"][0]) == float(raw > clip)


def test_dp_noise_std_ks():
  """With no device reporting, the server step is N(0, (z C / E)^2) noise per coordinate."""
  clip, z, expected, dim = 0.7, 1.3, 4.0, 3000
  dp = alg_lib.DPConfig(clip_norm=clip, noise_multiplier=z, expected_clients=expected)
  alg = alg_lib.make_algorithm("fedavg", loss_fn, alg_lib.ClientConfig(0.1), dp=dp)
  params = {"w": jnp.zeros(dim, jnp.float32), "b": jnp.zeros((), jnp.float32)}
  state = alg.init(params)
  update = jax.jit(alg.server_update)
  sums = {"delta": jax.tree.map(jnp.zeros_like, params)}
  new, _ = update(state, sums, jax.random.key(11))
  sample = np.asarray(new.params["w"])
  std = z * clip / expected
  assert stats.kstest(sample, "norm", args=(0, std)).pvalue > 1e-3
  for wrong in (2 / 3, 3 / 2):
    assert stats.kstest(sample, "norm", args=(0, wrong * std)).pvalue < 1e-6
  other, _ = update(state, sums, jax.random.key(12))
  assert not np.allclose(np.asarray(other.params["w"]), sample)
  # The clip norm scales the noise (adaptive clipping changes it between rounds).
  bigger, _ = update(state.replace(clip_norm=jnp.asarray(2 * clip)), sums, jax.random.key(11))
  np.testing.assert_allclose(np.asarray(bigger.params["w"]), 2 * sample, rtol=1e-5)


def _poisson_gaussian_epsilon(q, sigma, rounds, delta, orders=range(2, 257)):
  """Independent float64 reference: RDP of the Poisson-subsampled Gaussian at integer orders
  (Mironov, Talwar, Zhang 2019, Sec. 3.3: A_a = sum_k C(a,k) (1-q)^(a-k) q^k exp((k^2-k)/(2 sigma^2))),
  composed over rounds, converted with Canonne, Kamath, Steinke 2020 / Balle et al. 2020 (Prop. 12)."""
  best = math.inf
  for a in orders:
    k = np.arange(a + 1)
    log_terms = (np.array([math.lgamma(a + 1) - math.lgamma(j + 1) - math.lgamma(a - j + 1) for j in k])
                 + (a - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * sigma ** 2))
    rdp = rounds * np.logaddexp.reduce(log_terms) / (a - 1)
    best = min(best, rdp + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1))
  return best


def test_poisson_accounting_matches_an_independent_rdp_formula_and_stops_before_overspending():
  acct = privacy.DeviceAccountant("activity_capped", noise_multiplier=1.1, num_devices=5000, clients_per_round=50,
                                  max_probability=0.04, target_epsilon=2.0, delta=1e-5)
  for num_rounds in (1, 10, 60):
    reference = _poisson_gaussian_epsilon(0.04, 1.1, num_rounds, 1e-5)
    # dp_accounting also uses fractional orders, so it may be a little tighter, never looser.
    eps = acct.epsilon(num_rounds)
    assert 0.97 * reference <= eps <= reference * (1 + 1e-9), (num_rounds, eps, reference)
  spent = 0
  with pytest.raises(PrivacyBudgetExceeded, match="past the target epsilon"):
    while True:
      acct.check_next_round()
      acct.record_round()
      spent += 1
  assert acct.epsilon() <= 2.0 < acct.epsilon(spent + 1)
  assert acct.summary()["unit"] == "device"


def test_uniform_accounting_uses_replace_one_and_calibration_round_trips():
  acct = privacy.DeviceAccountant("uniform", noise_multiplier=2.0, num_devices=2000, clients_per_round=40,
                                  max_probability=0.02, target_epsilon=3.0, delta=1e-5)
  assert acct.neighboring_relation == "replace_one"
  assert 0 < acct.epsilon(1) < acct.epsilon(10) < acct.epsilon(40)
  # Replace-one moves the sum by up to 2C: more than add/remove at the same sigma and rate.
  assert acct.epsilon(40) > accounting.dpsgd_epsilon(2.0, 0.02, 40, 1e-5)
  zp = privacy.calibrate_noise_multiplier(3.0, 1e-5, 40, "poisson", num_devices=2000, clients_per_round=40,
                                          max_probability=0.02)
  assert accounting.dpsgd_epsilon(zp, 0.02, 40, 1e-5) <= 3.0 < accounting.dpsgd_epsilon(0.98 * zp, 0.02, 40, 1e-5)
  # The uniform (without replacement, replace-one) calibration round trips through its own accountant.
  zu = privacy.calibrate_noise_multiplier(3.0, 1e-5, 40, "uniform", num_devices=2000, clients_per_round=40,
                                          max_probability=0.02)

  def uniform_eps(z):
    return privacy.DeviceAccountant("uniform", noise_multiplier=z, num_devices=2000, clients_per_round=40,
                                    max_probability=0.02, target_epsilon=3.0, delta=1e-5).epsilon(40)

  assert uniform_eps(zu) <= 3.0 < uniform_eps(0.99 * zu)
  assert zu > zp  # replace-one needs more noise than add/remove at the same rate


@pytest.mark.parametrize("kwargs, message", [
    (dict(scheme="activity"), "no valid DP amplification analysis"),
    (dict(scheme="uniform", accountant="pld"), "only analysed by the 'rdp' accountant"),
    (dict(scheme="poisson", dropout=0.1, dropout_mode="fixed"), "use dropout mode 'independent'"),
    (dict(scheme="uniform", dropout=0.1), "not a fixed-size sample"),
    (dict(scheme="round_robin"), "must be one of"),
])
def test_invalid_dp_schemes_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    privacy.check_scheme(kwargs.pop("scheme"), **kwargs)


def test_invalid_algorithm_settings_are_refused():
  client = alg_lib.ClientConfig(0.1)
  dp = alg_lib.DPConfig(1.0, 1.0, 10.0)
  with pytest.raises(ValueError, match="DP with scaffold"):
    alg_lib.make_algorithm("scaffold", loss_fn, client, dp=dp)
  with pytest.raises(ValueError, match="fedprox needs prox_mu"):
    alg_lib.make_algorithm("fedprox", loss_fn, client)
  with pytest.raises(ValueError, match="fedopt needs an adaptive server optimizer"):
    alg_lib.make_algorithm("fedopt", loss_fn, client)
  with pytest.raises(ValueError, match="count_noise_std"):
    privacy.split_noise_multiplier(1.0, 0.4)


def test_control_variate_store_is_sparse_and_round_trips():
  params = _params()
  store = rounds.ControlVariateStore(params)
  ids = np.array([7, 99_999, 3])
  deltas = {"w": np.ones((3, DIM), np.float32), "b": np.arange(3, dtype=np.float32)}
  store.add(ids, deltas, np.array([True, True, False]))
  store.add(ids, deltas, np.array([True, False, False]))
  assert len(store) == 2
  got = store.gather(np.array([7, 3, 99_999, 5]))
  np.testing.assert_array_equal(got["w"][:, 0], [2, 0, 1, 0])
  np.testing.assert_array_equal(got["b"], [0, 0, 1, 0])
  other = rounds.ControlVariateStore(params)
  other.load_state_dict(store.state_dict())
  np.testing.assert_array_equal(other.gather(np.array([7]))["w"], got["w"][:1])


@pytest.mark.parametrize("opt_name", ["adam", "yogi", "adagrad"])
def test_fedopt_server_step_is_the_optimizer_on_minus_the_mean_delta(opt_name):
  alg = alg_lib.make_algorithm("fedopt", loss_fn, alg_lib.ClientConfig(0.1), server_optimizer_name=opt_name,
                               server_learning_rate=0.05)
  state = alg.init(_params())
  reference = {"adam": optax.adam(0.05, b1=0.9, b2=0.99, eps=1e-3),
               "yogi": optax.yogi(0.05, b1=0.9, b2=0.99, eps=1e-3),
               "adagrad": optax.adagrad(0.05, eps=1e-3)}[opt_name]
  params, opt_state = _params(), reference.init(_params())
  rng = np.random.default_rng(0)
  for _ in range(3):
    mean_delta = {"w": jnp.asarray(rng.normal(size=DIM), jnp.float32), "b": jnp.asarray(rng.normal(), jnp.float32)}
    state, _ = alg.server_update(state, {"delta": mean_delta}, jax.random.key(0))
    updates, opt_state = reference.update(jax.tree.map(jnp.negative, mean_delta), opt_state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(np.asarray(state.params["w"]), np.asarray(params["w"]), rtol=1e-6)
  assert int(state.round) == 3


def _tiny_config():
  from projects.fedlearn.configs import dp  # pylint: disable=import-outside-toplevel
  return dp.get_config("tiny")


@pytest.mark.parametrize("field, value, message", [
    ("fl.clients_per_round", 0, "config.fl.clients_per_round must be an integer >= 1"),
    ("fl.algorithm", "fedsgd", "config.fl.algorithm must be one of"),
    ("fl.client_learning_rate", -0.1, "config.fl.client_learning_rate must be a number in (0"),
    ("selection.scheme", "round_robin", "config.selection.scheme must be one of"),
    ("selection.dropout", 1.0, "config.selection.dropout must be a number in [0, 1)"),
    ("partition.scheme", "shards", "config.partition.scheme must be one of"),
    ("dp.delta", 2.0, "config.dp.delta must be a number in (0, 1)"),
    ("dp.count_noise_std", 0.3, "config.dp.count_noise_std (default: expected clients / 20) must exceed"),
    ("data.max_examples_per_client", 0, "config.data.max_examples_per_client must be an integer >= 1"),
])
def test_bad_config_values_are_rejected_before_any_work(field, value, message, tmp_path):
  from projects.fedlearn import simulation as sim  # pylint: disable=import-outside-toplevel
  config = _tiny_config()
  section, key = field.split(".")
  config[section][key] = value
  if section == "dp":
    config.runs.dp_fedavg.dp[key] = value  # The sub-run's own override wins over the base value.
  workdir = str(tmp_path / "never_created")
  with pytest.raises(ValueError, match=re.escape(message)):
    sim.run(config, workdir)
  assert not (tmp_path / "never_created").exists()


def test_dp_with_an_invalid_scheme_is_rejected_naming_the_field(tmp_path):
  from projects.fedlearn import simulation as sim  # pylint: disable=import-outside-toplevel
  config = _tiny_config()
  config.runs.dp_fedavg.selection.scheme = "activity"
  with pytest.raises(ValueError, match=r"run 'dp_fedavg': config\.selection\.scheme='activity' with dp\.enabled"):
    sim.run(config, str(tmp_path / "w"))
  config = _tiny_config()
  config.runs.dp_fedavg.fl = {"algorithm": "scaffold"}
  with pytest.raises(ValueError, match=r"config\.fl\.algorithm must not be scaffold with dp\.enabled"):
    sim.run(config, str(tmp_path / "w"))


# --------------------------------------------------------------------------------------
# Numerics that must not depend on the machine, and the privacy review's defects.
# --------------------------------------------------------------------------------------


def test_intent_model_gradient_has_no_max_reduction():
  """The DP-FedAvg NaN on some CPUs: jnp.max pooling's gradient divides by a count of positions equal
  to the max, which was 0 when XLA recomputed the input with other rounding (opt level 0)."""
  from projects.fedlearn import tasks  # pylint: disable=import-outside-toplevel
  task = tasks.make_task("intent", vocab_size=40, num_intents=5, max_len=8, embed_dim=4, hidden_dim=4)
  params = task.init(jax.random.key(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, size=(6, 8)), jnp.int32)
  intents = jnp.arange(6) % 5
  # The model itself (the loss's logsumexp takes its max under stop_gradient, which is harmless).
  jaxpr = str(jax.make_jaxpr(task.apply)(params, tokens))
  assert "reduce_max" not in jaxpr and "argmax" in jaxpr  # max pooling without jnp.max
  grads = jax.grad(lambda p: jnp.sum(task.example_losses(p, tokens, intents)))(params)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


def test_dp_round_with_no_device_or_zero_norm_updates_is_finite():
  """An empty Poisson round and devices whose update is exactly 0 (0/0 in the clip factor)."""
  clients, _ = _clients(num=6, seed=8)
  empty = alg_lib.Clients(clients.data, np.zeros_like(clients.mask), clients.ids)  # every delta is 0
  for weights in (np.zeros(6, np.float32), np.ones(6, np.float32)):
    state, new, diag = _dp_round(0.5, 1.0, empty, weights, jax.random.key(4), expected=3.0, adaptive=True)
    for leaf in jax.tree.leaves(new):
      assert np.all(np.isfinite(np.asarray(leaf)))
    np.testing.assert_array_equal(np.asarray(diag["delta_norm"]), 0.0)
    assert not np.allclose(np.asarray(new.params["w"]), 0.0)  # the noise is still added
    # Zero-norm devices count as unclipped: centered count sum (1 - 1/2) over devices, / E, + 1/2.
    fraction = float(diag["server/unclipped_fraction"])
    assert abs(fraction - (0.5 * weights.sum() / 3.0 + 0.5)) < 1e-5


def test_dp_non_finite_client_update_contributes_zero_and_the_host_can_see_it():
  clients, n = _clients(num=6, seed=9)
  x, y = clients.data
  x = x.copy()
  x[2, 0, 0] = np.inf  # a real example (n[2] > 0) with an infinite feature: delta is NaN
  assert n[2] > 0
  bad = alg_lib.Clients((x, y), clients.mask, clients.ids)
  weights = np.ones(6, np.float32)
  _, new, diag = _dp_round(0.5, 1.0, bad, weights, jax.random.key(5), expected=3.0)
  assert not np.isfinite(float(diag["delta_norm"][2]))
  for leaf in jax.tree.leaves(new):
    assert np.all(np.isfinite(np.asarray(leaf)))
  # Contributes exactly what a weight-0 device does.
  _, without, _ = _dp_round(0.5, 1.0, bad, np.where(np.arange(6) == 2, 0.0, 1.0).astype(np.float32),
                            jax.random.key(5), expected=3.0)
  np.testing.assert_allclose(np.asarray(new.params["w"]), np.asarray(without.params["w"]), rtol=1e-6, atol=1e-7)


def test_dp_weights_must_be_zero_or_one():
  clients, _ = _clients(num=6, seed=10)
  alg, apply = _dp_apply(1.0, 3.0, False)
  state = alg.init({"w": jnp.zeros(DIM, jnp.float32), "b": jnp.zeros((), jnp.float32)})
  weights = np.array([1, 0, 2, 1, 1, 0], np.float32)  # a weight of 2 doubles the sensitivity
  with pytest.raises(ValueError, match="weights must be 0 or 1.*weight 2 is 2.0"):
    alg.apply(state, clients, weights, jax.random.key(0))
  with pytest.raises(ValueError, match="weights must be 0 or 1"):
    alg_lib.sequential_apply(alg, state, clients, weights, jax.random.key(0))
  with pytest.raises(ValueError, match="weights must be 0 or 1"):
    rounds.build_round(alg, make_mesh())(state, clients, np.full(6, 0.5, np.float32), jax.random.key(0))
  alg_lib.check_dp_weights(np.array([0.0, 1.0, 1.0]))  # valid


@pytest.mark.parametrize("kwargs, message", [
    (dict(adaptive=True), "count_noise_std > 0"),
    (dict(adaptive=True, count_noise_std=0.0), "count_noise_std > 0"),
    (dict(clip_norm=0.0), "clip_norm and expected_clients must be > 0"),
    (dict(noise_multiplier=-1.0), "noise_multiplier must be a finite number >= 0"),
    (dict(target_quantile=1.5), "target_quantile must be in"),
])
def test_dp_config_has_no_noiseless_default(kwargs, message):
  args = {"clip_norm": 1.0, "noise_multiplier": 1.0, "expected_clients": 10.0, **kwargs}
  with pytest.raises(ValueError, match=message):
    alg_lib.DPConfig(**args)
  assert alg_lib.DPConfig(1.0, 1.0, 10.0, adaptive=True, count_noise_std=0.5).count_noise_std == 0.5


def test_dp_activity_capped_probabilities_depend_only_on_each_devices_own_data():
  n = np.array([0, 1, 2, 3, 5, 8, 13, 400, 40, 7], np.float64)
  m, cap_ratio = 3, 2.0
  config = _tiny_config()
  config.data.num_devices, config.fl.clients_per_round = len(n), m
  config.selection.scheme, config.selection.cap_ratio = "activity_capped", cap_ratio
  config.dp.enabled = True
  rate = simulation._selection_rate(config, len(n))  # pylint: disable=protected-access
  assert rate == pytest.approx(m / (len(n) * config.data.mean_examples))
  p = selection.inclusion_probabilities("activity_capped", n, m, cap_ratio=cap_ratio, rate=rate)
  cap = cap_ratio * m / len(n)
  np.testing.assert_allclose(p, np.minimum(cap, rate * n))
  # Removing a device (the one with 400 examples) leaves every other device's probability as it
  # was (same configured N and rate); water filling moves them all, which is why DP never uses it.
  q = selection.rate_capped_probabilities(np.delete(n, 7), rate, cap)
  np.testing.assert_array_equal(q, np.delete(p, 7))
  filled = selection.inclusion_probabilities("activity_capped", n, m, cap_ratio=cap_ratio)
  refilled = selection.capped_probabilities(np.delete(n, 7), m, cap)
  assert not np.allclose(refilled, np.delete(filled, 7))
  # Accounting is at q = cap, from configured quantities, whatever the data.
  assert privacy.sampling_probability("activity_capped", num_devices=len(n), clients_per_round=m,
                                      cap_ratio=cap_ratio) == pytest.approx(cap)
  # Horvitz-Thompson weights stay unbiased with the fixed rate.
  values = np.random.default_rng(0).normal(size=len(n))
  target = np.sum(n * values) / n.sum()
  gen = np.random.default_rng(1)
  draws = [np.sum(sel.weights * values[sel.ids]) for sel in
           (selection.select("activity_capped", n, m, gen, cap_ratio=cap_ratio, rate=rate) for _ in range(4000))]
  assert abs(np.mean(draws) - target) < 4 * np.std(draws) / math.sqrt(len(draws))


def test_dp_with_a_re_dealt_partition_is_refused(tmp_path):
  config = _tiny_config()
  config.runs.dp_fedavg.partition = {"scheme": "dirichlet"}
  with pytest.raises(ValueError, match=r"run 'dp_fedavg': config\.partition\.scheme='dirichlet' with dp\.enabled: .*"
                                       r"one device's examples land in many clients"):
    simulation.run(config, str(tmp_path / "w"))
  with pytest.raises(ValueError, match="use partition scheme 'natural' under DP"):
    privacy.check_partition("iid")
  privacy.check_partition("natural")


def test_dp_randomness_is_secret_unless_explicitly_insecure():
  config = _tiny_config()
  _, merged = validation.sub_runs(config)[2]
  assert merged.dp.enabled and merged.dp.insecure_reproducible_noise is False
  from_seed = Streams(merged.seed).key("fedlearn/rounds")
  runs = [simulation.round_randomness(merged) for _ in range(2)]
  for _, key, sel_seed, rand in runs:
    assert rand.describe() == "os-secret" and sel_seed != merged.seed
    assert not np.array_equal(jax.random.key_data(key), jax.random.key_data(from_seed))
  assert not np.array_equal(jax.random.key_data(runs[0][1]), jax.random.key_data(runs[1][1]))
  assert runs[0][2] != runs[1][2]
  merged.dp.insecure_reproducible_noise = True
  a, b = simulation.round_randomness(merged), simulation.round_randomness(merged)
  assert a[3].describe() == "reproducible-insecure" and a[2] == b[2]
  np.testing.assert_array_equal(jax.random.key_data(a[1]), jax.random.key_data(b[1]))
  # Without DP everything comes from the seed's named streams; the init key even with DP.
  _, plain = validation.sub_runs(config)[1]
  init_key, round_key, sel_seed, rand = simulation.round_randomness(plain)
  streams = Streams(plain.seed)
  assert sel_seed == streams.seed("fedlearn/selection") and rand is None
  np.testing.assert_array_equal(jax.random.key_data(round_key), jax.random.key_data(streams.key("fedlearn/rounds")))
  np.testing.assert_array_equal(jax.random.key_data(init_key), jax.random.key_data(streams.key("fedlearn/init")))
  np.testing.assert_array_equal(jax.random.key_data(runs[0][0]),
                                jax.random.key_data(Streams(merged.seed).key("fedlearn/init")))


@pytest.mark.slow
def test_scaffold_resume_restores_control_variates_through_orbax(tmp_path):
  """A SCAFFOLD run interrupted after round 2 resumes (server state and the host store of client
  control variates, both from the orbax checkpoint) to exactly the uninterrupted result."""
  import shutil  # pylint: disable=import-outside-toplevel
  config = _tiny_config()
  config.runs = {"scaffold": {"fl": {"algorithm": "scaffold"}, "selection": {"scheme": "uniform"}}}
  config.run_order = ("scaffold",)
  config.progress = False
  first = str(tmp_path / "first")
  full = simulation.run(config, first)
  assert sorted(os.listdir(os.path.join(first, "scaffold", "checkpoints"))) == ["2", "4"]
  assert not [f for f in os.listdir(os.path.join(first, "scaffold")) if f.endswith(".npz")]
  resumed = str(tmp_path / "resumed")
  shutil.copytree(first, resumed)
  shutil.rmtree(os.path.join(resumed, "scaffold", "checkpoints", "4"))
  os.remove(os.path.join(resumed, "scaffold", "done.json"))
  again = simulation.run(config, resumed)
  a, b = full["runs"][0], again["runs"][0]
  assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-6)
  assert b["test_accuracy"] == pytest.approx(a["test_accuracy"], abs=1e-9)
  # Without the control variates the resumed rounds differ: the check can fail.
  shutil.rmtree(os.path.join(resumed, "scaffold", "checkpoints", "4"))
  os.remove(os.path.join(resumed, "scaffold", "done.json"))
  store_state = rounds.ControlVariateStore.load_state_dict
  rounds.ControlVariateStore.load_state_dict = lambda self, state: None
  try:
    lost = simulation.run(config, resumed)["runs"][0]
  finally:
    rounds.ControlVariateStore.load_state_dict = store_state
  assert lost["test_loss"] != pytest.approx(a["test_loss"], rel=1e-6)
