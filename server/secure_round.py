"""The coordinator's secure-aggregation round: plan the round's protocol, drive its stages through Flower
messages, and return only the survivors' mean update."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from server.client_reply import ClientReply
from server.replies import ReplyStream
from server.run_config import RunConfig
from strategies import messages
from strategies.codecs.base import Aggregate
from strategies.message_types import SECAGG_STAGES, secagg_message_type
from strategies.messages import SecureRound
from strategies.secagg import audit, common
from strategies.secagg.aggregator import Aggregator
from strategies.secagg.errors import SecAggAbort
from strategies.secagg.ring import Quantizer
from strategies.secagg.updates import SecureEncoding, mean_update

log = logging.getLogger("fedsqueeze")
# Each secure-aggregation stage after the train message, and the Aggregator method that reads its replies.
STAGES = tuple(zip(SECAGG_STAGES, ("route_shares", "collect_masked", "collect_confirmations", "finish"), strict=True))


@dataclass
class SecurePlan:
    """One round's protocol setup, how updates become ring words, and the secure part of its train message."""

    setup: bytes
    encoding: SecureEncoding
    instructions: SecureRound

    @property
    def setup_bytes(self) -> int:
        """Bytes every party receives for the setup (and the codec's round parameter: ComPEFT's support)."""
        return len(self.setup) + len(self.instructions.codec_parameter)


@dataclass
class SecureResult:
    """What the protocol gave: the survivors' mean as the codec's aggregate, survivors and dropouts."""

    update: Aggregate | None = None
    survivors: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    aborted: str | None = None
    signed: bool = False  # the parties signed their keys: the round ran the malicious-server checks


def plan_round(cfg: RunConfig, round_id: int, parties: list[int], layout: dict[str, tuple[int, ...]],
               shared_seed: int | None, previous_update: dict[str, torch.Tensor] | None, run_id: int = 0
               ) -> SecurePlan:
    """The round's SecAggSetup over ``parties`` in Flower run ``run_id`` and the encoding every party must use."""
    codec = cfg.uplink.impl
    tag = f"fedsqueeze-support:{cfg.seed}:{round_id}".encode()
    support, coded = codec.secure_round_config(cfg.uplink.options, layout, previous_update, tag)
    encoding = SecureEncoding(settings=cfg.uplink, quantizer=Quantizer(cfg.secure.clip, cfg.secure.precision_bits),
                              parties=len(parties), layout=dict(layout), seed=shared_seed or 0, support=support)
    # The run config checked neighbours and threshold against this many clients per round.
    setup = common.make_setup(round_id, parties, encoding.segments(), neighbours=cfg.secure.neighbours,
                              threshold=cfg.secure.threshold, run=run_id)
    return SecurePlan(setup, encoding, SecureRound(setup, cfg.secure.clip, cfg.secure.precision_bits, coded))


def _exchange(grid: Grid, action: str, requests: dict[int, bytes], round_id: int, timeout: float,
              clients: dict[int, ClientReply], problems: list[str],
              on_reply: Callable[[int, bytes], None] | None = None) -> dict[int, bytes]:
    """Send one stage's requests and return the replies that came back as bytes; count bytes both ways.
    With ``on_reply``, each reply is handed to it as it arrives and not kept (the returned dict is empty)."""
    out = []
    for node, data in requests.items():
        clients[node].bytes_down += len(data)
        out.append(Message(content=RecordDict({messages.SECAGG: ConfigRecord({messages.SECAGG_INPUT: data})}),
                           dst_node_id=node, message_type=secagg_message_type(action), group_id=str(round_id)))
    replies: dict[int, bytes] = {}
    answered: set[int] = set()
    stream = ReplyStream(grid, out, timeout)
    for reply in stream:
        node = stream.sender(reply)
        if reply.has_error():
            problems.append(f"node {node}: {action} failed: {reply.error.reason}")
            continue
        try:
            data = reply.content[messages.SECAGG][messages.SECAGG_OUTPUT]
        except KeyError:
            problems.append(f"node {node}: {action} reply lacks its output")
            continue
        if not isinstance(data, bytes):
            problems.append(f"node {node}: {action} output is not bytes")
            continue
        clients[node].bytes_up += len(data)
        answered.add(node)
        if on_reply is None:
            replies[node] = data
        else:
            on_reply(node, data)
    missing = sorted(set(requests) - answered)
    if missing:
        problems.append(f"{action}: no usable reply from node(s) {missing}")
    return replies


def run_protocol(grid: Grid, plan: SecurePlan, keys: dict[int, bytes], round_id: int, timeout: float,
                 clients: dict[int, ClientReply]) -> SecureResult:
    """Stages 2-4 after the train replies brought ``keys``; a SecAggAbort becomes ``aborted`` (nothing applied)."""
    aggregator = Aggregator(plan.setup)
    result = SecureResult()
    try:
        requests = aggregator.collect_keys(keys)
        for action, method in STAGES:
            if method == "collect_confirmations" and not aggregator.authenticated:
                continue  # unsigned keys: an honest-but-curious round, no confirmation stage
            # Masked inputs (the size of an update each) go into the ring sum as they arrive; the rest are small.
            streamed = aggregator.add_masked if method == "collect_masked" else None
            replies = _exchange(grid, action, requests, round_id, timeout, clients, result.problems, streamed)
            if method == "finish":
                sums = aggregator.finish(replies)
            else:
                requests = getattr(aggregator, method)(replies)
    except SecAggAbort as exc:
        result.signed = aggregator.authenticated
        result.aborted = str(exc)
        result.problems.extend(aggregator.problems)
        return result
    result.problems.extend(aggregator.problems)
    result.signed = aggregator.authenticated
    result.survivors, result.dropped = aggregator.survivors, aggregator.dropped
    audit.record(f"round{round_id}-sum", sums, survivors=np.array(aggregator.survivors, dtype=np.uint64))
    count = len(aggregator.survivors)
    result.update = mean_update(plan.encoding, sums, count, round_id)
    return result

