"""An order-independent running sum of tensors: the same set of terms gives the same bits in any order.

Floating-point addition is not associative, so a server that folds client updates into a float running sum as they
arrive gets last-bit differences between runs whose replies arrive in another order, and a resumed run is not
bit-identical to an uninterrupted one. Integer addition is associative, so each term is cut, exactly, into int64
"bins" on one fixed binary grid (in the spirit of Demmel & Nguyen's reproducible summation) and each bin is summed
as integers.

Grid: bin ``j`` counts multiples of ``2**unit(j)``, ``unit(j) = LOWEST_EXPONENT + BIN_BITS * j``, cut from what is
left of a term below ``2**unit(j + 1)``; a term's bits below ``2**LOWEST_EXPONENT`` (about 2e-28) are rounded off,
once per term, so that step does not depend on the order either. A bin value is at most ``2**BIN_BITS`` in
magnitude, so an int64 bin takes ``MAX_TERMS`` terms without overflow. Memory: one int64 per entry per bin in use
(two for terms below 0.5 in magnitude, e.g. fp32 deltas times example counts), plus the scratch of the Workspace.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import torch

LOWEST_EXPONENT = -92
BIN_BITS = 46
BINS = 5  # terms below 2**138 in magnitude
MAX_TERMS = 2 ** (62 - BIN_BITS - 1)
LARGEST = 2.0 ** (LOWEST_EXPONENT + BIN_BITS * BINS)


def _unit(j: int) -> int:
    return LOWEST_EXPONENT + BIN_BITS * j


def _bits(value: float) -> int:
    """The IEEE-754 fp64 bit pattern of ``value`` as a signed integer."""
    return struct.unpack("<q", struct.pack("<d", value))[0]


class Workspace:
    """Scratch buffers reused across terms (and across the sums of one update's tensors): fresh multi-megabyte
    buffers per term cost page faults that took as long as the arithmetic. Holds three buffers the size of the
    largest tensor added."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def buffer(self, role: str, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` for ``role``, backed by a buffer kept for the next call."""
        key = (role, dtype, device)
        count = shape.numel()
        held = self._buffers.get(key)
        if held is None or held.numel() < count:
            held = self._buffers[key] = torch.empty(count, dtype=dtype, device=device)
        return held[:count].view(shape)

    def nbytes(self) -> int:
        """Bytes of the buffers kept."""
        return sum(t.numel() * t.element_size() for t in self._buffers.values())


class ExactSum:
    """The running sum of float tensors of one shape, exact on the grid above and independent of term order."""

    def __init__(self, shape: tuple[int, ...] | torch.Size, device: torch.device | str = "cpu") -> None:
        self.shape = torch.Size(shape)
        self.device = torch.device(device)
        self.bins: list[torch.Tensor | None] = [None] * BINS
        self.terms = 0

    @staticmethod
    def check(term: torch.Tensor, scale: float = 1.0, name: str = "term") -> float:
        """The largest magnitude in ``scale * term`` (as ``add`` computes it); ValueError when an entry is
        non-finite or too large for the grid."""
        if term.numel() == 0:
            return 0.0
        peak = float(torch.linalg.vector_norm(term.detach(), ord=float("inf"))) * abs(scale)
        if not peak < LARGEST:  # also catches NaN and Inf
            raise ValueError(f"{name}: an entry of magnitude {peak:.3g} cannot be summed exactly (limit {LARGEST:.3g})")
        return peak

    def add(self, term: torch.Tensor, scale: float = 1.0, workspace: Workspace | None = None,
            peak: float | None = None) -> None:
        """Add ``scale * term`` (the product taken in fp64: exact for fp32 terms and integer scales below 2**29);
        ``workspace`` lends scratch buffers; ``peak``, when the caller already ran ``check``, is what it returned.

        ValueError (and nothing added) for a wrong shape, a non-finite entry, or a magnitude the grid cannot hold."""
        if term.shape != self.shape:
            raise ValueError(f"term has shape {tuple(term.shape)}, expected {tuple(self.shape)}")
        self._check_count()
        if term.numel() == 0:
            self.terms += 1
            return
        peak = self.check(term, scale) if peak is None else peak
        for j, whole in self._cut(term, scale, peak, workspace or Workspace()):
            if self.bins[j] is None:
                self.bins[j] = whole.clone()
            else:
                self.bins[j].add_(whole)  # type: ignore[union-attr]
        self.terms += 1

    def add_sparse(self, positions: torch.Tensor, values: torch.Tensor, scale: float = 1.0,
                   workspace: Workspace | None = None, peak: float | None = None) -> None:
        """Add ``scale *`` the tensor that is zero except ``values`` at the flat ``positions`` (distinct, in range),
        in work proportional to the values: the same bins, so the same bits, as ``add`` of the dense tensor (every
        entry is cut on its own, and a zero adds nothing to any bin). Errors as ``add``; positions out of range or
        of another count than the values raise ValueError. ``peak``, when given, says the caller already ran
        ``check`` and ``check_positions``."""
        if peak is None:
            self.check_positions(positions, values, self.shape.numel())
        self._check_count()
        peak = self.check(values, scale) if peak is None else peak
        if values.numel():
            for j, whole in self._cut(values, scale, peak, workspace or Workspace()):
                if not bool(whole.any()):  # e.g. the low bin of fp32 values times integer weights: nothing to add
                    continue
                if self.bins[j] is None:
                    self.bins[j] = torch.zeros(self.shape, dtype=torch.int64, device=self.device)
                self.bins[j].view(-1).scatter_add_(0, positions.to(self.device), whole)  # type: ignore[union-attr]
        self.terms += 1

    @staticmethod
    def check_positions(positions: torch.Tensor, values: torch.Tensor, numel: int, name: str = "term") -> None:
        """ValueError unless ``positions`` is one flat index per value, each inside ``numel`` entries."""
        if positions.shape != values.shape or positions.dim() != 1:
            raise ValueError(f"{name}: {positions.numel()} positions for {values.numel()} values")
        if positions.numel():
            low, high = torch.aminmax(positions)
            if not (0 <= int(low) and int(high) < numel):
                raise ValueError(f"{name}: a position lies outside the {numel} entries")

    def _check_count(self) -> None:
        if self.terms >= MAX_TERMS:
            raise ValueError(f"more than {MAX_TERMS} terms in one exact sum")

    def _cut(self, term: torch.Tensor, scale: float, peak: float, space: Workspace
             ) -> Iterator[tuple[int, torch.Tensor]]:
        """``scale * term`` cut, entry by entry, into the integer multiples of each bin's unit: (bin, int64 tensor
        shaped like ``term``) for every bin some entry reaches. Each yielded tensor is valid until the next."""
        shape = term.shape
        rest = space.buffer("rest", shape, torch.float64, self.device)
        rest.copy_(term)
        if scale != 1.0:
            rest.mul_(scale)
        shifted = space.buffer("shifted", shape, torch.float64, self.device)
        whole = space.buffer("whole", shape, torch.int64, self.device)
        for j in reversed(range(BINS)):
            if j > 0 and peak < 2.0 ** _unit(j) / 2:
                continue  # every entry rounds to 0 in this bin: adding nothing changes nothing
            # rest + c rounds ``rest`` to a multiple of 2**unit(j), exactly: c's last bit is that unit, and
            # |rest| <= 2**unit(j + 1) keeps rest + c inside c's binade, where the fp64 bit pattern counts units,
            # so the pattern minus c's is the rounded value in units, an integer read without a conversion.
            c = 1.5 * 2.0 ** (_unit(j) + 52)
            torch.add(rest, c, out=shifted)
            torch.sub(shifted.view(torch.int64), _bits(c), out=whole)
            if j > 0:
                rest.sub_(shifted.sub_(c))
            yield j, whole

    def value(self) -> torch.Tensor:
        """The sum as fp64 (the bins added from the largest down, so the rounding depends on the bins alone)."""
        total = torch.zeros(self.shape, dtype=torch.float64, device=self.device)
        for j in reversed(range(BINS)):
            if self.bins[j] is not None:
                total.add_(self.bins[j].to(torch.float64).mul_(2.0 ** _unit(j)))  # type: ignore[union-attr]
        return total

    def nbytes(self) -> int:
        """Bytes this sum holds between terms (its bins in use)."""
        return sum(b.numel() * b.element_size() for b in self.bins if b is not None)
