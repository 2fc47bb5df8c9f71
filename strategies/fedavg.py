"""FedAvg: the example-weighted mean of client updates."""

from __future__ import annotations

import math

import torch

from strategies.codecs.sparse import SparseTensor
from strategies.exact_sum import ExactSum, Workspace


class RunningMean:
    """FedAvg folded one update at a time: the example-weighted mean of every update added so far.

    The coordinator adds each client's decoded update as its reply arrives and drops it, so memory is one running
    sum per tensor (O(model)), not one copy per client. Sums are exact and order-independent (ExactSum): the same
    updates give the same bits whatever order their replies arrive in, which keeps resumed runs bit-identical.
    """

    def __init__(self) -> None:
        self.sums: dict[str, ExactSum] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self.weights: list[float] = []
        self.workspace = Workspace()

    def add(self, update: dict[str, torch.Tensor] | dict[str, SparseTensor], weight: float) -> None:
        """Fold ``update`` in with ``weight`` (e.g. its examples). Tensors may be dense or sparse (SparseTensor:
        folded in work proportional to its kept entries, with the same bits as its dense form). Checks everything
        before adding anything, so a ValueError (other names or shapes than earlier updates, a negative or
        non-finite weight, a non-finite or unsummably large entry) leaves the mean as it was."""
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weights must be non-negative and finite, got {weight}")
        if not update:
            raise ValueError("an update names no tensors")
        if self.sums:
            if set(update) != set(self.sums):
                raise ValueError("updates name different tensors")
            for name, tensor in update.items():
                if torch.Size(tensor.shape) != self.sums[name].shape:
                    raise ValueError(f"tensor '{name}' has shape {tuple(tensor.shape)}, expected "
                                     f"{tuple(self.sums[name].shape)}")
        for name, tensor in update.items():
            if isinstance(tensor, SparseTensor):
                ExactSum.check_positions(tensor.positions, tensor.values, tensor.numel(), name)
        peaks = {name: ExactSum.check(_values(tensor), weight, name) for name, tensor in update.items()}
        if not self.sums:
            self.sums = {name: ExactSum(t.shape, t.device) for name, t in update.items()}
            self.dtypes = {name: t.dtype for name, t in update.items()}
        self.weights.append(float(weight))
        if weight == 0:
            return
        for name, tensor in update.items():
            if isinstance(tensor, SparseTensor):
                self.sums[name].add_sparse(tensor.positions, tensor.values, weight, self.workspace, peaks[name])
            else:
                self.sums[name].add(tensor, weight, self.workspace, peaks[name])

    def __len__(self) -> int:
        return len(self.weights)

    def result(self) -> dict[str, torch.Tensor]:
        """The weighted mean in the first update's dtypes; ValueError when nothing (or only zero weight) was added."""
        total = math.fsum(self.weights)
        if not self.weights:
            raise ValueError("no updates to aggregate")
        if total <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {self.weights}")
        return {name: (acc.value() / total).to(self.dtypes[name]) for name, acc in self.sums.items()}

    def nbytes(self) -> int:
        """Bytes held by the running sums and their scratch buffers."""
        return sum(acc.nbytes() for acc in self.sums.values()) + self.workspace.nbytes()


def _values(tensor: torch.Tensor | SparseTensor) -> torch.Tensor:
    """The entries that can be non-zero."""
    return tensor.values if isinstance(tensor, SparseTensor) else tensor


def weighted_mean(updates: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """Mean of ``updates`` weighted by ``weights`` (e.g. examples), summed exactly in fp64 on the tensors' device
    and returned in their dtype; the result does not depend on the order of the list.

    Raises ValueError for no updates, mismatched names/shapes, or non-positive total weight.
    """
    if len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    mean = RunningMean()
    for update, weight in zip(updates, weights, strict=True):
        mean.add(update, weight)
    return mean.result()


def apply_update(state: dict[str, torch.Tensor], delta: dict[str, torch.Tensor], *, lr: float = 1.0
                 ) -> dict[str, torch.Tensor]:
    """``state + lr * delta`` for every tensor, as a new dict; names must match."""
    if set(state) != set(delta):
        raise ValueError("update and global state name different tensors")
    return {name: state[name] + lr * delta[name].to(state[name].dtype) for name in state}


def subtract(after: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``after - before`` for every tensor: a client's update from the state it received."""
    if set(after) != set(before):
        raise ValueError("the two states name different tensors")
    return {name: after[name] - before[name] for name in after}
