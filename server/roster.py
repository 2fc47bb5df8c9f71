"""Which nodes a round samples from. Nodes come and go while a run lasts: a SuperNode is restarted (with its
registered key it keeps its node id; without one Flower gives it a new id), a node connects late, a machine dies
and the SuperLink stops listing it once its heartbeats stop. Each round asks the SuperLink who is online: nodes
that joined are enrolled like the first ones (their partition, when the run samples) and take their place in the
partition order, replacing a node that held the same partition; nodes no longer online are not sampled (they come
back into the draw when they return). While membership does not change, the draw is exactly the first round's."""

from __future__ import annotations

import logging

from flwr.serverapp import Grid

from server.enrolment import Enrolment, enrol

log = logging.getLogger("fedsqueeze")


def updated_enrolment(grid: Grid, known: Enrolment, online: set[int], samples: bool, timeout_s: float
                      ) -> Enrolment:
    """``known`` with the nodes in ``online`` it has not seen enrolled (when the run ``samples``) and merged into its
    order; a joined node holding a known node's partition replaces it."""
    joined = sorted(online - set(known.order))
    if not joined:
        return known
    fresh = enrol(grid, joined, timeout_s) if samples else Enrolment(order=joined)
    replaced = {node for node, partition in known.partitions.items() if partition in fresh.partitions.values()}
    partitions = {**{n: p for n, p in known.partitions.items() if n not in replaced}, **fresh.partitions}
    order = sorted([n for n in known.order if n not in replaced] + joined,
                   key=lambda n: (n not in partitions, partitions.get(n, 0), n))
    log.info("nodes joined: %s%s", ", ".join(map(str, joined)),
             f" (replacing {', '.join(map(str, sorted(replaced)))}: same partition)" if replaced else "")
    return Enrolment(order, partitions, [*known.problems, *fresh.problems])


def online_in_order(order: list[int], online: set[int]) -> list[int]:
    """The nodes of ``order`` that are online now, in that order."""
    return [node for node in order if node in online]
