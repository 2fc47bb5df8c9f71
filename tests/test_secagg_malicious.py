"""Secure aggregation against a coordinator that lies about dropouts: each attack is first shown to work where
the parties do not sign (the test has teeth), then refused or aborted, with its reason, when they hold node
identities; honest rounds with identities stay exact with up to n - t dropouts at every stage."""

from __future__ import annotations

import numpy as np
import pytest

from protos.fedsqueeze.v1 import secagg_pb2
from server.node_keys import generate_node_keys
from strategies.secagg import common, ring, shamir
from strategies.secagg.aggregator import Aggregator
from strategies.secagg.errors import SecAggAbort
from strategies.secagg.identity import SigningIdentity, TrustedIdentities
from strategies.secagg.party import PAIR_MASK, SELF_MASK
from tests.secagg_harness import Dropouts, plain_sum, random_inputs, run_round

SEGMENTS = [(257, 20)]
PARTIES = [3, 14, 15, 92, 65, 35, 89]  # n = 7, complete graph, t = 4: n - t = 3 dropouts tolerated
SPARSE = [*PARTIES, 101, 102, 103]  # n = 10, k = 4, t = 3
TARGET = 15


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[int, SigningIdentity], TrustedIdentities]:
    """Every party's node key and the federation's pinned list (as ``fedsqueeze certs --nodes`` writes them)."""
    folder = tmp_path_factory.mktemp("federation")
    pairs = generate_node_keys(folder / "node-keys", len(SPARSE))
    pinned = folder / "trusted-nodes.pub"
    pinned.write_text("".join(p.public_key.read_text() for p in pairs))
    return ({party: SigningIdentity.from_file(pair.private_key) for party, pair in zip(SPARSE, pairs, strict=True)},
            TrustedIdentities.from_file(pinned))


def _setup(round_id: int = 5) -> bytes:
    return common.make_setup(round_id, PARTIES, SEGMENTS, neighbours=6, threshold=4, run=9)


def _sparse_setup() -> bytes:
    return common.make_setup(2, SPARSE, SEGMENTS, neighbours=4, threshold=3, run=9)


def _signed(federation) -> dict:
    identities, trusted = federation
    return {"identities": identities, "trusted": trusted}


class Isolation:
    """The t - 1 forwarding attack: the target gets the shares of only t - 1 neighbours (so it masks with those
    alone), their masked inputs are then ignored and they are reported dropped, and the target's input is
    stripped of its self mask and of the pairwise masks of the 'dropped' few."""

    def __init__(self, setup: bytes) -> None:
        self.info = common.read_setup(setup)
        self.few = sorted(self.info.neighbours[TARGET])[:self.info.threshold - 1]
        self.seen: dict[str, dict[int, bytes]] = {}

    def rewrite(self, stage: str, requests: dict[int, bytes]) -> dict[int, bytes]:
        if stage == "masked":  # forward the target only the few neighbours' shares
            bundle = secagg_pb2.SecAggShareBundle.FromString(requests[TARGET])
            kept = [item for item in bundle.shares if item.sender in self.few]
            requests[TARGET] = secagg_pb2.SecAggShareBundle(round=bundle.round, shares=kept).SerializeToString()
        return requests

    def tamper(self, stage: str, replies: dict[int, bytes]) -> dict[int, bytes]:
        self.seen[stage] = dict(replies)
        if stage == "masked":  # the few "dropped": their masked inputs are thrown away
            return {p: data for p, data in replies.items() if p not in self.few}
        return replies

    def recover(self, aggregator: Aggregator) -> np.ndarray:
        """The target's input from its masked input and the shares the survivors revealed."""
        seeds, keys, seen = [], {p: [] for p in self.few}, self.seen
        for party, data in seen["unmask"].items():
            for share in secagg_pb2.SecAggUnmaskResponse.FromString(data).shares:
                if share.self_mask and share.owner == TARGET:
                    seeds.append((self.info.x(party), share.share))
                elif not share.self_mask and share.owner in keys:
                    keys[share.owner].append((self.info.x(party), share.share))
        (length, bits), = self.info.segments
        words = ring.unpack(secagg_pb2.SecAggMaskedInput.FromString(seen["masked"][TARGET]).segments[0], length, bits)
        words -= common.segment_masks(shamir.combine(seeds[:self.info.threshold], 32), self.info, SELF_MASK)[0]
        for peer, points in keys.items():
            secret = shamir.combine(points[:self.info.threshold], 32)
            seed = common.pair_seed(secret, aggregator.keys[TARGET].mask_key, self.info.round, peer, TARGET)
            mask = common.segment_masks(seed, self.info, PAIR_MASK)[0]
            words = words - mask if TARGET < peer else words + mask
        return words & common.ring_mask(bits)


