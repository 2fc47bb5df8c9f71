"""FedAvg: the example-weighted mean of client updates."""

from __future__ import annotations

import torch


def weighted_mean(updates: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """Mean of ``updates`` weighted by ``weights`` (e.g. examples), accumulated in fp64 on the tensors' device and
    returned in their dtype (one client at a time, in list order: the same inputs give the same bits).

    Raises ValueError for no updates, mismatched names/shapes, or non-positive total weight.
    """
    if not updates:
        raise ValueError("no updates to aggregate")
    if len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    names = set(updates[0])
    for update in updates[1:]:
        if set(update) != names:
            raise ValueError("updates name different tensors")
    total = float(sum(weights))
    mean: dict[str, torch.Tensor] = {}
    for name in updates[0]:
        first = updates[0][name]
        acc = torch.zeros(first.shape, dtype=torch.float64, device=first.device)
        for update, weight in zip(updates, weights, strict=True):
            if update[name].shape != acc.shape:
                raise ValueError(f"tensor '{name}' has shape {tuple(update[name].shape)}, expected {tuple(acc.shape)}")
            acc += update[name].to(torch.float64) * (weight / total)
        mean[name] = acc.to(first.dtype)
    return mean


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
