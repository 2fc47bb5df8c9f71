"""An order-independent running sum of tensors: the same set of terms gives the same bits in any order.

Floating-point addition is not associative, so a server that folds client updates into a float running sum as they
arrive gets last-bit differences between runs whose replies arrive in another order, and a resumed run is not
bit-identical to an uninterrupted one. Integer addition is associative, so each term is cut, exactly, into "bins" on
one fixed binary grid (in the spirit of Demmel & Nguyen's reproducible summation) and each bin is summed exactly.

Grid: bin ``j`` holds multiples of ``2**unit(j)``, ``unit(j) = LOWEST_EXPONENT + BIN_BITS * j``, cut from terms
whose magnitude is below ``2**unit(j + 1)``; a term's bits below ``2**LOWEST_EXPONENT`` (about 8e-28) are rounded
off, once per term, so that step does not depend on the order either. Each bin sums in fp64 (exact for up to
``FLUSH_EVERY`` terms, since every part is a multiple of the bin's unit well inside fp64's 53 bits) and is flushed
into an int64 total, which holds ``MAX_TERMS`` terms without overflow. Because every bin's content is the exact sum
of that bin's parts, the bins, and the value read from them, are the same for every order of the terms.
"""

from __future__ import annotations

import torch

LOWEST_EXPONENT = -90
BIN_BITS = 45
BINS = 5  # terms below 2**135 in magnitude
FLUSH_EVERY = 2 ** (52 - BIN_BITS - 1)  # parts below 2**(unit + BIN_BITS + 1): the fp64 sum stays below 2**(unit + 53)
MAX_TERMS = 2 ** (62 - BIN_BITS - 1)
LARGEST = 2.0 ** (LOWEST_EXPONENT + BIN_BITS * BINS)


def _unit(j: int) -> int:
    return LOWEST_EXPONENT + BIN_BITS * j


class ExactSum:
    """The running sum of float tensors of one shape, exact on the grid above and independent of term order."""

    def __init__(self, shape: tuple[int, ...] | torch.Size, device: torch.device | str = "cpu") -> None:
        self.shape = torch.Size(shape)
        self.device = torch.device(device)
        self.pending: list[torch.Tensor | None] = [None] * BINS
        self.totals: list[torch.Tensor | None] = [None] * BINS
        self.terms = 0
        self._since_flush = 0
        self._scratch: torch.Tensor | None = None

    @staticmethod
    def check(term: torch.Tensor, scale: float = 1.0, name: str = "term") -> None:
        """ValueError when ``scale * term`` has a non-finite entry or one too large for the grid."""
        if term.numel() == 0:
            return
        peak = float(term.detach().abs().max()) * abs(scale)
        if not peak < LARGEST:  # also catches NaN and Inf
            raise ValueError(f"{name}: an entry of magnitude {peak:.3g} cannot be summed exactly (limit {LARGEST:.3g})")

    def add(self, term: torch.Tensor, scale: float = 1.0) -> None:
        """Add ``scale * term`` (the product taken in fp64: exact for fp32 terms and integer scales below 2**29).

        ValueError for a wrong shape, a non-finite entry, or a magnitude the grid cannot hold."""
        if term.shape != self.shape:
            raise ValueError(f"term has shape {tuple(term.shape)}, expected {tuple(self.shape)}")
        if self.terms >= MAX_TERMS:
            raise ValueError(f"more than {MAX_TERMS} terms in one exact sum")
        if term.numel() == 0:
            self.terms += 1
            return
        rest = term.to(device=self.device, dtype=torch.float64, copy=True)
        if scale != 1.0:
            rest.mul_(scale)
        peak = float(rest.abs().max())
        if not peak < LARGEST:  # also catches NaN and Inf
            raise ValueError(f"an entry of magnitude {peak:.3g} cannot be summed exactly (limit {LARGEST:.3g})")
        if self._since_flush >= FLUSH_EVERY:
            self._flush()
        self.terms += 1
        self._since_flush += 1
        if self._scratch is None:
            self._scratch = torch.empty_like(rest)
        part = self._scratch
        for j in reversed(range(BINS)):
            if j > 0 and peak < 2.0 ** _unit(j) / 2:
                continue  # every entry rounds to 0 in this bin: adding nothing changes nothing
            # (rest + c) - c is ``rest`` rounded to a multiple of 2**unit(j), exactly: c's last bit is that unit and
            # |rest| < 2**unit(j + 1) keeps rest + c inside c's binade.
            c = 1.5 * 2.0 ** (_unit(j) + 52)
            torch.add(rest, c, out=part)
            part.sub_(c)
            if j > 0:
                rest.sub_(part)
            pending = self.pending[j]
            if pending is None:
                self.pending[j] = part.clone()
            else:
                pending.add_(part)

    def _flush(self) -> None:
        """Move every bin's fp64 sum into its int64 total (exact: it is an integer multiple of the bin's unit)."""
        for j, pending in enumerate(self.pending):
            if pending is None:
                continue
            whole = pending.mul_(2.0 ** -_unit(j)).to(torch.int64)
            if self.totals[j] is None:
                self.totals[j] = whole
            else:
                self.totals[j].add_(whole)  # type: ignore[union-attr]
            pending.zero_()
        self._since_flush = 0

    def value(self) -> torch.Tensor:
        """The sum as fp64 (the bins added from the largest down, so the rounding depends on the bins alone)."""
        self._flush()
        total = torch.zeros(self.shape, dtype=torch.float64, device=self.device)
        for j in reversed(range(BINS)):
            if self.totals[j] is not None:
                total.add_(self.totals[j].to(torch.float64).mul_(2.0 ** _unit(j)))  # type: ignore[union-attr]
        return total

    def nbytes(self) -> int:
        """Bytes this sum holds (bins in use and the scratch buffer)."""
        held = [t for t in self.pending + self.totals + [self._scratch] if t is not None]
        return sum(t.numel() * t.element_size() for t in held)
