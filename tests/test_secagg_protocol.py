"""SecAgg+ as pure functions: exact sums, dropout recovery, aborts, refusals, and what the server sees."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from protos.fedsqueeze.v1 import secagg_pb2
from strategies.secagg import common, graph, ring, shamir
from strategies.secagg.errors import SecAggAbort, SecAggError
from strategies.secagg.party import Party
from tests.secagg_harness import Dropouts, plain_sum, random_inputs, run_round

SEGMENTS = [(1000, 24), (3, 5)]


def _setup(n: int, neighbours: int | None = None, threshold: int | None = None, segments=SEGMENTS,
           round_id: int = 4) -> tuple[bytes, list[int]]:
    parties = [1000 + 7 * i for i in range(n)]
    return common.make_setup(round_id, parties, segments, neighbours=neighbours, threshold=threshold), parties


def _assert_exact(sums: list[np.ndarray], inputs, survivors: list[int], segments=SEGMENTS) -> None:
    for got, want, (_, bits) in zip(sums, plain_sum(inputs, survivors, segments), segments, strict=True):
        assert got.dtype == ring.word_dtype(bits) and np.array_equal(got, want)


@pytest.mark.parametrize("n", [2, 3, 10, 37, 100])
def test_sum_is_exact_without_dropouts(n: int) -> None:
    setup, parties = _setup(n)
    inputs = random_inputs(parties, SEGMENTS, n, seed=n)
    sums, aggregator, _ = run_round(setup, inputs)
    assert aggregator.survivors == parties and not aggregator.dropped
    _assert_exact(sums, inputs, parties)


def test_full_ring_width_sums_wrap_exactly() -> None:
    segments = [(500, 64), (500, 33), (500, 1)]
    setup, parties = _setup(6, segments=segments)
    rng = np.random.default_rng(1)
    inputs = {p: [rng.integers(0, 1 << 63, size=500, dtype=np.uint64) * np.uint64(2) + np.uint64(1),
                  rng.integers(0, 1 << 33, size=500, dtype=np.uint64), rng.integers(0, 2, size=500, dtype=np.uint64)]
              for p in parties}
    sums, _, _ = run_round(setup, inputs)
    _assert_exact(sums, inputs, parties, segments)


STAGES = ["before_keys", "before_shares", "before_masked", "before_unmask"]


@pytest.mark.parametrize("stage", STAGES)
def test_up_to_n_minus_t_dropouts_still_give_the_exact_sum(stage: str) -> None:
    setup, parties = _setup(10, neighbours=9, threshold=6)  # complete graph: tolerates 10 - 6 = 4 dropouts
    inputs = random_inputs(parties, SEGMENTS, 10, seed=3)
    gone = set(parties[2:6])
    sums, aggregator, _ = run_round(setup, inputs, Dropouts(**{stage: gone}))
    expected_survivors = [p for p in parties if p not in gone or stage == "before_unmask"]
    assert aggregator.survivors == expected_survivors
    _assert_exact(sums, inputs, expected_survivors)


def test_dropouts_spread_over_every_stage_on_a_sparse_graph() -> None:
    setup, parties = _setup(40, neighbours=12)  # threshold 7 of 13 holders
    inputs = random_inputs(parties, SEGMENTS, 40, seed=5)
    drops = Dropouts(before_keys={parties[0]}, before_shares={parties[1]},
                     before_masked={parties[2], parties[3], parties[20]}, before_unmask={parties[4], parties[30]})
    sums, aggregator, _ = run_round(setup, inputs, drops)
    assert set(aggregator.dropped) == {parties[2], parties[3], parties[20]}
    assert parties[4] in aggregator.survivors and parties[30] in aggregator.survivors
    _assert_exact(sums, inputs, aggregator.survivors)


@pytest.mark.parametrize("stage", STAGES)
def test_one_dropout_too_many_aborts_with_a_clear_error(stage: str) -> None:
    setup, parties = _setup(10, neighbours=9, threshold=6)
    inputs = random_inputs(parties, SEGMENTS, 10, seed=3)
    with pytest.raises(SecAggAbort, match=r"threshold is 6|6 are needed"):
        run_round(setup, inputs, Dropouts(**{stage: set(parties[2:7])}))


def test_a_party_refuses_to_reveal_both_secrets_of_a_peer() -> None:
    setup, parties = _setup(5)
    inputs = random_inputs(parties, SEGMENTS, 5)
    states = {p: Party.start(setup, p, inputs[p]) for p in parties}
    from strategies.secagg.aggregator import Aggregator

    aggregator = Aggregator(setup)
    keys = aggregator.collect_keys({p: s.advertise_keys() for p, s in states.items()})
    forwarded = aggregator.route_shares({p: states[p].share_keys(keys[p]) for p in parties})
    aggregator.collect_masked({p: states[p].masked_input(forwarded[p]) for p in parties})
    me, peer = parties[0], parties[1]
    both = secagg_pb2.SecAggUnmaskRequest(round=4, survivors=parties, dropped=[peer]).SerializeToString()
    with pytest.raises(SecAggError, match="both survivors and dropped"):
        states[me].unmask(both)
    honest = secagg_pb2.SecAggUnmaskRequest(round=4, survivors=parties).SerializeToString()
    reply = secagg_pb2.SecAggUnmaskResponse.FromString(states[parties[2]].unmask(honest))
    assert all(share.self_mask for share in reply.shares)
    with pytest.raises(SecAggError, match="needs stage"):  # a second request, e.g. claiming a peer dropped
        states[parties[2]].unmask(secagg_pb2.SecAggUnmaskRequest(
            round=4, survivors=[p for p in parties if p != peer], dropped=[peer]).SerializeToString())
    too_few = secagg_pb2.SecAggUnmaskRequest(round=4, survivors=parties[3:]).SerializeToString()
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        states[parties[3]].unmask(too_few)


def test_stages_run_once_and_in_order() -> None:
    setup, parties = _setup(3)
    party = Party.start(setup, parties[0], random_inputs(parties, SEGMENTS, 3)[parties[0]])
    with pytest.raises(SecAggError, match="needs stage"):
        party.masked_input(b"")
    party.advertise_keys()
    with pytest.raises(SecAggError, match="needs stage"):
        party.advertise_keys()


def test_a_key_list_naming_one_neighbour_twice_is_refused() -> None:
    """Found by fuzzing: a neighbour listed twice (other keys each time) would be dealt two shares at one
    x-coordinate; the party names the problem instead."""
    setup, parties = _setup(4)
    inputs = random_inputs(parties, SEGMENTS, 4)
    states = {p: Party.start(setup, p, inputs[p]) for p in parties}
    keys = [secagg_pb2.SecAggPublicKeys.FromString(states[p].advertise_keys()) for p in parties]
    twice = secagg_pb2.SecAggPublicKeys()
    twice.CopyFrom(keys[2])
    twice.cipher_key, twice.mask_key = keys[3].mask_key, keys[3].cipher_key
    key_list = secagg_pb2.SecAggKeyList(round=4, keys=[keys[1], keys[2], twice])
    with pytest.raises(SecAggError, match=f"key list names party {parties[2]} twice"):
        states[parties[0]].share_keys(key_list.SerializeToString())


def test_malformed_replies_drop_their_sender_and_the_rest_still_sum_exactly() -> None:
    setup, parties = _setup(8, neighbours=7, threshold=5)
    inputs = random_inputs(parties, SEGMENTS, 8, seed=9)
    bad = parties[5]

    def tamper(stage: str, replies: dict[int, bytes]) -> dict[int, bytes]:
        if stage == "masked":
            replies[bad] = replies[bad][:-3]  # a truncated protobuf
        return replies

    sums, aggregator, _ = run_round(setup, inputs, tamper=tamper)
    assert bad in aggregator.dropped and any(str(bad) in p for p in aggregator.problems)
    _assert_exact(sums, inputs, aggregator.survivors)


def _false_share(liar: int):
    """A tamper that makes ``liar`` reveal a false share in its unmask response."""
    def tamper(stage: str, replies: dict[int, bytes]) -> dict[int, bytes]:
        if stage == "unmask":
            response = secagg_pb2.SecAggUnmaskResponse.FromString(replies[liar])
            response.shares[1].share = (12345).to_bytes(shamir.SHARE_BYTES, "big")
            replies[liar] = response.SerializeToString()
        return replies
    return tamper


def test_a_false_share_is_caught_and_its_revealer_named() -> None:
    setup, parties = _setup(5, neighbours=4, threshold=5)
    inputs = random_inputs(parties, SEGMENTS, 5)
    with pytest.raises(SecAggAbort, match=rf"parties \[{parties[0]}\] revealed false shares"):
        run_round(setup, inputs, tamper=_false_share(parties[0]))


def test_with_more_shares_than_the_threshold_a_false_share_is_set_aside_and_the_round_stays_exact() -> None:
    setup, parties = _setup(7, neighbours=6, threshold=4)
    inputs = random_inputs(parties, SEGMENTS, 7)
    drops = Dropouts(before_unmask={parties[6]})  # and one more dropout: 5 honest revealers remain for t = 4
    for liar in (parties[0], parties[3]):
        sums, aggregator, _ = run_round(setup, inputs, drops=drops, tamper=_false_share(liar))
        assert aggregator.culprits == {liar}
        assert any(f"party {liar} revealed a false share" in p for p in aggregator.problems)
        _assert_exact(sums, inputs, aggregator.survivors)


def test_the_servers_view_of_one_party_looks_uniform_and_reveals_no_input() -> None:
    bits, length = 8, 200_000
    setup, parties = _setup(3, segments=[(length, bits)])
    structured = np.zeros(length, dtype=np.uint64)  # the most structured input there is
    structured[::2] = 1
    inputs = {p: [structured.copy()] for p in parties}
    sums, _, seen = run_round(setup, inputs)
    assert np.array_equal(sums[0], structured * np.uint64(3))
    masked = secagg_pb2.SecAggMaskedInput.FromString(seen["masked"][parties[0]])
    words = ring.unpack(masked.segments[0], length, bits)
    counts = np.bincount(words.astype(np.int64), minlength=1 << bits)
    assert stats.chisquare(counts).pvalue > 1e-4, "masked words are not uniform"
    assert abs(np.corrcoef(words.astype(np.float64), structured.astype(np.float64))[0, 1]) < 0.02
    # No message from the party carries its input or a secret in the clear.
    packed_input = ring.pack(structured, bits)[:64]
    for stage, replies in seen.items():
        assert packed_input not in replies[parties[0]], f"{stage} reply carries the input"
    # One party's unmask reply holds at most one share of each secret: below the threshold of 2+.
    reply = secagg_pb2.SecAggUnmaskResponse.FromString(seen["unmask"][parties[0]])
    owners = [share.owner for share in reply.shares]
    assert len(owners) == len(set(owners))


def test_shamir_rebuilds_from_any_threshold_subset_and_not_from_fewer() -> None:
    secret = bytes(range(32))
    xs = list(range(1, 8))
    shares = shamir.split(secret, xs, 4)
    points = list(zip(xs, shares, strict=True))
    assert shamir.combine(points[3:], 32) == secret
    assert shamir.combine([points[0], points[2], points[4], points[6]], 32) == secret
    with pytest.raises(SecAggError):
        assert shamir.combine(points[:3], 32) != secret  # three points give a random field element


def test_graph_is_regular_symmetric_and_checked() -> None:
    parties = list(range(50))
    sets = graph.neighbour_sets(parties, 12, b"seed")
    assert all(len(s) == 12 and p not in s for p, s in sets.items())
    assert all(p in sets[q] for p, s in sets.items() for q in s)
    assert graph.default_neighbours(100) == 14 and graph.default_neighbours(5) == 4
    with pytest.raises(ValueError, match="strict majority"):
        graph.check_graph(10, 9, 5)
    with pytest.raises(ValueError, match="even"):
        graph.check_graph(10, 5, 4)


def test_pack_round_trips_and_checks_padding() -> None:
    rng = np.random.default_rng(0)
    for bits in (1, 5, 24, 32, 33, 64):
        words = rng.integers(0, 1 << min(bits, 63), size=101, dtype=np.uint64)
        data = ring.pack(words, bits)
        assert len(data) == (101 * bits + 7) // 8
        assert np.array_equal(ring.unpack(data, 101, bits), words)
    with pytest.raises(ValueError, match="bytes"):
        ring.unpack(b"\x00", 101, 5)
