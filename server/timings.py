"""Where a round's time went: each client's time from send to reply, how much of the round the slowest training
took, and which client held the round up (a straggler)."""

from __future__ import annotations

import statistics
from typing import Any

STRAGGLER_FACTOR = 2.0


def stragglers(reply_s: dict[Any, float], factor: float = STRAGGLER_FACTOR) -> list[tuple[Any, float]]:
    """Clients whose time to reply exceeds ``factor`` times the median of the *other* clients' times, each with
    that median (the other clients' median, so that two clients are enough to name one)."""
    found = []
    for key, seconds in reply_s.items():
        others = [s for other, s in reply_s.items() if other != key]
        if others:
            median = statistics.median(others)
            if seconds > factor * median:
                found.append((key, median))
    return found


def round_timings(clients: list[dict[str, Any]], round_s: float) -> dict[str, Any]:
    """A round's timing fields for metrics.jsonl from its client rows: the slowest reply and training, the
    training share of the round (slowest training over the round's wall time), and the stragglers."""
    replied = {(c.get("partition_id"), c["node_id"]): c["reply_s"] for c in clients if "reply_s" in c}
    trained = [c["train_s"] for c in clients if "train_s" in c]
    slow = stragglers(replied)
    return {
        "reply_s_max": max(replied.values()) if replied else None,
        "train_s_max": max(trained) if trained else None,
        "train_share": max(trained) / round_s if trained and round_s > 0 else None,
        "stragglers": [{"partition_id": partition, "node_id": node, "reply_s": replied[(partition, node)],
                        "others_median_s": median} for (partition, node), median in slow],
    }


def describe_straggler(straggler: dict[str, Any]) -> str:
    """``partition 2 (12.3 s; the others' median 4.1 s)`` for a progress line."""
    who = (f"partition {straggler['partition_id']}" if straggler["partition_id"] is not None
           else f"node {straggler['node_id']}")
    return f"{who} ({straggler['reply_s']:.1f} s; the others' median {straggler['others_median_s']:.1f} s)"
