"""Downlink: clients rebuild exactly the coordinator's global state from full or compressed messages."""

from __future__ import annotations

import pytest
import torch

from strategies.codecs import UpdateRejected, ferret
from strategies.codecs.registry import CodecSettings, codec_settings
from strategies.downlink import DELTAS, FULL, DownlinkMessage, GlobalState, OutOfSync, receive, state_digest

COMPEFT = codec_settings("compeft", density=0.1)


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"layer.lora_A.weight": torch.randn(8, 32, generator=generator),
            "layer.lora_B.weight": torch.zeros(32, 8)}


def _delta(round_id: int) -> dict[str, torch.Tensor]:
    return {name: t * 0.01 for name, t in _state(100 + round_id).items()}


def test_dense_downlink_sends_the_exact_state_every_time() -> None:
    planner = GlobalState(CodecSettings(), _state())
    for round_id in range(1, 4):
        message = planner.message_for(node_id=7)
        assert message.kind == FULL
        held = receive(message, "dense", None, None)
        assert state_digest(held) == state_digest(planner.state)
        planner.confirmed(7)
        planner.advance(_delta(round_id))
    expected = _state()
    for round_id in range(1, 4):
        expected = {n: expected[n] + _delta(round_id)[n] for n in expected}
    assert all(torch.equal(planner.state[n], expected[n]) for n in expected)


def test_compressed_downlink_keeps_regular_and_occasional_clients_bit_identical() -> None:
    planner = GlobalState(COMPEFT, _state())
    held: dict[int, tuple[dict[str, torch.Tensor] | None, int | None]] = {1: (None, None), 2: (None, None)}
    kinds: dict[int, list[str]] = {1: [], 2: []}
    for round_id in range(1, 6):
        sampled = [1] if round_id in (2, 3) else [1, 2]  # client 2 sits out rounds 2 and 3
        for node in sampled:
            message = planner.message_for(node)
            kinds[node].append(f"{message.kind}:{len(message.payloads)}")
            state = receive(message, "compeft", *held[node])
            held[node] = (state, message.version)
            assert all(torch.equal(state[n], planner.state[n]) for n in state)
            planner.confirmed(node)
        planner.advance(_delta(round_id))
    assert kinds[1] == ["full:1", "deltas:1", "deltas:1", "deltas:1", "deltas:1"]
    assert kinds[2] == ["full:1", "deltas:3", "deltas:1"]
    assert len(planner.message_for(1).payloads[0]) < len(planner.full_payload()) / 10
    assert sorted(planner.history) == [5], "payloads every client already holds are dropped"


def test_compressed_downlink_carries_its_error_into_later_rounds() -> None:
    planner = GlobalState(COMPEFT, _state())
    total = {n: torch.zeros_like(t) for n, t in _state().items()}
    for round_id in range(1, 6):
        applied = planner.advance(_delta(round_id))
        total = {n: total[n] + _delta(round_id)[n] for n in total}
        assert sum(int((t != 0).sum()) for t in applied.values()) <= 0.1 * 512 + 1
    # state = initial + sum(deltas) - residual, exactly up to float rounding
    for name, tensor in _state().items():
        torch.testing.assert_close(planner.state[name] + planner.residual[name], tensor + total[name],
                                   rtol=1e-5, atol=1e-6)


def test_forgotten_or_unknown_clients_get_the_full_state() -> None:
    planner = GlobalState(COMPEFT, _state())
    planner.confirmed(3)
    planner.advance(_delta(1))
    assert planner.message_for(3).kind == DELTAS
    planner.forget(3)
    assert planner.message_for(3).kind == FULL
    assert planner.message_for(99).kind == FULL


def test_client_refuses_what_it_cannot_apply() -> None:
    planner = GlobalState(COMPEFT, _state())
    start = receive(planner.message_for(1), "compeft", None, None)
    planner.confirmed(1)
    planner.advance(_delta(1))
    message = planner.message_for(1)
    with pytest.raises(OutOfSync, match="holds nothing"):
        receive(message, "compeft", None, None)
    with pytest.raises(OutOfSync, match="holds version 5"):
        receive(message, "compeft", start, 5)
    forged = DownlinkMessage(message.kind, message.payloads, message.base_version, message.version, "0" * 64)
    with pytest.raises(OutOfSync, match="digest differs"):
        receive(forged, "compeft", start, 0)
    truncated = DownlinkMessage(message.kind, [message.payloads[0][:-3]], 0, 1, message.digest)
    with pytest.raises(UpdateRejected):
        receive(truncated, "compeft", start, 0)
    assert state_digest(receive(message, "compeft", start, 0)) == message.digest


FERRET = codec_settings("ferret", dim=16, block_size=128)


def _ferret_aggregate(round_id: int, state: dict[str, torch.Tensor]) -> bytes:
    updates = [{n: t * 0.01 for n, t in _state(200 + 10 * round_id + c).items()} for c in range(3)]
    payloads = [ferret.encode(u, seed=1000 + round_id, dim=16, block_size=128, round_id=round_id) for u in updates]
    return ferret.combine(payloads, [0.5, 0.25, 0.25], round_id=round_id)


def test_ferret_aggregates_rebuild_bit_identically_on_every_client() -> None:
    planner = GlobalState(FERRET, _state())
    held: dict[int, tuple[dict[str, torch.Tensor] | None, int | None]] = {1: (None, None), 2: (None, None)}
    for round_id in range(1, 5):
        for node in ([1, 2] if round_id == 1 else [1]):
            message = planner.message_for(node)
            state = receive(message, "ferret", *held[node])
            assert all(torch.equal(state[n], planner.state[n]) for n in state)
            held[node] = (state, message.version)
            planner.confirmed(node)
        before = planner.state
        applied = planner.advance_encoded(_ferret_aggregate(round_id, planner.state))
        assert all(torch.equal(planner.state[n], before[n] + applied[n]) for n in before)
    message = planner.message_for(2)  # took version 0, sat out rounds 2-4: gets the four aggregates since then
    assert message.kind == DELTAS and len(message.payloads) == 4
    assert message.nbytes < 4 * (4 * 64 + 100) < 4 * 512  # 64 coefficients each, vs 512 fp32 for the state
    state = receive(message, "ferret", *held[2])
    assert all(torch.equal(state[n], planner.state[n]) for n in state)
    with pytest.raises(ValueError, match="advance_encoded"):
        planner.advance(_delta(9))


def test_with_a_known_base_newcomers_rebuild_from_version_zero() -> None:
    base = _state()
    planner = GlobalState(FERRET, base, known_base=True)
    first = planner.message_for(5)
    assert first.kind == DELTAS and first.payloads == [] and first.base_version == 0
    assert state_digest(receive(first, "ferret", None, None, base=base)) == first.digest
    for round_id in (1, 2, 3):
        planner.advance_encoded(_ferret_aggregate(round_id, planner.state))
    message = planner.message_for(6)
    assert message.kind == DELTAS and len(message.payloads) == 3 and message.base_version == 0
    state = receive(message, "ferret", None, None, base=base)
    assert all(torch.equal(state[n], planner.state[n]) for n in state)
    wrong_base = {n: t + 1 for n, t in base.items()}
    with pytest.raises(OutOfSync, match="digest differs"):
        receive(message, "ferret", None, None, base=wrong_base)
