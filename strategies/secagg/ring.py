"""Integers in the ring 2^b that secure aggregation sums: quantisation of real updates, and b-bit packing.

A real value in ``[-clip, clip]`` becomes an integer in ``[0, levels]`` by stochastic rounding (unbiased: the
expected integer is exactly the scaled value). The sum of ``parties`` such integers is at most
``parties * levels``, so a ring of ``bits = ceil(log2(parties * levels + 1))`` holds it without overflow and the
unmasked sum is exact. Masked words are packed ``bits`` bits each, not as int64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_RING_BITS = 64


def ring_bits(parties: int, levels: int) -> int:
    """The smallest b with ``parties * levels < 2^b``."""
    if parties < 1 or levels < 1:
        raise ValueError(f"parties and levels must be positive, got {parties} and {levels}")
    bits = max(1, (parties * levels).bit_length())
    if bits > MAX_RING_BITS:
        raise ValueError(f"{parties} parties x {levels} levels need a ring of {bits} bits, more than {MAX_RING_BITS}")
    return bits


@dataclass(frozen=True)
class Quantizer:
    """Maps reals in ``[-clip, clip]`` to integers in ``[0, levels]`` (``levels = 2^precision_bits - 1``)."""

    clip: float
    precision_bits: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"the clipping range must be a positive finite number, got {self.clip}")
        if not 1 <= self.precision_bits <= 48:
            raise ValueError(f"precision bits must be in 1..48, got {self.precision_bits}")

    @property
    def levels(self) -> int:
        """The largest integer a value maps to."""
        return (1 << self.precision_bits) - 1

    @property
    def step(self) -> float:
        """The real value of one integer step."""
        return 2 * self.clip / self.levels

    def quantize(self, values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """Clip, scale and stochastically round ``values``; returns uint64 words and how many entries were clipped."""
        real = np.asarray(values, dtype=np.float64).reshape(-1)
        if not np.isfinite(real).all():
            raise ValueError("cannot quantise NaN or Inf")
        clipped = int(np.count_nonzero(np.abs(real) > self.clip))
        scaled = (np.clip(real, -self.clip, self.clip) + self.clip) / self.step
        floor = np.floor(scaled)
        words = floor + (rng.random(scaled.size) < (scaled - floor))
        return np.minimum(words, self.levels).astype(np.uint64), clipped

    def dequantize_sum(self, total: np.ndarray, parties: int) -> np.ndarray:
        """The real sum of ``parties`` quantised vectors from their integer sum ``total``."""
        return total.astype(np.float64) * self.step - parties * self.clip


_FAST_BITS = 57  # a field plus its bit offset within a byte fits one big-endian uint64 window


def word_dtype(bits: int) -> np.dtype:
    """The narrowest unsigned integer type whose wrap-around arithmetic is exact modulo 2^bits."""
    return np.dtype(np.uint32) if bits <= 32 else np.dtype(np.uint64)


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_RING_BITS:
        raise ValueError(f"ring bits must be in 1..{MAX_RING_BITS}, got {bits}")


def pack(words: np.ndarray, bits: int) -> bytes:
    """``words`` (each < 2^bits) as consecutive ``bits``-bit fields, most significant bit first, zero-padded.

    Words ``8m + r`` all start at the same bit offset within their byte, ``r * bits mod 8``, and ``bits`` bytes
    apart, so each of the eight residues is written with strided byte slices rather than bit by bit.
    """
    _check_bits(bits)
    count = words.size
    if bits > _FAST_BITS:
        return _pack_bitwise(words, bits)
    groups = -(-count // 8)
    padded = np.zeros(groups * 8, dtype=np.uint64)
    padded[:count] = words
    out = np.zeros(groups * bits + 8, dtype=np.uint8)
    for residue in range(8):
        first_bit = residue * bits
        offset, shift = first_bit >> 3, first_bit & 7
        aligned = padded[residue::8] << np.uint64(64 - shift - bits)
        for index in range(-(-(shift + bits) // 8)):
            byte = (aligned >> np.uint64(56 - 8 * index)).astype(np.uint8)
            out[offset + index::bits][:groups] |= byte
    return out[:(count * bits + 7) // 8].tobytes()


def _pack_bitwise(words: np.ndarray, bits: int) -> bytes:
    big_endian = words.astype(">u8", copy=False)
    out = []
    for start in range(0, big_endian.size, 1 << 16):
        fields = np.unpackbits(big_endian[start:start + (1 << 16)].view(np.uint8).reshape(-1, 8), axis=1)
        out.append(fields[:, 64 - bits:].reshape(-1))
    return np.packbits(np.concatenate(out) if out else np.zeros(0, np.uint8)).tobytes()


def unpack(data: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of ``pack``, as ``word_dtype(bits)``; ValueError unless ``data`` is exactly ``count`` fields with
    zero padding."""
    _check_bits(bits)
    expected = (count * bits + 7) // 8
    if len(data) != expected:
        raise ValueError(f"packed words have {len(data)} bytes, expected {expected} for {count} x {bits} bits")
    spare = expected * 8 - count * bits
    if spare and data[-1] & ((1 << spare) - 1):
        raise ValueError("packed words have non-zero padding bits")
    if bits > _FAST_BITS:
        fields = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits).reshape(count, bits)
        padded = np.zeros((count, 64), dtype=np.uint8)
        padded[:, 64 - bits:] = fields
        return np.packbits(padded, axis=1).view(">u8").reshape(-1).astype(np.uint64)
    if not count:
        return np.zeros(0, dtype=word_dtype(bits))
    groups = -(-count // 8)
    buffer = np.zeros(groups * bits + 16, dtype=np.uint8)
    buffer[:len(data)] = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(groups * 8, dtype=np.uint64)
    mask = np.uint64((1 << bits) - 1)
    for residue in range(8):
        first_bit = residue * bits
        offset, shift = first_bit >> 3, first_bit & 7
        windows = np.ndarray((groups,), dtype=">u8", buffer=buffer, offset=offset, strides=(bits,))
        out[residue::8] = (windows.astype(np.uint64) >> np.uint64(64 - shift - bits)) & mask
    return out[:count].astype(word_dtype(bits))
