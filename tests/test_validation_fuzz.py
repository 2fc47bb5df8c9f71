"""Validation at the door: every decoder and the coordinator's reply handler, fed mutated and random payloads,
either rejects cleanly (a ValueError naming the problem) or returns an update that meets the expected layout; every
secure-aggregation message, mutated in an otherwise honest round, is refused cleanly (by the party, by the
coordinator dropping its sender, or by an aborted round) or leaves the round's sum exact."""

from __future__ import annotations

import math
import struct

import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.federation import ClientReply, collect_replies, read_reply
from server.run_config import resolve
from simulations.testing.fuzz import fuzz
from simulations.testing.fuzz_codecs import (
    FUZZ_DIGEST,
    FUZZ_LAYOUT,
    FUZZ_ROUND,
    FUZZ_SEED,
    accept_dense,
    codec_targets,
    fuzz_update,
    meets_layout,
    reply_content,
)
from simulations.testing.fuzz_secagg import SECAGG_PARTIES, SenderRefused, fuzz_secagg, secagg_targets
from strategies import messages
from strategies.codecs import UpdateRejected, compeft, dense
from strategies.codecs.envelope import seal_body
from strategies.codecs.registry import decode_update
from strategies.secagg.aggregator import Aggregator

LAYOUT, ROUND, SEED = FUZZ_LAYOUT, FUZZ_ROUND, FUZZ_SEED
CASES = 1500  # per decoder; benchmarks/robustness.py runs more
DECODERS = codec_targets()
_update, _meets_layout = fuzz_update, meets_layout


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_every_decoder_rejects_mutated_payloads_cleanly(name: str) -> None:
    seeds, decode = DECODERS[name]
    report = fuzz(name, decode, seeds, cases=CASES, seed=1, check=_meets_layout)
    assert report.cases == CASES and not report.failures, report.failures[:5]
    assert report.rejected > CASES // 2  # most mutations must be caught, not silently decoded
    _meets_layout(decode(seeds[0]))  # and the valid payload still decodes


