"""An empirical audit of this repository's DP-SGD (`libs.dp`) against its accountant.

Many training runs of the REAL code path (`PoissonSampler` for the batches,
`clipped_grad` for the per-example clipped sum, `dpsgd` for the Gaussian noise and the SGD
step) on a dataset built so that one example, the canary, is as easy to detect as the
guarantee allows: a linear model `loss(theta, x) = -<theta, x>` whose per-example gradient is
`-x`. The canary is `x = canary_norm * C * e_0` (clipped down to C by correct code); the
other examples lie in the orthogonal coordinates, so coordinate 0 of the model moves only by
the canary's clipped gradient and the noise. Half of the runs train with the canary, half
without (add/remove-one neighbours, the relation the accountant analyses), all vmapped.

The auditor then tests membership from
  * `final`: the final model's coordinate 0 (a black-box-of-the-weights adversary), or
  * `intermediate`: every step's model (the white-box adversary DP-SGD's analysis assumes):
    the Neyman-Pearson log-likelihood ratio of the per-step updates of coordinate 0,
    sum_t log(1 - q + q exp((y_t / C - 1/2) / sigma^2)), with y_t the step's noisy gradient sum
    along e_0 and sigma the CLAIMED noise multiplier, and the largest y_t (which needs no
    sigma: a broken implementation's real noise differs from the claim); the best statistic
    and threshold are chosen on half of the runs,
and `libs.audit.stats.audit_epsilon` turns its error rates into an epsilon lower bound with
Clopper-Pearson confidence. A correct implementation gives a lower bound at most the
accountant's epsilon (up to the confidence level); the `broken_noise` (noise / 4) and
`broken_clip` (no clipping) variants, which claim the same epsilon, must exceed it.

Example:
  >>> setup = CanarySetup(noise_multiplier=calibrated_sigma)
  >>> out = run_trials(setup, "dpsgd", num_runs=4000, rand=DpRandomness())
  >>> stats.audit_epsilon(out.scores("intermediate", setup, True), out.scores("intermediate", setup, False),
  ...                     delta=1e-5, rng=np.random.default_rng(0))
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from libs import accounting
from libs.audit import stats
from libs.dp import clipping
from libs.dp import noise as noise_lib
from libs.dp import sampling
from libs.dp.randomness import DpRandomness

VARIANTS = ("dpsgd", "broken_noise", "broken_clip")
OBSERVATIONS = ("final", "intermediate")
# The membership statistics of each observation (see `Trials.scores`).
STATISTICS = {"final": ("final",), "intermediate": ("llr", "max_step", "final")}


@dataclasses.dataclass(frozen=True)
class CanarySetup:
  """The audited training run.

  Attributes:
    noise_multiplier: the claimed sigma (noise std / C on the clipped sum).
    num_examples: dataset size with the canary.
    dim: model dimension (>= 2: coordinate 0 is the canary's).
    sampling_probability: Poisson sampling rate q.
    steps: DP-SGD steps.
    l2_clip_norm: C.
    learning_rate: SGD step size.
    canary_norm: the canary's raw gradient norm in units of C (> 1: correct code clips it).
    delta: the delta of the claimed guarantee.
  """
  noise_multiplier: float
  num_examples: int = 64
  dim: int = 4
  sampling_probability: float = 0.1
  steps: int = 20
  l2_clip_norm: float = 1.0
  learning_rate: float = 1.0
  canary_norm: float = 10.0
  delta: float = 1e-5

  def __post_init__(self):
    if self.dim < 2 or self.num_examples < 2 or self.steps < 1:
      raise ValueError(f"need dim >= 2, num_examples >= 2 and steps >= 1, got {self.dim}, "
                       f"{self.num_examples}, {self.steps}")
    if not self.noise_multiplier > 0:
      raise ValueError(f"an audit needs a noisy mechanism: noise_multiplier > 0, got {self.noise_multiplier}")
    if not 0 < self.sampling_probability <= 1 or not self.canary_norm > 0 or not self.l2_clip_norm > 0:
      raise ValueError("need 0 < sampling_probability <= 1, canary_norm > 0 and l2_clip_norm > 0")

  @property
  def claimed_epsilon(self) -> float:
    """The accountant's epsilon (RDP, add/remove-one example) at `delta`."""
    return accounting.dpsgd_epsilon(self.noise_multiplier, self.sampling_probability, self.steps, self.delta)

  def dataset(self, seed: int = 0) -> np.ndarray:
    """[num_examples, dim]: row 0 the canary, the others orthogonal to it with norm 2C."""
    rng = np.random.default_rng(seed)
    x = np.zeros((self.num_examples, self.dim), np.float32)
    x[0, 0] = self.canary_norm * self.l2_clip_norm
    other = rng.normal(size=(self.num_examples - 1, self.dim - 1))
    x[1:, 1:] = 2 * self.l2_clip_norm * other / np.linalg.norm(other, axis=1, keepdims=True)
    return x


@dataclasses.dataclass(frozen=True)
class Trials:
  """Coordinate 0 of every run's model after every step: [steps + 1, runs] per side."""
  member: np.ndarray
  non_member: np.ndarray

  def scores(self, observation: str, setup: CanarySetup, member: bool) -> np.ndarray:
    """[statistics, runs] membership scores of one side (higher: more likely with the canary).

    "final": coordinate 0 of the final model. With intermediate models also "llr" (the
    Neyman-Pearson log-likelihood ratio of the per-step updates under the CLAIMED sigma) and
    "max_step" (the largest per-step update, which needs no sigma); `STATISTICS` names the rows.
    """
    if observation not in OBSERVATIONS:
      raise ValueError(f"observation must be one of {OBSERVATIONS}, got {observation!r}")
    traj = np.asarray(self.member if member else self.non_member, np.float64)
    if observation == "final":
      return traj[-1][None]
    q, sigma, c = setup.sampling_probability, setup.noise_multiplier, setup.l2_clip_norm
    # The step's noisy clipped sum along e_0: update = lr * sum / (q N) (the loss gradient is -x).
    y = np.diff(traj, axis=0) * (q * setup.num_examples) / setup.learning_rate
    log_in = np.log(q) + (y / c - 0.5) / sigma**2
    log_out = np.log1p(-q) if q < 1 else -np.inf
    llr = np.logaddexp(log_out, log_in).sum(axis=0)
    return np.stack([llr, y.max(axis=0), traj[-1]])


def _loss(params, x):
  return -jnp.sum(x @ params)


def run_trials(setup: CanarySetup, variant: str, num_runs: int, *, rand: DpRandomness) -> Trials:
  """`num_runs` vmapped DP-SGD runs with the canary and `num_runs` without.

  `variant`: "dpsgd" (the library as shipped), "broken_noise" (noise multiplier / 4) or
  "broken_clip" (per-example clipping disabled); every variant claims `setup.claimed_epsilon`.
  """
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  if num_runs < 4:
    raise ValueError(f"num_runs must be >= 4, got {num_runs}")
  sigma = setup.noise_multiplier / 4 if variant == "broken_noise" else setup.noise_multiplier
  clip = float("inf") if variant == "broken_clip" else setup.l2_clip_norm
  n, q = setup.num_examples, setup.sampling_probability
  x = jnp.asarray(setup.dataset())
  grad_fn = clipping.clipped_grad(_loss, l2_clip_norm=clip)
  expected = q * n

  def make_opt(key):
    # Noise std is sigma * C (the claimed sensitivity C, whatever the clipping did).
    return noise_lib.dpsgd(setup.learning_rate, l2_clip_norm=setup.l2_clip_norm, noise_multiplier=sigma,
                           expected_batch_size=expected, key=key)

  opt = make_opt(jax.random.key(0))  # Its update reads the key from the state only.

  @jax.jit
  def init(keys):
    params = jnp.zeros((keys.shape[0], setup.dim), jnp.float32)
    return params, jax.vmap(lambda p, k: make_opt(k).init(p))(params, keys)

  @jax.jit
  def step(params, opt_state, weights):
    def one(p, s, w):
      g = grad_fn(p, x, example_weights=w)
      updates, s = opt.update(g, s, p)
      return optax.apply_updates(p, updates), s
    return jax.vmap(one)(params, opt_state, weights)

  trajectories = []
  for side, with_canary in (("member", True), ("non_member", False)):
    keys = jax.random.split(rand.key(f"audit/{variant}/{side}/noise"), num_runs)
    samplers = [sampling.PoissonSampler(n, q, seed=rand.seed(f"audit/{variant}/{side}/{r}"))
                for r in range(num_runs)]
    params, opt_state = init(keys)
    traj = [np.asarray(params[:, 0])]
    for t in range(setup.steps):
      weights = np.zeros((num_runs, n), np.float32)
      for r, sampler in enumerate(samplers):
        weights[r, sampler.indices(t)] = 1.0
      if not with_canary:
        weights[:, 0] = 0.0  # The neighbouring dataset without the canary.
      params, opt_state = step(params, opt_state, jnp.asarray(weights))
      traj.append(np.asarray(params[:, 0]))
    trajectories.append(np.stack(traj))
  return Trials(*trajectories)


def audit(setup: CanarySetup, variant: str, num_runs: int, *, rand: DpRandomness, alpha: float = 0.05,
          observation: str = "intermediate", seed: int = 0) -> dict:
  """One audit row: {"variant", "claimed_epsilon", "empirical_epsilon_lower", ...}.

  `seed` only splits the trials into threshold selection and evaluation (not DP randomness).
  """
  trials = run_trials(setup, variant, num_runs, rand=rand)
  result = stats.audit_epsilon(trials.scores(observation, setup, True), trials.scores(observation, setup, False),
                               delta=setup.delta, alpha=alpha, rng=np.random.default_rng(seed))
  claimed = setup.claimed_epsilon
  return {"variant": variant, "claimed_epsilon": claimed, "empirical_epsilon_lower": result.epsilon_lower,
          "violates_claim": result.epsilon_lower > claimed, "observation": observation,
          "statistic": STATISTICS[observation][result.statistic], "unit": "example",
          "accountant": "rdp", "delta": setup.delta, "confidence": 1 - alpha, "runs_per_side": num_runs,
          "fpr": result.fpr, "fnr": result.fnr, "noise_multiplier_claimed": setup.noise_multiplier,
          "sampling_probability": setup.sampling_probability, "steps": setup.steps}
