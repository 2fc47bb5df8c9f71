"""The SecAgg+ neighbour graph: a random k-regular graph (a Harary circulant on a seeded permutation)."""

from __future__ import annotations

import hashlib
import math


def default_neighbours(parties: int) -> int:
    """k = 2 * ceil(log2 n), capped at n - 1 (a complete graph for small n): logarithmic, as in Bell et al."""
    if parties <= 1:
        return 0
    return min(parties - 1, 2 * math.ceil(math.log2(parties)))


def default_threshold(neighbours: int) -> int:
    """A strict majority of the k + 1 holders of each secret (the party and its neighbours)."""
    return (neighbours + 1) // 2 + 1


def check_graph(parties: int, neighbours: int, threshold: int) -> None:
    """Raise ValueError naming the first impossible graph or threshold setting."""
    if parties < 2:
        raise ValueError(f"secure aggregation needs at least 2 parties, got {parties}")
    if not 1 <= neighbours <= parties - 1:
        raise ValueError(f"neighbours must be in 1..{parties - 1} for {parties} parties, got {neighbours}")
    if neighbours < parties - 1 and neighbours % 2:
        raise ValueError(f"neighbours must be even (or {parties - 1}, every other party), got {neighbours}")
    if not (neighbours + 1) // 2 + 1 <= threshold <= neighbours + 1:
        raise ValueError(f"threshold must be a strict majority of the {neighbours + 1} holders of a secret "
                         f"({(neighbours + 1) // 2 + 1}..{neighbours + 1}), got {threshold}: with less, a server "
                         "that tells parties different stories could collect both secrets of one party")


def _order(parties: list[int], seed: bytes) -> list[int]:
    return sorted(parties, key=lambda p: hashlib.sha256(seed + p.to_bytes(8, "big")).digest())


def neighbour_sets(parties: list[int], neighbours: int, seed: bytes) -> dict[int, frozenset[int]]:
    """Each party's k neighbours; every party can compute this itself from the public setup."""
    if neighbours >= len(parties) - 1:
        everyone = frozenset(parties)
        return {p: everyone - {p} for p in parties}
    ring = _order(parties, seed)
    half, n = neighbours // 2, len(ring)
    return {p: frozenset(ring[(i + d) % n] for d in range(-half, half + 1) if d) for i, p in enumerate(ring)}
