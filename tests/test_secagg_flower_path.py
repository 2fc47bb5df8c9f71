"""The malicious-coordinator defences on the node's Flower path: each party is a Flower node — its keys and
pinned identities come from its node config, its protocol state lives in its Flower ``Context`` between messages,
and every stage is a Flower ``Message`` handled by the ClientApp's own handlers — while the coordinator lies.
A refusal is the exception the handler raises, which Flower returns to the coordinator as an error reply."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.app.message import make_message
from flwr.app.metadata import Metadata

from client.handlers import HANDLERS
from client.launch import IDENTITY_KEY, TRUSTED_NODES
from client.secure import encoding_for, start
from client.state_dir import STATE_DIR_KEY
from protos.fedsqueeze.v1 import secagg_pb2
from server.node_keys import generate_node_keys
from strategies import messages
from strategies.codecs.registry import CodecSettings
from strategies.messages import SecureRound, TrainInstructions
from strategies.secagg import common
from strategies.secagg.aggregator import Aggregator
from strategies.secagg.errors import SecAggAbort, SecAggError
from strategies.secagg.updates import mean_update

NODES = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]  # n = 10, k = 4, t = 3
TARGET = 15
LAYOUT = {"lora_A": (4, 16), "lora_B": (16, 4)}
Rewrite = Callable[[str, dict[int, bytes]], dict[int, bytes]]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Context]:
    """Every node's Flower context: its node key, the federation's pinned keys and its state directory in its node
    config."""
    folder = tmp_path_factory.mktemp("keys") / "node-keys"
    pairs = generate_node_keys(folder, len(NODES))
    states = tmp_path_factory.mktemp("node-state")
    return {node: Context(run_id=1, node_id=node, node_config={"partition-id": i, IDENTITY_KEY: str(pair.private_key),
                                                               TRUSTED_NODES: str(folder),
                                                               STATE_DIR_KEY: str(states / f"node-{i}")},
                          state=RecordDict(), run_config={})
            for i, (node, pair) in enumerate(zip(NODES, pairs, strict=True))}


def _deliver(action: str, node: int, data: bytes, context: Context) -> bytes:
    """One stage's message through the node's ClientApp handler, as a SuperNode hands it over."""
    metadata = Metadata(run_id=1, message_id=f"{action}-{node}", src_node_id=0, dst_node_id=node,
                        reply_to_message_id="", group_id="3", created_at=time.time(), ttl=600.0,
                        message_type=f"train.{action}")
    message = make_message(metadata, RecordDict({messages.SECAGG: ConfigRecord({messages.SECAGG_INPUT: data})}))
    reply = HANDLERS[f"train.{action}"](message, context)
    return reply.content[messages.SECAGG][messages.SECAGG_OUTPUT]  # type: ignore[return-value]


def _round(nodes: dict[int, Context], round_id: int, rewrite: Rewrite | None = None,
           drop_masked: frozenset[int] = frozenset(), refusals: dict[int, str] | None = None
           ) -> dict[str, torch.Tensor]:
    """One secure round over the nodes' handlers; returns the unmasked mean. Each node's refusal (the error its
    handler raised) goes into ``refusals``; that node then stays silent, as after a Flower error reply."""
    refusals = {} if refusals is None else refusals
    settings = CodecSettings()

    def instructions(setup: bytes) -> TrainInstructions:
        return TrainInstructions(round=round_id, task={}, uplink=settings, downlink=settings,
                                 clients_per_round=len(NODES), secure=SecureRound(setup, 0.05, 16))

    encoding = encoding_for(instructions(b""), LAYOUT, len(NODES))
    setup = common.make_setup(round_id, NODES, encoding.segments(), neighbours=4, threshold=3, run=1)
    generator = torch.Generator().manual_seed(round_id)
    updates = {node: {name: torch.randn(shape, generator=generator) * 0.01 for name, shape in LAYOUT.items()}
               for node in NODES}
    replies = {node: start(instructions(setup), nodes[node], LAYOUT, updates[node])[0] for node in NODES}
    aggregator = Aggregator(setup)
    requests = aggregator.collect_keys(replies)
    for action, method in (("secagg_share", "route_shares"), ("secagg_mask", "collect_masked"),
                           ("secagg_confirm", "collect_confirmations"), ("secagg_unmask", "finish")):
        requests = rewrite(action, requests) if rewrite is not None else requests
        replies = {}
        for node, data in requests.items():
            if node in refusals:
                continue
            try:
                replies[node] = _deliver(action, node, data, nodes[node])
            except SecAggError as exc:
                refusals[node] = str(exc)
        if action == "secagg_mask":
            replies = {node: data for node, data in replies.items() if node not in drop_masked}
        result = getattr(aggregator, method)(replies)
        requests = result
    return mean_update(encoding, result, len(aggregator.survivors), round_id).delta


def test_an_honest_round_through_the_nodes_handlers_is_exact_and_a_replayed_stage_refused(nodes) -> None:
    refusals: dict[int, str] = {}
    mean = _round(nodes, round_id=3, refusals=refusals)
    assert not refusals and set(mean) == set(LAYOUT)
    assert all(np.isfinite(t.numpy()).all() for t in mean.values())
    with pytest.raises(ValueError, match="no secure-aggregation round is under way"):
        _deliver("secagg_unmask", TARGET, b"", nodes[TARGET])  # the round is over: nothing left to reveal


def test_t_minus_1_forwarding_through_the_nodes_handlers_is_refused(nodes) -> None:
    info = common.read_setup(common.make_setup(4, NODES, [(1, 8)], neighbours=4, threshold=3))
    few = sorted(info.neighbours[TARGET])[:2]

    def rewrite(action: str, requests: dict[int, bytes]) -> dict[int, bytes]:
        if action == "secagg_mask":
            bundle = secagg_pb2.SecAggShareBundle.FromString(requests[TARGET])
            kept = [item for item in bundle.shares if item.sender in few]
            requests[TARGET] = secagg_pb2.SecAggShareBundle(round=bundle.round, shares=kept).SerializeToString()
        return requests

    refusals: dict[int, str] = {}
    with pytest.raises(SecAggAbort, match="verified shares"):
        _round(nodes, round_id=4, rewrite=rewrite, drop_masked=frozenset(few), refusals=refusals)
    holders = info.neighbours[TARGET] - set(few)
    assert set(refusals) == {TARGET} | holders
    assert "would expose its input alone" in refusals[TARGET]
    assert all(f"party {TARGET} masked its input with 2 neighbours" in refusals[node] for node in holders)


def test_different_stories_through_the_nodes_handlers_are_refused(nodes) -> None:
    info = common.read_setup(common.make_setup(5, NODES, [(1, 8)], neighbours=4, threshold=3))
    told: dict[int, bytes] = {}

    def rewrite(action: str, requests: dict[int, bytes]) -> dict[int, bytes]:
        if action == "secagg_confirm":  # every node its own story: it, its neighbours and the target survived
            for node in requests:
                survivors = sorted({node, TARGET} | info.neighbours[node])
                told[node] = secagg_pb2.SecAggUnmaskRequest(
                    round=5, survivors=survivors, dropped=[n for n in NODES if n not in survivors]).SerializeToString()
            return dict(told)
        if action == "secagg_unmask":
            confirmations = secagg_pb2.SecAggUnmaskRequest.FromString(next(iter(requests.values()))).confirmations
            out = {}
            for node in requests:
                request = secagg_pb2.SecAggUnmaskRequest.FromString(told[node])
                request.confirmations.extend(confirmations)
                out[node] = request.SerializeToString()
            return out
        return requests

    refusals: dict[int, str] = {}
    with pytest.raises(SecAggAbort, match="0 parties remain"):
        _round(nodes, round_id=5, rewrite=rewrite, refusals=refusals)
    assert set(refusals) == set(NODES)
    assert all("parties confirmed the survivor/dropped story" in r for r in refusals.values()), refusals
