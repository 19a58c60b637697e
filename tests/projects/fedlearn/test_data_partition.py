"""fedlearn partitions: exact partitions of the examples and the skew each scheme promises."""

import dataclasses

import numpy as np
import pytest

from projects.fedlearn import data as fd
from projects.fedlearn.partition import SCHEMES, clusters, partition


@pytest.fixture(scope="module")
def pop():
  d = fd.generate_population(400, seed=0, mean_examples=12, max_examples_per_device=200)
  # Row ids in `periods` (carried through partitions) to check exactness row by row.
  return dataclasses.replace(d, periods=np.arange(len(d.tokens), dtype=np.int32))


def _hists(d, labels, num):
  dev = d.device_of_rows()
  counts = np.zeros((d.num_devices, num))
  np.add.at(counts, (dev, labels), 1)
  return counts / counts.sum(1, keepdims=True)


def _entropy(p):
  return -(np.where(p > 0, p * np.log(np.maximum(p, 1e-300)), 0)).sum(-1)


def _mean_tv(d, labels, num):
  glob = np.bincount(labels, minlength=num) / len(labels)
  return np.mean(0.5 * np.abs(_hists(d, labels, num) - glob).sum(1))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("num_clients", [37, 700])
def test_clients_partition_the_examples_exactly(pop, scheme, num_clients):
  kwargs = {"alpha": 0.05, "beta": 0.1, "num_clusters": 6} if num_clients == 700 else {}
  p = partition(pop, scheme, num_clients=num_clients, seed=1, **kwargs)
  want = pop.num_devices if scheme == "natural" else num_clients
  assert p.num_devices == want
  ids = p.periods  # every row id exactly once, with its own tokens and intent
  np.testing.assert_array_equal(np.sort(ids), np.arange(len(pop.tokens)))
  np.testing.assert_array_equal(p.tokens, pop.tokens[ids])
  np.testing.assert_array_equal(p.intents, pop.intents[ids])
  assert p.num_examples().min() >= 1, "no client may be empty"
  # Original order within each client.
  assert (np.diff(ids)[np.diff(p.device_of_rows()) == 0] > 0).all()


def test_natural_is_the_data_and_partitions_are_seeded(pop):
  assert partition(pop, "natural") is pop
  assert partition(pop, "iid").num_devices == pop.num_devices
  a = partition(pop, "dirichlet", num_clients=50, alpha=0.3, seed=4)
  b = partition(pop, "dirichlet", num_clients=50, alpha=0.3, seed=4)
  c = partition(pop, "dirichlet", num_clients=50, alpha=0.3, seed=5)
  np.testing.assert_array_equal(a.periods, b.periods)
  np.testing.assert_array_equal(a.offsets, b.offsets)
  assert not np.array_equal(a.offsets, c.offsets)


def test_iid_clients_follow_the_global_label_distribution(pop):
  num = len(pop.intent_names)
  iid = partition(pop, "iid", num_clients=20, seed=0)
  sizes = iid.num_examples()
  assert sizes.max() - sizes.min() <= 1
  # Multinomial sampling noise of ~240-example clients: TV well under 0.15; natural devices are far.
  assert _mean_tv(iid, iid.intents, num) < 0.15
  assert _mean_tv(pop, pop.intents, num) > 2 * _mean_tv(iid, iid.intents, num)


def test_smaller_alpha_gives_more_label_skew(pop):
  num = len(pop.intent_names)
  entropies = []
  for alpha in (0.03, 0.3, 3.0, 300.0):
    p = partition(pop, "dirichlet", num_clients=40, alpha=alpha, seed=0)
    entropies.append(np.mean(_entropy(_hists(p, p.intents, num))))
  assert np.all(np.diff(entropies) > 0.05), entropies
  iid = partition(pop, "iid", num_clients=40, seed=0)
  assert abs(entropies[-1] - np.mean(_entropy(_hists(iid, iid.intents, num)))) < 0.1
  assert entropies[0] < 0.5 * entropies[-1]


def test_smaller_beta_gives_more_size_skew(pop):
  cvs = []
  for beta in (0.1, 1.0, 100.0):
    sizes = partition(pop, "quantity", num_clients=40, beta=beta, seed=0).num_examples()
    cvs.append(sizes.std() / sizes.mean())
  assert cvs[0] > cvs[1] > cvs[2] and cvs[2] < 0.2 and cvs[0] > 1.0
  # Sizes are skewed, labels are not: big quantity-skew clients look like the population.
  num = len(pop.intent_names)
  q = partition(pop, "quantity", num_clients=10, beta=1.0, seed=0)
  big = q.num_examples() >= 200
  glob = np.bincount(pop.intents, minlength=num) / len(pop.intents)
  assert big.any() and np.all(0.5 * np.abs(_hists(q, q.intents, num)[big] - glob).sum(1) < 0.15)


def test_cluster_partition_concentrates_clients_on_few_clusters(pop):
  num_clusters = 8
  labels = clusters(pop, num_clusters, seed=0)
  assert set(np.unique(labels)) == set(range(num_clusters))
  # The embedding captures meaning: clusters are far purer in intent than chance (the largest
  # intent's share, which is what random clusters would give).
  purity = sum(np.bincount(pop.intents[labels == c]).max() for c in range(num_clusters)) / len(labels)
  assert purity > 2 * np.bincount(pop.intents).max() / len(pop.intents)
  skewed = partition(pop, "cluster", num_clients=30, alpha=0.05, num_clusters=num_clusters, seed=0)
  iid = partition(pop, "iid", num_clients=30, seed=0)
  h_skewed = _entropy(_hists(skewed, labels[skewed.periods], num_clusters)).mean()
  h_iid = _entropy(_hists(iid, labels[iid.periods], num_clusters)).mean()
  assert h_skewed < 0.5 * h_iid
  # Most of a cluster-skewed client's examples come from its top two clusters.
  top2 = np.sort(_hists(skewed, labels[skewed.periods], num_clusters), 1)[:, -2:].sum(1)
  assert np.median(top2) > 0.8


@pytest.mark.parametrize("kwargs,name", [
    ({"scheme": "random"}, "scheme"), ({"num_clients": 0}, "num_clients"),
    ({"num_clients": 10**7}, "num_clients"), ({"alpha": 0.0}, "alpha"), ({"beta": -1.0}, "beta"),
    ({"scheme": "cluster", "num_clusters": 0}, "num_clusters")])
def test_bad_arguments_name_the_argument(pop, kwargs, name):
  args = {"scheme": "dirichlet", "num_clients": 10, **kwargs}
  with pytest.raises(ValueError, match=name):
    partition(pop, **args)
