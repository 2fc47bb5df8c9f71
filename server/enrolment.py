"""Enrolment, once before round 1 of a run that samples: each node says which partition it holds, and the nodes are
ordered by partition (then node id), so a seed samples the same partitions in every run and every resumed run,
whatever ids Flower hands the nodes (in simulation they are random). A run that trains every node each round needs
no order and sends no enrolment message.

Also here: the weight a client's update may carry. Every client runs the same local work each round (local-steps
batches of batch-size examples) and reports the examples it processed, so the coordinator knows the honest report
without asking anyone: a client's FedAvg weight is what it reported, at most that. A client claiming 1000x its
examples weighs what an honest client weighs; one reporting less only lowers its own weight.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from server.replies import ReplyStream
from strategies import messages
from strategies.message_types import QUERY

log = logging.getLogger("fedsqueeze")


@dataclass(frozen=True)
class Enrolment:
    """The sampling order, each enrolled node's partition, and what went wrong."""

    order: list[int]
    partitions: dict[int, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def samples(fraction_train: float, nodes: int) -> bool:
    """Whether a round trains fewer than all ``nodes`` (so the order nodes are drawn in must not hang on ids)."""
    return round(fraction_train * nodes) < nodes


def weight_ceiling(local_steps: int, batch_size: int) -> float:
    """The examples an honest client processes in a round, so the most its update may weigh."""
    return float(local_steps * batch_size)


def enrol(grid: Grid, node_ids: list[int], timeout_s: float) -> Enrolment:
    """Ask every node for its partition; nodes that do not answer are sampled after the others, by node id (a late
    node is still sampled; only its place in the order is arbitrary)."""
    out = [Message(content=RecordDict(), dst_node_id=node, message_type=QUERY) for node in node_ids]
    partitions: dict[int, int] = {}
    problems: list[str] = []
    stream = ReplyStream(grid, out, timeout_s)
    for reply in stream:
        node = stream.sender(reply)
        try:
            if reply.has_error():
                raise ValueError(reply.error.reason)
            partition = int(reply.content[messages.ENROLMENT]["partition-id"])
            if partition < 0:
                raise ValueError(f"partition {partition}")
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            problems.append(f"node {node}: enrolment failed: {exc}")
            continue
        partitions[node] = partition
    problems += [f"node {node}: no enrolment reply" for node in node_ids if node not in partitions
                 and not any(p.startswith(f"node {node}:") for p in problems)]
    for problem in problems:
        log.warning("enrolment: %s", problem)
    order = sorted(node_ids, key=lambda n: (n not in partitions, partitions.get(n, 0), n))
    return Enrolment(order, partitions, problems)