def test_without_identities_t_minus_1_forwarding_isolates_one_input() -> None:
    setup = _setup()
    inputs = random_inputs(PARTIES, SEGMENTS, len(PARTIES), seed=1)
    attack, aggregator = Isolation(setup), Aggregator(setup)
    with pytest.raises(SecAggAbort):  # the sum fails (the target holds no survivor's share): the attacker
        run_round(setup, inputs, tamper=attack.tamper, rewrite=attack.rewrite, aggregator=aggregator)  # needs none
    assert aggregator.dropped == sorted(attack.few)
    assert np.array_equal(attack.recover(aggregator), inputs[TARGET][0])


def test_with_identities_t_minus_1_forwarding_is_refused(federation) -> None:
    """Complete graph: the target will not confirm a story that isolates it, and without it too few confirm.
    Sparse graph: enough others confirm, but every other holder of the target's seed refuses to reveal it."""
    setup = _setup()
    attack, refusals = Isolation(setup), {}
    with pytest.raises(SecAggAbort, match="3 survivors confirmed, 4 are needed"):
        run_round(setup, random_inputs(PARTIES, SEGMENTS, len(PARTIES), seed=1), tamper=attack.tamper,
                  rewrite=attack.rewrite, refusals=refusals, **_signed(federation))
    assert set(refusals) == {TARGET} and "would expose its input alone" in refusals[TARGET]

    setup = _sparse_setup()
    attack, refusals = Isolation(setup), {}
    with pytest.raises(SecAggAbort, match="verified shares"):
        run_round(setup, random_inputs(SPARSE, SEGMENTS, len(SPARSE), seed=1), tamper=attack.tamper,
                  rewrite=attack.rewrite, refusals=refusals, **_signed(federation))
    holders = attack.info.neighbours[TARGET] - set(attack.few)
    assert set(refusals) == {TARGET} | holders
    assert all("party 15 masked its input with 2 neighbours and the server says only 0 of them survived"
               in refusals[p] for p in holders)


def test_a_forged_list_of_mask_peers_does_not_verify(federation) -> None:
    setup = _sparse_setup()
    attack, refusals = Isolation(setup), {}

    def rewrite(stage: str, requests: dict[int, bytes]) -> dict[int, bytes]:
        requests = attack.rewrite(stage, requests)
        if stage == "unmask":  # claim the target masked with the survivors, keeping its signature
            for party, data in requests.items():
                request = secagg_pb2.SecAggUnmaskRequest.FromString(data)
                for statement in request.mask_peers:
                    if statement.party == TARGET:
                        statement.peers[:] = sorted(attack.info.neighbours[TARGET] - set(attack.few))
                requests[party] = request.SerializeToString()
        return requests

    with pytest.raises(SecAggAbort):
        run_round(setup, random_inputs(SPARSE, SEGMENTS, len(SPARSE)), tamper=attack.tamper, rewrite=rewrite,
                  refusals=refusals, **_signed(federation))
    holders = attack.info.neighbours[TARGET] - set(attack.few)
    assert all("the mask peers of party 15: the signature does not verify" in refusals[p] for p in holders)


