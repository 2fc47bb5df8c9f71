"""Lossless codes for the sorted positions of a tensor's kept entries: a bitmap, or Golomb–Rice coded gaps.

The Rice code is split into two streams so both ends stay vectorised: the unary quotients (q zero bits then a one)
and the fixed-width remainders. The one bits of the unary stream mark the codes, so decoding is a ``flatnonzero``
rather than a bit-by-bit walk. Sizes equal those of the interleaved textbook code up to byte padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from strategies.codecs.errors import UpdateRejected

BITMAP = "bitmap"
RICE = "rice"
MAX_RICE_BITS = 40
_GOLDEN_RATIO = (1 + math.sqrt(5)) / 2


@dataclass(frozen=True)
class CodedPositions:
    """One tensor's kept positions, coded: ``positions`` (bitmap or unary stream) and Rice ``remainders``."""

    coding: str
    rice_bits: int
    positions: bytes
    remainders: bytes

    @property
    def nbytes(self) -> int:
        """Bytes of position data (framing excluded)."""
        return len(self.positions) + len(self.remainders)


def binary_entropy(p: float) -> float:
    """H(p) in bits; 0 at p = 0 or 1."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def rice_bits_for_density(density: float) -> int:
    """The Rice parameter that is optimal for geometric gaps with kept probability ``density`` (Kiely 2004)."""
    if density >= 0.5:
        return 0
    ratio = math.log(_GOLDEN_RATIO - 1) / math.log(1 - density)
    return min(MAX_RICE_BITS, max(0, 1 + math.floor(math.log2(ratio))))


def _gaps(positions: np.ndarray) -> np.ndarray:
    gaps = np.empty(positions.size, dtype=np.int64)
    if positions.size:
        gaps[0] = positions[0]
        np.subtract(positions[1:], positions[:-1], out=gaps[1:])
        gaps[1:] -= 1
    return gaps


def _pack_fixed_width(values: np.ndarray, bits: int) -> bytes:
    """Concatenate the low ``bits`` bits of each value, MSB first, zero-padded to a byte."""
    fields = np.empty((values.size, bits), dtype=np.uint8)
    for column in range(bits):
        np.bitwise_and(values >> (bits - 1 - column), 1, out=fields[:, column], casting="unsafe")
    return np.packbits(fields.reshape(-1)).tobytes()


def _unpack_fixed_width(data: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of ``_pack_fixed_width``: ``count`` unsigned ``bits``-bit fields as int64."""
    fields = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits).reshape(count, bits)
    values = fields[:, 0].astype(np.int64)
    for column in range(1, bits):
        values <<= 1
        values |= fields[:, column]
    return values


def _rice_encode(gaps: np.ndarray, bits: int) -> CodedPositions:
    quotients = gaps >> bits
    quotients += 1
    ends = np.cumsum(quotients)
    ends -= 1
    unary = np.zeros(int(ends[-1]) + 1 if gaps.size else 0, dtype=np.uint8)
    unary[ends] = 1
    remainders = _pack_fixed_width(gaps, bits) if bits and gaps.size else b""
    return CodedPositions(RICE, bits, np.packbits(unary).tobytes(), remainders)


def encode_positions(positions: np.ndarray, numel: int) -> CodedPositions:
    """Code sorted, distinct ``positions`` in ``[0, numel)`` with whichever of bitmap and Rice is smaller.

    The Rice parameter is the one that is optimal for geometric gaps at this tensor's kept density (Kiely); the
    bitmap wins where it is smaller (densities near one half and above).
    """
    if not positions.size:
        return CodedPositions(RICE, 0, b"", b"")
    gaps = _gaps(positions.astype(np.int64, copy=False))
    rice = _rice_encode(gaps, rice_bits_for_density(positions.size / numel))
    if rice.nbytes <= (numel + 7) // 8:
        return rice
    bitmap = np.zeros(numel, dtype=np.uint8)
    bitmap[positions] = 1
    return CodedPositions(BITMAP, 0, np.packbits(bitmap).tobytes(), b"")


def _padding_is_zero(data: bytes, used_bits: int, what: str) -> None:
    expected = (used_bits + 7) // 8
    if len(data) != expected:
        raise UpdateRejected(f"{what} has {len(data)} bytes, expected {expected}")
    spare = expected * 8 - used_bits
    if spare and data[-1] & ((1 << spare) - 1):
        raise UpdateRejected(f"{what} has non-zero padding bits")


def decode_positions(coded: CodedPositions, numel: int, what: str) -> np.ndarray:
    """Sorted int64 positions from ``coded``; UpdateRejected if they are malformed or outside ``[0, numel)``."""
    if coded.coding == BITMAP:
        if coded.remainders or coded.rice_bits:
            raise UpdateRejected(f"{what}: a bitmap carries no Rice data")
        _padding_is_zero(coded.positions, numel, f"{what} position bitmap")
        bits = np.unpackbits(np.frombuffer(coded.positions, dtype=np.uint8), count=numel).view(bool)
        return np.flatnonzero(bits).astype(np.int64, copy=False)
    if coded.coding != RICE:
        raise UpdateRejected(f"{what}: unknown position coding '{coded.coding}'")
    bits = coded.rice_bits
    if bits > MAX_RICE_BITS:
        raise UpdateRejected(f"{what}: Rice parameter {bits} exceeds {MAX_RICE_BITS}")
    unary = np.unpackbits(np.frombuffer(coded.positions, dtype=np.uint8)).view(bool)
    ends = np.flatnonzero(unary)
    kept = ends.size
    if kept > numel:
        raise UpdateRejected(f"{what}: {kept} positions for {numel} entries")
    if kept == 0:
        if coded.positions or coded.remainders:
            raise UpdateRejected(f"{what}: position data without any kept entry")
        return ends.astype(np.int64)
    _padding_is_zero(coded.positions, int(ends[-1]) + 1, f"{what} unary stream")
    _padding_is_zero(coded.remainders, kept * bits, f"{what} remainder stream")
    gaps = _gaps(ends)  # the quotients
    quotient_total = int(ends[-1]) + 1 - kept
    if int(gaps.max()) > (numel >> bits):
        raise UpdateRejected(f"{what}: a gap runs past the end of the tensor")
    if (quotient_total + kept) << bits >= 1 << 62:  # cumsum could overflow int64: check in floating point first
        raise UpdateRejected(f"{what}: positions run past the end of the tensor ({numel} entries)")
    if bits:
        gaps <<= bits
        gaps |= _unpack_fixed_width(coded.remainders, kept, bits)
    gaps += 1
    positions = np.cumsum(gaps, out=gaps)
    positions -= 1
    if int(positions[-1]) >= numel:
        raise UpdateRejected(f"{what}: positions run past the end of the tensor ({numel} entries)")
    return positions
