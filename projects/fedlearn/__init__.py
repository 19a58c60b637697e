"""Federated learning simulation: simulated device data, partitions, continual data, tasks.

Public data-side API (the simulation core lives in algorithms/selection/privacy/simulation):
  data.generate_population, data.held_out, data.encode_texts, data.FederatedData, data.ClientBatch
  partition.partition (natural / iid / dirichlet / quantity / cluster)
  continual.available, continual.period_slice
  tasks.make_task, tasks.Task

Example:
  >>> from projects.fedlearn import data, partition, tasks
  >>> train = data.generate_population(1000, seed=0)
  >>> clients = partition.partition(train, "dirichlet", num_clients=100, alpha=0.3)
  >>> task = tasks.make_task("intent", vocab_size=len(train.vocab),
  ...                        num_intents=len(train.intent_names), max_len=train.max_len)
"""
