"""Re-partitions a population's examples into clients (FedNLP / Flower partitioners).

Schemes:
  * "natural": one client per device (the data unchanged), the realistic setting.
  * "iid": examples shuffled and dealt into `num_clients` equal-size clients.
  * "dirichlet": label skew (FedNLP, Flower's DirichletPartitioner): for each intent, the
    examples are split across clients by proportions ~ Dirichlet(alpha); small alpha = skew.
  * "quantity": quantity skew (FedNLP): client sizes ~ Dirichlet(beta), examples IID.
  * "cluster": feature skew (FedNLP's clustering partition): k-means on TF-IDF embeddings of
    the token bags reduced by TruncatedSVD (scikit-learn), then label skew with
    Dirichlet(alpha) over the clusters instead of intents.

Every example lands in exactly one client. Empty clients are not allowed: after a Dirichlet
draw, each empty client receives one example taken from the largest clients (the deepest
rows of clients with more than one example). Rows within a client keep their original order
(chronological within a device). `num_clients` defaults to the number of devices.

Example:
  >>> data = generate_population(1000, seed=0)
  >>> skewed = partition(data, "dirichlet", num_clients=100, alpha=0.1, seed=0)
  >>> skewed.num_devices, skewed.num_examples().sum() == data.num_examples().sum()
  (100, True)
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from libs.train import rng as rng_lib
from projects.fedlearn.data import FederatedData

SCHEMES = ("natural", "iid", "dirichlet", "quantity", "cluster")


def _sklearn_seed(streams: rng_lib.Streams, purpose: str) -> int:
  """scikit-learn's `random_state` wants an int below 2**32."""
  return streams.seed(purpose) >> 32


def _group(data: FederatedData, client: np.ndarray, num_clients: int) -> FederatedData:
  """Rows grouped by client id (stable: original order within a client)."""
  rows = np.argsort(client, kind="stable")
  return data.regroup(rows, np.bincount(client, minlength=num_clients))


def _fill_empty(client: np.ndarray, num_clients: int, rng: np.random.Generator) -> np.ndarray:
  """Moves one row into each empty client, from the clients with the most rows."""
  counts = np.bincount(client, minlength=num_clients)
  empty = np.nonzero(counts == 0)[0]
  if not empty.size:
    return client
  # Rank of each row inside its client (0 = first); rows of rank r exist only in clients with
  # more than r rows, so the highest ranks come from the largest clients, and rank 0 stays.
  order = np.argsort(client, kind="stable")
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  rank = np.empty(len(client), np.int64)
  rank[order] = np.arange(len(client)) - starts[client[order]]
  donors = np.lexsort((rng.random(len(client)), -rank))[:empty.size]
  client = client.copy()
  client[donors] = empty
  return client


def _dirichlet_over_labels(labels: np.ndarray, num_clients: int, alpha: float,
                           rng: np.random.Generator) -> np.ndarray:
  """Client of each row: each label's rows split by proportions ~ Dirichlet(alpha)."""
  client = np.empty(len(labels), np.int64)
  for label in np.unique(labels):
    rows = rng.permutation(np.nonzero(labels == label)[0])
    p = rng.dirichlet(np.full(num_clients, alpha))
    cuts = (np.cumsum(p)[:-1] * len(rows)).astype(np.int64)
    client[rows] = np.repeat(np.arange(num_clients), np.diff(np.concatenate([[0], cuts, [len(rows)]])))
  return client


def embed(data: FederatedData, *, dim: int = 32, seed: int = 0, fit_size: int = 20000) -> np.ndarray:
  """Text embeddings [total_examples, dim]: TF-IDF of token bags reduced by TruncatedSVD
  (both fit on at most `fit_size` random examples, then applied to all)."""
  from sklearn.decomposition import TruncatedSVD  # pylint: disable=import-outside-toplevel
  from sklearn.feature_extraction.text import TfidfTransformer  # pylint: disable=import-outside-toplevel
  n = len(data.tokens)
  row, col = np.nonzero(data.tokens > 3)  # words only, no padding or markers
  bags = scipy.sparse.csr_matrix((np.ones(len(row), np.float32), (row, data.tokens[row, col])),
                                 shape=(n, len(data.vocab)))  # duplicates are summed: counts
  streams = rng_lib.Streams(seed)
  rng = streams.numpy("fedlearn/embed_fit_sample")
  fit = bags if n <= fit_size else bags[np.sort(rng.choice(n, fit_size, replace=False))]
  tfidf = TfidfTransformer(sublinear_tf=True).fit(fit)
  dim = max(1, min(dim, len(data.vocab) - 1, fit.shape[0] - 1))
  svd = TruncatedSVD(dim, random_state=_sklearn_seed(streams, "fedlearn/embed_svd")).fit(tfidf.transform(fit))
  return svd.transform(tfidf.transform(bags)).astype(np.float32)


