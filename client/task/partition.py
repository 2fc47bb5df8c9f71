"""Split the training set across clients: IID, Dirichlet over a column (flwr-datasets), or by domain (each client
holds whole categories: FedIT's split of instruction data by category)."""

from __future__ import annotations

from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner

from client.task.spec import PARTITIONERS


class DomainPartitioner(Partitioner):
    """Whole values of ``partition_by`` per client: the values in sorted order, cut into ``num_partitions``
    contiguous groups of near-equal row counts (a value goes to the group its rows' midpoint
    falls in). ValueError when there are fewer values than partitions."""

    def __init__(self, num_partitions: int, partition_by: str) -> None:
        super().__init__()
        self._num_partitions = num_partitions
        self._partition_by = partition_by
        self._groups: list[list[str]] | None = None

    @property
    def num_partitions(self) -> int:
        """How many partitions the data is cut into."""
        return self._num_partitions

    def groups(self) -> list[list[str]]:
        """The values each partition holds, by partition id."""
        if self._groups is None:
            column = [str(v) for v in self.dataset[self._partition_by]]
            counts: dict[str, int] = {}
            for value in sorted(column):
                counts[value] = counts.get(value, 0) + 1
            if len(counts) < self._num_partitions:
                raise ValueError(f"partitioner=domain needs at least one '{self._partition_by}' value per client: "
                                 f"the data has {len(counts)} ({', '.join(counts)}) for {self._num_partitions} "
                                 "clients (use partitioner=dirichlet or iid, or fewer clients)")
            groups: list[list[str]] = [[] for _ in range(self._num_partitions)]
            seen, total = 0, len(column)
            for value, count in counts.items():
                midpoint = (seen + count / 2) / total
                groups[min(int(midpoint * self._num_partitions), self._num_partitions - 1)].append(value)
                seen += count
            for index, group in enumerate(groups):  # every client gets a value: borrow from a neighbour
                if not group:
                    donor = max(range(len(groups)), key=lambda i: len(groups[i]))
                    group.append(groups[donor].pop(0 if donor > index else -1))
            self._groups = groups
        return self._groups

    def load_partition(self, partition_id: int) -> Dataset:
        """The rows whose value is in partition ``partition_id``'s group."""
        wanted = set(self.groups()[partition_id])
        rows = [i for i, v in enumerate(self.dataset[self._partition_by]) if str(v) in wanted]
        return self.dataset.select(rows)


def make_partitioner(kind: str, num_partitions: int, *, alpha: float, seed: int, by: str = "label") -> Partitioner:
    """An IID, Dirichlet (skewed over column ``by``, concentration ``alpha``) or domain partitioner."""
    if kind == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if kind not in PARTITIONERS:
        raise ValueError(f"unknown partitioner '{kind}' (choose from {', '.join(PARTITIONERS)})")
    if not by:
        raise ValueError(f"partitioner={kind} splits by a category column, and this data has none "
                         "(use partitioner=iid, or name one with data-columns=\"category=COLUMN\")")
    if kind == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions, partition_by=by, alpha=alpha, min_partition_size=1,
            self_balancing=True, shuffle=True, seed=seed,
        )
    return DomainPartitioner(num_partitions, by)


def client_partition(train: Dataset, partition_id: int, num_partitions: int, *, kind: str, alpha: float,
                     seed: int, by: str = "label") -> Dataset:
    """The slice of ``train`` that client ``partition_id`` of ``num_partitions`` holds."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    partitioner = make_partitioner(kind, num_partitions, alpha=alpha, seed=seed, by=by)
    partitioner.dataset = train
    return partitioner.load_partition(partition_id)
