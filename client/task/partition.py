"""Split the training set across clients with flwr-datasets partitioners (IID or Dirichlet non-IID)."""

from __future__ import annotations

from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner

PARTITIONERS = ("iid", "dirichlet")


def make_partitioner(kind: str, num_partitions: int, *, alpha: float, seed: int) -> Partitioner:
    """An IID or Dirichlet (label-skewed, concentration ``alpha``) partitioner over the ``label`` column."""
    if kind == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if kind == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions, partition_by="label", alpha=alpha, min_partition_size=1,
            self_balancing=True, shuffle=True, seed=seed,
        )
    raise ValueError(f"unknown partitioner '{kind}' (choose from {', '.join(PARTITIONERS)})")


def client_partition(train: Dataset, partition_id: int, num_partitions: int, *, kind: str, alpha: float,
                     seed: int) -> Dataset:
    """The slice of ``train`` that client ``partition_id`` of ``num_partitions`` holds."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    partitioner = make_partitioner(kind, num_partitions, alpha=alpha, seed=seed)
    partitioner.dataset = train
    return partitioner.load_partition(partition_id)
