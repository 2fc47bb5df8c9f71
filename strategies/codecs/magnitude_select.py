"""Exact top-k by magnitude over many tensors, streaming, without sorting or concatenating the values.

For finite fp32 values the integer order of ``bits(x) & 0x7FFFFFFF`` is the order of ``|x|``, so selection works
on uint32 keys. A strided sample taken in the first pass gives a floor a little below the k-th largest key and a
ceiling a little above it; the second pass keeps only the entries at or above the floor (candidates, a few percent
more than k), and the exact k-th key is found among the few candidates between floor and ceiling. If the floor
turns out too high (fewer than k candidates), the caller lowers it to the smallest non-zero key and collects
again, so the result never depends on the sample. Ties at the threshold are
broken by position (earlier tensor, then lower index), so the selection is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_MAGNITUDE_MASK = np.uint32(0x7FFFFFFF)
SMALLEST_NONZERO_KEY = 1
FIRST_NON_FINITE_KEY = 0x7F800000  # the key of inf; NaN keys are larger
SAMPLE_TARGET = 1 << 17


def magnitude_keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys whose integer order is the order of ``|values|`` (``values``: contiguous fp32)."""
    return values.view(np.uint32) & _MAGNITUDE_MASK


def sample_stride(total_entries: int) -> int:
    """An odd stride that samples about SAMPLE_TARGET entries (odd, so it rarely aligns with row lengths)."""
    return max(1, total_entries // SAMPLE_TARGET) | 1


@dataclass(frozen=True)
class Bounds:
    """Keys at or above ``floor`` are candidates; keys at or above ``ceiling`` are almost surely in the top k."""

    floor: int
    ceiling: int


def bounds_from_sample(sample_keys: np.ndarray, sample_size: int, kept_fraction: float) -> Bounds:
    """Keys a little below and a little above the k-th largest, judged from ``sample_keys`` (the sample's non-zero
    keys). The margins (5% plus four binomial standard deviations) make a second collection pass rare; the result
    never depends on them being right.
    """
    expected = sample_size * kept_fraction
    spread = 0.05 * expected + 4.0 * math.sqrt(expected) + 16
    count = sample_keys.size
    low_rank, high_rank = math.ceil(expected + spread), math.ceil(expected - spread)
    # The r-th largest (0-based) of the sample is at index count - 1 - r in ascending order.
    wanted = sorted({count - 1 - r for r in (low_rank, high_rank) if 0 <= r < count})
    ordered = np.partition(sample_keys, wanted) if wanted else sample_keys

    def key_at(rank: int) -> int:
        return int(ordered[count - 1 - rank]) if 0 <= rank < count else SMALLEST_NONZERO_KEY

    floor = max(SMALLEST_NONZERO_KEY, key_at(low_rank))
    ceiling = key_at(high_rank) + 1 if high_rank >= 0 and high_rank < count else FIRST_NON_FINITE_KEY
    return Bounds(floor=floor, ceiling=max(floor, ceiling))


@dataclass
class Candidates:
    """The entries of one tensor whose key is at or above a floor: positions and raw fp32 bits (magnitude key and
    sign together, so the kept signs need no second gather from the tensor), in position order."""

    positions: np.ndarray
    bits: np.ndarray

    @classmethod
    def collect(cls, chunks: list[tuple[int, np.ndarray]], floor: int) -> Candidates:
        """Candidates at or above ``floor`` from ``(offset, fp32 chunk)`` pairs covering one tensor."""
        positions, bits = [], []
        for offset, chunk in chunks:
            picked = np.flatnonzero(magnitude_keys(chunk) >= floor)  # an index gathers faster than a mask here
            positions.append(picked + offset if offset else picked)
            bits.append(chunk.view(np.uint32)[picked])
        if len(positions) == 1:
            return cls(positions[0], bits[0])
        return cls(np.concatenate(positions), np.concatenate(bits))


def _kth_largest(keys: np.ndarray, k: int, ceiling: int) -> int:
    """The k-th largest of ``keys``; partitions only the keys under ``ceiling`` when the ceiling holds."""
    above = int(np.count_nonzero(keys >= ceiling))
    if above < k:
        middle = keys[np.flatnonzero(keys < ceiling)]
        rank = k - above  # the rank-th largest of the middle keys
        return int(np.partition(middle, middle.size - rank)[middle.size - rank])
    return int(np.partition(keys, keys.size - k)[keys.size - k])


def _negative(bits: np.ndarray) -> np.ndarray:
    return bits >= np.uint32(0x80000000)  # the sign bit, as one bool array


def select_top(candidates: list[Candidates], k: int, ceiling: int = FIRST_NON_FINITE_KEY
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Positions and sign bits (True: negative) of the ``k`` largest keys over all ``candidates``, per tensor;
    ties go to earlier tensors, then to lower positions. If the candidates hold ``k`` keys or fewer, all are kept.
    """
    total = sum(c.positions.size for c in candidates)
    if k >= total:
        return [(c.positions, _negative(c.bits)) for c in candidates]
    bits = np.concatenate([c.bits for c in candidates]) if len(candidates) > 1 else candidates[0].bits
    keys = bits & _MAGNITUDE_MASK
    threshold = _kth_largest(keys, k, ceiling)
    kept = np.flatnonzero(keys >= threshold)  # indices into the candidates, in tensor-then-position order
    if kept.size > k:  # ties at the threshold beyond the k-th: drop the latest
        ties = np.flatnonzero(keys[kept] == threshold)  # where the ties sit in ``kept``
        kept = np.delete(kept, ties[ties.size - (kept.size - k):])
    negative = _negative(bits[kept])
    ends = np.cumsum([c.positions.size for c in candidates])
    cuts = np.searchsorted(kept, ends)
    chosen, begin, start = [], 0, 0
    for c, end, cut in zip(candidates, ends.tolist(), cuts.tolist(), strict=True):
        index = kept[begin:cut]
        chosen.append((c.positions[index - start] if start else c.positions[index], negative[begin:cut]))
        begin, start = cut, end
    return chosen