def _stories(aggregator: Aggregator) -> dict[int, secagg_pb2.SecAggUnmaskRequest]:
    """A different, individually consistent story for each party: it and the target survived with two others,
    every other party dropped."""
    stories = {}
    others = [p for p in PARTIES if p != TARGET]
    for index, party in enumerate(PARTIES):
        pool = [p for p in others if p != party]
        survivors = {TARGET, party}
        for offset in range(len(pool)):
            if len(survivors) == 4:
                break
            survivors.add(pool[(index + 2 * offset) % len(pool)])
        survivors = sorted(survivors)
        stories[party] = secagg_pb2.SecAggUnmaskRequest(round=aggregator.setup.round, survivors=survivors,
                                                        dropped=[p for p in PARTIES if p not in survivors])
    return stories


def test_different_stories_for_different_parties_gather_too_few_confirmations(federation) -> None:
    setup = _setup()
    aggregator, refusals = Aggregator(setup), {}
    told: dict[int, secagg_pb2.SecAggUnmaskRequest] = {}

    def rewrite(stage: str, requests: dict[int, bytes]) -> dict[int, bytes]:
        if stage == "confirm":
            told.update(_stories(aggregator))
            return {p: told[p].SerializeToString() for p in requests}
        if stage == "unmask":  # each party's own story, with every confirmation the server collected
            confirmations = secagg_pb2.SecAggUnmaskRequest.FromString(next(iter(requests.values()))).confirmations
            out = {}
            for party in requests:
                request = secagg_pb2.SecAggUnmaskRequest()
                request.CopyFrom(told[party])
                request.confirmations.extend(confirmations)
                out[party] = request.SerializeToString()
            return out
        return requests

    with pytest.raises(SecAggAbort, match="0 parties remain"):
        run_round(setup, random_inputs(PARTIES, SEGMENTS, len(PARTIES)), rewrite=rewrite, refusals=refusals,
                  aggregator=aggregator, **_signed(federation))
    assert set(refusals) == set(PARTIES)
    assert all("parties confirmed the survivor/dropped story this party was told in this execution, 4 are needed"
               in reason for reason in refusals.values()), refusals


def test_a_majority_story_cannot_be_paired_with_another(federation) -> None:
    """Four parties are told 'the target survived', three 'the target dropped': the four reveal seeds (their
    story has the majority), the three refuse, so the target's mask key is never revealed."""
    setup = _setup()
    aggregator, refusals = Aggregator(setup), {}
    majority, minority = PARTIES[:4], PARTIES[4:]
    stories = {
        "survived": secagg_pb2.SecAggUnmaskRequest(round=5, survivors=PARTIES, dropped=[]),
        "dropped": secagg_pb2.SecAggUnmaskRequest(round=5, survivors=[p for p in PARTIES if p != TARGET],
                                                  dropped=[TARGET]),
    }

    def story_of(party: int) -> secagg_pb2.SecAggUnmaskRequest:
        return stories["survived" if party in majority else "dropped"]

    def rewrite(stage: str, requests: dict[int, bytes]) -> dict[int, bytes]:
        if stage == "confirm":
            return {p: story_of(p).SerializeToString() for p in requests if p != TARGET or p in majority}
        if stage == "unmask":
            confirmations = secagg_pb2.SecAggUnmaskRequest.FromString(next(iter(requests.values()))).confirmations
            out = {}
            for party in requests:
                request = secagg_pb2.SecAggUnmaskRequest()
                request.CopyFrom(story_of(party))
                request.confirmations.extend(confirmations)
                request.mask_peers.extend(secagg_pb2.SecAggUnmaskRequest.FromString(requests[party]).mask_peers)
                out[party] = request.SerializeToString()
            return out
        return requests

    run_round(setup, random_inputs(PARTIES, SEGMENTS, len(PARTIES)), rewrite=rewrite, refusals=refusals,
              aggregator=aggregator, **_signed(federation))
    assert set(refusals) == set(minority)
    assert all("3 parties confirmed" in reason for reason in refusals.values())