def clusters(data: FederatedData, num_clusters: int, *, seed: int = 0, fit_size: int = 20000) -> np.ndarray:
  """k-means cluster id of each example (fit on at most `fit_size` examples, then predict)."""
  from sklearn.cluster import KMeans  # pylint: disable=import-outside-toplevel
  from threadpoolctl import threadpool_limits  # pylint: disable=import-outside-toplevel
  # These matrices are small (vocab ~500): multi-threaded BLAS only adds contention, which
  # made the SVD ~50x slower on a busy 2-core machine.
  with threadpool_limits(1):
    x = embed(data, seed=seed, fit_size=fit_size)
    streams = rng_lib.Streams(seed)
    rng = streams.numpy("fedlearn/cluster_fit_sample")
    fit = x if len(x) <= fit_size else x[rng.choice(len(x), fit_size, replace=False)]
    km = KMeans(num_clusters, n_init=3, random_state=_sklearn_seed(streams, "fedlearn/kmeans")).fit(fit)
    return km.predict(x).astype(np.int64)


def partition(data: FederatedData, scheme: str, *, num_clients: int | None = None, alpha: float = 0.5,
              beta: float = 0.5, num_clusters: int = 10, seed: int = 0) -> FederatedData:
  """Re-partitions `data`'s examples into clients by `scheme` (see the module docstring).

  Args:
    data: the population (its device boundaries are ignored except by "natural").
    scheme: one of SCHEMES.
    num_clients: number of clients (default: data.num_devices); ignored by "natural".
    alpha: Dirichlet concentration of label ("dirichlet") or cluster ("cluster") skew.
    beta: Dirichlet concentration of client sizes ("quantity").
    num_clusters: k-means clusters ("cluster").
    seed: seeds the shuffles and Dirichlet draws.

  Returns:
    FederatedData whose clients partition the examples exactly; no client is empty.

  Example:
    >>> iid = partition(data, "iid", num_clients=50)
  """
  if scheme not in SCHEMES:
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
  if scheme == "natural":
    return data
  total = len(data.tokens)
  c = data.num_devices if num_clients is None else num_clients
  if int(c) != c or not 1 <= c <= total:
    raise ValueError(f"num_clients must be an integer in [1, {total}] (the number of examples), got {c}")
  c = int(c)
  if alpha <= 0:
    raise ValueError(f"alpha must be > 0, got {alpha}")
  if beta <= 0:
    raise ValueError(f"beta must be > 0, got {beta}")
  rng = rng_lib.Streams(seed).numpy("fedlearn/partition")
  if scheme == "iid":
    client = np.empty(total, np.int64)
    client[rng.permutation(total)] = np.arange(total) * c // total  # sizes differ by at most one
  elif scheme == "quantity":
    # One example per client first, so none is empty; the rest by Dirichlet(beta) proportions.
    sizes = 1 + rng.multinomial(total - c, rng.dirichlet(np.full(c, beta)))
    client = np.empty(total, np.int64)
    client[rng.permutation(total)] = np.repeat(np.arange(c), sizes)
  elif scheme == "dirichlet":
    client = _fill_empty(_dirichlet_over_labels(data.intents, c, alpha, rng), c, rng)
  else:
    if int(num_clusters) != num_clusters or not 1 <= num_clusters <= total:
      raise ValueError(f"num_clusters must be an integer in [1, {total}], got {num_clusters}")
    labels = clusters(data, int(num_clusters), seed=seed)
    client = _fill_empty(_dirichlet_over_labels(labels, c, alpha, rng), c, rng)
  return _group(data, client, c)
