"""Sparse updates as the coordinator keeps them: per tensor, the flat positions of its non-zero entries and their
values. A ComPEFT payload at density k becomes k positions and values, not a dense tensor; folding it into the
exact running sum then costs work proportional to what was sent."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SparseTensor:
    """A tensor of ``shape`` that is zero except at ``positions`` (flat, int64, strictly increasing) where it holds
    ``values`` (same length, the tensor's dtype)."""

    shape: tuple[int, ...]
    positions: torch.Tensor  # (k,) int64
    values: torch.Tensor  # (k,)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the tensor it stands for."""
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        """Where its positions and values live."""
        return self.values.device

    def numel(self) -> int:
        """Entries of the dense tensor (kept or not)."""
        return math.prod(self.shape)

    def to_dense(self) -> torch.Tensor:
        """The dense tensor: zeros, and the values at their positions."""
        dense = torch.zeros(self.numel(), dtype=self.values.dtype, device=self.values.device)
        dense[self.positions] = self.values
        return dense.view(self.shape)

    def nbytes(self) -> int:
        """Memory held: positions and values."""
        return self.positions.numel() * self.positions.element_size() + self.values.numel() * self.values.element_size()


SparseUpdate = dict[str, SparseTensor]


def densify(update: SparseUpdate) -> dict[str, torch.Tensor]:
    """Every tensor of ``update`` as a dense tensor (for the rules that need whole tensors: median, Krum, ...)."""
    return {name: tensor.to_dense() for name, tensor in update.items()}