def test_skipping_the_confirmation_or_forging_confirmations_is_refused(federation) -> None:
    setup = _setup()
    for forgery, reason in (("skip", "needs stage 'survivors confirmed'"),
                            ("one-signer-four-times", "only 1 parties confirmed")):
        aggregator, refusals = Aggregator(setup), {}

        def rewrite(stage: str, requests: dict[int, bytes], forgery=forgery) -> dict[int, bytes]:
            if stage == "confirm" and forgery == "skip":  # nobody is asked to confirm
                return {}
            if stage == "unmask" and forgery == "one-signer-four-times":
                out = {}
                for party, data in requests.items():
                    request = secagg_pb2.SecAggUnmaskRequest.FromString(data)
                    first = request.confirmations[0]
                    del request.confirmations[:]
                    for other in request.survivors[:4]:  # one party's signature, relabelled as others'
                        forged = secagg_pb2.SecAggConfirmation()
                        forged.CopyFrom(first)
                        forged.party = other
                        request.confirmations.append(forged)
                    out[party] = request.SerializeToString()
                return out
            return requests

        if forgery == "skip":  # the honest aggregator insists on confirmations: go straight to unmasking
            def collect_confirmations(replies: dict[int, bytes], aggregator=aggregator) -> dict[int, bytes]:
                request = secagg_pb2.SecAggUnmaskRequest(round=5, survivors=aggregator.survivors,
                                                         dropped=aggregator.dropped)
                return dict.fromkeys(aggregator.survivors, request.SerializeToString())
            aggregator.collect_confirmations = collect_confirmations  # type: ignore[method-assign]
        with pytest.raises(SecAggAbort):
            run_round(setup, random_inputs(PARTIES, SEGMENTS, len(PARTIES)), rewrite=rewrite, refusals=refusals,
                      aggregator=aggregator, **_signed(federation))
        assert set(refusals) == set(PARTIES) and all(reason in r for r in refusals.values()), (forgery, refusals)


@pytest.mark.parametrize("stage", ["before_keys", "before_shares", "before_masked", "before_confirm",
                                   "before_unmask"])
def test_honest_rounds_with_identities_stay_exact_with_n_minus_t_dropouts(federation, stage: str) -> None:
    setup = _setup()
    inputs = random_inputs(PARTIES, SEGMENTS, len(PARTIES), seed=7)
    gone = {PARTIES[1], PARTIES[4], PARTIES[6]}
    sums, aggregator, _ = run_round(setup, inputs, Dropouts(**{stage: gone}), **_signed(federation))
    expected = sorted(p for p in PARTIES if stage in ("before_confirm", "before_unmask") or p not in gone)
    assert aggregator.survivors == expected
    assert np.array_equal(sums[0], plain_sum(inputs, expected, SEGMENTS)[0])


def test_a_sparse_round_needs_a_majority_of_all_parties_to_confirm(federation) -> None:
    """With k < n - 1 a strict majority of every invited party must confirm, on top of t per neighbourhood."""
    setup = _sparse_setup()
    assert common.confirmations_needed(common.read_setup(setup)) == 6
    inputs = random_inputs(SPARSE, SEGMENTS, len(SPARSE), seed=3)
    sums, _, _ = run_round(setup, inputs, Dropouts(before_unmask={SPARSE[0], SPARSE[5]}), **_signed(federation))
    assert np.array_equal(sums[0], plain_sum(inputs, SPARSE, SEGMENTS)[0])
    with pytest.raises(SecAggAbort, match="5 survivors confirmed, 6 are needed"):
        run_round(setup, inputs, Dropouts(before_confirm=set(SPARSE[:5])), **_signed(federation))