@pytest.mark.parametrize("codec", ["dense", "compeft", "ferret"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600))
def test_random_bytes_are_rejected_by_every_codec(codec: str, data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_update(codec, data, expected_round=ROUND, expected_layout=LAYOUT, expected_seed=SEED)


_reply_content, _accept, DIGEST = reply_content, accept_dense, FUZZ_DIGEST


def test_the_reply_handler_names_each_hand_made_bad_payload() -> None:
    good = dense.encode(_update(), round_id=ROUND)
    update, weight, loss = read_reply(_reply_content(good, DIGEST), _accept, DIGEST, ClientReply(0))
    assert weight == 32 and loss == 0.5 and set(update) == set(LAYOUT)
    wrong_shape = dense.encode({**_update(), "head.bias": torch.zeros(4)}, round_id=ROUND)
    marked = dense.encode({**_update(), "head.bias": torch.tensor([0.0, 12345.0, 1.0])}, round_id=ROUND)
    marker = struct.pack("<f", 12345.0)
    assert marked[:-5].count(marker) == 1  # a client's encoder refuses NaN: forge one into a sealed payload
    nan = seal_body(marked[:-5].replace(marker, struct.pack("<f", math.nan)))
    out_of_range = compeft.encode(_update(), density=0.05, round_id=ROUND)
    cases = {
        "wrong shape": (wrong_shape, {}, "shape"),
        "NaN": (nan, {}, "NaN"),
        "truncated protobuf": (good[: len(good) // 2], {}, "truncated"),
        "replay of last round": (dense.encode(_update(), round_id=ROUND - 1), {}, f"round {ROUND - 1}"),
        "another codec": (out_of_range, {}, "codec"),
        "stale global state": (good, {"state-digest-48": 1}, "digest differs"),
        "infinite weight": (good, {"num-examples": math.inf}, "num-examples"),
        "NaN loss": (good, {"train-loss": math.nan}, "train-loss"),
    }
    for what, (payload, metrics, reason) in cases.items():
        with pytest.raises(UpdateRejected, match=reason):
            read_reply(_reply_content(payload, DIGEST, **metrics), _accept, DIGEST, ClientReply(0))
        assert what
    missing = RecordDict({messages.UPDATE: ConfigRecord({messages.ENCODED_UPDATE: good})})
    with pytest.raises(UpdateRejected, match="lacks"):
        read_reply(missing, _accept, DIGEST, ClientReply(0))


def test_the_reply_handler_survives_fuzzed_payloads_and_metrics() -> None:
    seeds = [dense.encode(_update(), round_id=ROUND)]

    def handle(payload: bytes) -> object:
        return read_reply(_reply_content(payload, DIGEST), _accept, DIGEST, ClientReply(0))[0]

    report = fuzz("reply handler", handle, seeds, cases=CASES, seed=2, check=_meets_layout)
    assert report.cases == CASES and not report.failures, report.failures[:5]


def test_norm_bound_size_limit_and_duplicates_are_rejected_with_the_rest_of_the_round_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    from server.aggregation import check_norm

    for name in ("_run_id", "_node_id", "_task_id"):  # what a SuperLink sets for a ServerApp process
        monkeypatch.setattr(TaskIdentity, name, 1)

    cfg = resolve({"preset": "encoder", "max-update-norm": 5.0, "max-update-bytes": 4096})
    check_norm(cfg, _update(0.1))
    with pytest.raises(UpdateRejected, match="exceeds max-update-norm"):
        check_norm(cfg, _update(100.0))
    big = dense.encode({"w": torch.zeros(2000)}, round_id=ROUND)
    with pytest.raises(UpdateRejected, match="exceeds the limit"):
        dense.decode(big, max_bytes=cfg.limits.max_bytes)

    def reply(node: int, payload: bytes) -> Message:
        instruction = Message(RecordDict(), dst_node_id=node, message_type="train")
        return Message(_reply_content(payload, DIGEST), reply_to=instruction)

    good = dense.encode(_update(), round_id=ROUND)
    replies = [reply(1, good), reply(2, good), reply(2, good), reply(3, good[:-9])]
    outcome = collect_replies(replies, {1: 0, 2: 0, 3: 0}, _accept, DIGEST)
    assert outcome.accepted == [1, 2]
    assert any("duplicate" in r for r in outcome.rejections) and any("node 3" in r for r in outcome.rejections)
    assert outcome.clients[3].status == "rejected" and outcome.clients[1].status == "ok"


SECAGG_CASES = 250  # per secure-aggregation message; benchmarks/robustness.py runs 10,000
SECAGG = secagg_targets()


@pytest.mark.parametrize("name", sorted(SECAGG))
def test_every_secure_aggregation_message_is_refused_cleanly_or_leaves_the_round_exact(name: str) -> None:
    target = SECAGG[name]
    report = fuzz_secagg(target, cases=SECAGG_CASES, seed=3)
    assert report.cases == SECAGG_CASES and not report.failures, report.failures[:5]
    assert report.rejected > SECAGG_CASES // 2, report.outcomes  # most mutations are caught
    party = SECAGG_PARTIES[0]
    for round_ in target.rounds:  # and the honest message still goes through, exact
        assert target.run(round_, party, target.honest(round_)[party]) == "accepted"


def test_the_secure_aggregation_fuzz_has_teeth(monkeypatch: pytest.MonkeyPatch) -> None:
    """A coordinator that returns a sum one off, or lets an exception other than SecAggAbort escape, fails."""
    finish, route = Aggregator.finish, Aggregator.route_shares

    def one_off(self: Aggregator, replies: dict[int, bytes]) -> list:
        sums = finish(self, replies)
        sums[1][0] ^= sums[1].dtype.type(1)
        return sums

    monkeypatch.setattr(Aggregator, "finish", one_off)
    report = fuzz_secagg(SECAGG["secagg-unmask-response"], cases=20, seed=4)
    assert len(report.failures) == 20 and "wrong sum" in report.failures[0]
    monkeypatch.setattr(Aggregator, "finish", finish)

    def crash(self: Aggregator, replies: dict[int, bytes]) -> dict[int, bytes]:
        requests = route(self, replies)
        if self.problems:
            raise IndexError("a refused share bundle broke the coordinator")
        return requests

    monkeypatch.setattr(Aggregator, "route_shares", crash)
    report = fuzz_secagg(SECAGG["secagg-share-bundle"], cases=20, seed=5)
    assert len(report.failures) > 10
    assert report.failures[0].startswith("CoordinatorCrashed: route_shares raised IndexError")


@pytest.mark.parametrize("name", ["secagg-public-keys", "secagg-masked-input"])
def test_a_signed_statement_that_does_not_verify_drops_its_sender_not_the_round(name: str) -> None:
    """Every honest party would refuse the whole round over keys or mask peers whose signature does not verify;
    the coordinator drops the sender instead, and the other three parties' sum stays exact (checked before
    SenderRefused is raised)."""
    target, party = SECAGG[name], SECAGG_PARTIES[1]
    signed = next(round_ for round_ in target.rounds if round_.identities)
    message = target.message_type.FromString(target.honest(signed)[party])
    statement = message if name == "secagg-public-keys" else message.mask_peers
    statement.signature = bytes(len(statement.signature))
    with pytest.raises(SenderRefused, match=f"party {party}"):
        target.run(signed, party, message.SerializeToString())
