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
    """The entries of one tensor whose key is at or above a floor: positions and keys, in position order."""

    positions: np.ndarray
    keys: np.ndarray

    @classmethod
    def collect(cls, chunks: list[tuple[int, np.ndarray]], floor: int) -> Candidates:
        """Candidates at or above ``floor`` from ``(offset, fp32 chunk)`` pairs covering one tensor."""
        positions, keys = [], []
        for offset, chunk in chunks:
            chunk_keys = magnitude_keys(chunk)
            picked = np.flatnonzero(chunk_keys >= floor)
            positions.append(picked + offset if offset else picked)
            keys.append(chunk_keys[picked])
        if len(positions) == 1:
            return cls(positions[0], keys[0])
        return cls(np.concatenate(positions), np.concatenate(keys))


def _kth_largest(candidates: list[Candidates], k: int, ceiling: int) -> int:
    """The k-th largest candidate key; partitions only the keys under ``ceiling`` when the ceiling holds."""
    below = [c.keys < ceiling for c in candidates]
    above = sum(c.keys.size - int(np.count_nonzero(mask)) for c, mask in zip(candidates, below, strict=True))
    if above < k:
        middle = np.concatenate([c.keys[mask] for c, mask in zip(candidates, below, strict=True)])
        rank = k - above  # the rank-th largest of the middle keys
        return int(np.partition(middle, middle.size - rank)[middle.size - rank])
    every_key = np.concatenate([c.keys for c in candidates])
    return int(np.partition(every_key, every_key.size - k)[every_key.size - k])


def select_top(candidates: list[Candidates], k: int, ceiling: int = FIRST_NON_FINITE_KEY) -> list[np.ndarray]:
    """Positions of the ``k`` largest keys over all ``candidates``, per tensor; ties go to earlier positions.

    If the candidates hold ``k`` keys or fewer, all of them are kept.
    """
    total = sum(c.keys.size for c in candidates)
    if k >= total:
        return [c.positions for c in candidates]
    threshold = _kth_largest(candidates, k, ceiling)
    masks = [c.keys >= threshold for c in candidates]
    excess = sum(int(np.count_nonzero(mask)) for mask in masks) - k  # ties at the threshold beyond the k-th
    if excess:
        for c, mask in reversed(list(zip(candidates, masks, strict=True))):  # drop the latest ties first
            at_threshold = np.flatnonzero(c.keys == threshold)
            dropped = at_threshold[max(0, at_threshold.size - excess):]
            mask[dropped] = False
            excess -= dropped.size
            if not excess:
                break
    return [c.positions[mask] for c, mask in zip(candidates, masks, strict=True)]
