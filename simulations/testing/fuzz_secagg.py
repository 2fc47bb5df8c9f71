"""Secure-aggregation fuzzing (``secagg_targets``): every message a party or the coordinator parses in a SecAgg+
round (the setup, key lists, forwarded shares and unmask requests a party reads; the public keys, share bundles,
masked inputs, confirmations and unmask responses the coordinator reads) is taken from an honest four-party round
(unsigned, and signed with node identities), one party's copy is mutated (bytes; protobuf fields set to edge
values or to values from other messages; entries deleted, repeated, reordered; another party's message replayed)
and the round is run on live with everyone else honest. Clean outcomes: the party refuses (a ValueError), the
coordinator drops the sender or names it a culprit, or the round aborts (SecAggAbort: nothing is aggregated, as
the coordinator records it). An accepted message must leave the party's answer well-formed and safe (it reveals
only what the story it accepted allows) and the round's sum exact over its survivors, but for the changed masks
that ``SecAggTarget.inexact`` allows by design. Keys and seeds are fresh per process, so counts vary a little.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from protos.fedsqueeze.v1 import secagg_pb2
from simulations.testing.fuzz import FuzzReport, mutate_bytes, run_case
from strategies.secagg import common, graph, ring
from strategies.secagg.aggregator import Aggregator
from strategies.secagg.errors import SecAggAbort
from strategies.secagg.identity import SigningIdentity, TrustedIdentities, session_id, view_bytes
from strategies.secagg.party import Party

SECAGG_PARTIES = (11, 23, 35, 47)  # four parties: the default graph is complete, threshold 3
SECAGG_SEGMENTS = ((8, 16), (3, 5))
_COLLECT = {"keys": "collect_keys", "shares": "route_shares", "masked": "collect_masked",
            "confirm": "collect_confirmations", "unmask": "finish"}
_PARTY_STEP = {"shares": "share_keys", "masked": "masked_input", "confirm": "confirm", "unmask": "unmask"}
_SIGNED_STEPS = {"masked", "confirm"}  # the steps that take the node identity (the others the trusted list)


class SenderRefused(ValueError):
    """The coordinator refused the fuzzed party's message (named in its problems, or as a culprit) and the round
    went on without it."""


class RoundAborted(ValueError):
    """The round aborted (SecAggAbort) after the fuzzed message: nothing was aggregated."""


class CoordinatorCrashed(RuntimeError):
    """The coordinator raised something other than SecAggAbort, which its round loop does not handle."""


@dataclass
class SecAggTranscript:
    """One honest SecAgg+ round among ``SECAGG_PARTIES``, kept stage by stage so that a fuzz case can replay it up
    to one message, change that message and run the rest live: each party's saved state before and after each
    stage, what the server sent it (``requests``), what it answered (``replies``), and the aggregator just
    before it collected each stage's replies. Keys and seeds are fresh randomness, as in a real round."""

    setup: bytes
    inputs: dict[int, list[np.ndarray]]
    identities: dict[int, SigningIdentity] = field(default_factory=dict)
    trusted: TrustedIdentities | None = None
    before: dict[str, dict[int, bytes | None]] = field(default_factory=dict)
    after: dict[str, dict[int, bytes | None]] = field(default_factory=dict)
    requests: dict[str, dict[int, bytes]] = field(default_factory=dict)
    replies: dict[str, dict[int, bytes]] = field(default_factory=dict)
    aggregators: dict[str, Aggregator] = field(default_factory=dict)

    @property
    def stages(self) -> tuple[str, ...]:
        """The round's stages (signed keys add the confirmation stage)."""
        return ("keys", "shares", "masked", "confirm", "unmask") if self.identities else \
            ("keys", "shares", "masked", "unmask")

    def step(self, stage: str, party: int, state: bytes | None, request: bytes) -> tuple[bytes, bytes]:
        """``party``'s answer to ``request`` at ``stage`` from its saved ``state``, and its new state; the
        key stage starts the party from ``request`` (the setup)."""
        identity = self.identities.get(party)
        if stage == "keys":
            agent = Party.start(request, party, self.inputs[party])
            reply = agent.advertise_keys(identity)
        else:
            agent = Party.load(state or b"")
            extra = identity if stage in _SIGNED_STEPS else self.trusted
            reply = getattr(agent, _PARTY_STEP[stage])(request, extra)
        return reply, agent.save()


def _require(condition: bool, text: str) -> None:
    if not condition:
        raise AssertionError(text)


def _collect(aggregator: Aggregator, stage: str, replies: dict[int, bytes]) -> Any:
    """The aggregator's collection of one stage; only SecAggAbort may escape it (the coordinator's round loop
    handles nothing else)."""
    try:
        return getattr(aggregator, _COLLECT[stage])(replies)
    except SecAggAbort:
        raise
    except Exception as exc:
        raise CoordinatorCrashed(f"{_COLLECT[stage]} raised {type(exc).__name__}: {exc}") from exc


def _run_from(round_: SecAggTranscript, stage: str, aggregator: Aggregator, states: dict[int, bytes | None],
              replies: dict[int, bytes]) -> list[np.ndarray]:
    """Collect ``stage``'s ``replies``, then run the later stages live; a party that refuses (ValueError) stays
    silent, as its Flower error reply makes it. Returns the sums; SecAggAbort when the round aborts."""
    stages = round_.stages
    result = _collect(aggregator, stage, replies)
    for later in stages[stages.index(stage) + 1:]:
        answers = {}
        for party, request in result.items():
            try:
                answers[party], states[party] = round_.step(later, party, states[party], request)
            except ValueError:
                continue
        result = _collect(aggregator, later, answers)
    return result


def _secagg_inputs(seed: int) -> dict[int, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {p: [rng.integers(0, (1 << bits) // len(SECAGG_PARTIES), size=length, dtype=np.uint64)
                for length, bits in SECAGG_SEGMENTS] for p in SECAGG_PARTIES}


def plain_sum(inputs: dict[int, list[np.ndarray]], parties: list[int]) -> list[np.ndarray]:
    """The exact ring sum of ``parties``' inputs per segment: what an honest round must return."""
    out = []
    for index, (length, bits) in enumerate(SECAGG_SEGMENTS):
        total = np.zeros(length, dtype=np.uint64)
        for party in parties:
            total += inputs[party][index]
        out.append((total & np.uint64((1 << bits) - 1)).astype(ring.word_dtype(bits)))
    return out


def secagg_transcript(signed: bool, round_id: int) -> SecAggTranscript:
    """An honest round (with Ed25519 node identities and the confirmation stage when ``signed``), checked exact."""
    setup = common.make_setup(round_id, list(SECAGG_PARTIES), list(SECAGG_SEGMENTS), run=5)
    round_ = SecAggTranscript(setup, _secagg_inputs(round_id))
    if signed:
        round_.identities = {p: SigningIdentity(ed25519.Ed25519PrivateKey.generate()) for p in SECAGG_PARTIES}
        round_.trusted = TrustedIdentities({i.public_der: f"node-{p}" for p, i in round_.identities.items()})
    aggregator = Aggregator(setup)
    states: dict[int, bytes | None] = dict.fromkeys(SECAGG_PARTIES)
    result: Any = dict.fromkeys(SECAGG_PARTIES, setup)
    for stage in round_.stages:
        round_.aggregators[stage] = copy.deepcopy(aggregator)
        round_.before[stage], round_.requests[stage] = dict(states), result
        replies = {}
        for party, request in result.items():
            replies[party], states[party] = round_.step(stage, party, states[party], request)
        round_.after[stage], round_.replies[stage] = dict(states), replies
        result = getattr(aggregator, _COLLECT[stage])(replies)
    want = plain_sum(round_.inputs, list(SECAGG_PARTIES))
    _require(all(np.array_equal(g, w) for g, w in zip(result, want, strict=True)), "the honest round is not exact")
    return round_


@dataclass
class FieldPool:
    """Numbers and byte strings seen in honest messages of one kind, so that a field mutation can put a
    plausible value from elsewhere (another party's id, key, signature or share) where it does not belong."""

    numbers: list[int] = field(default_factory=list)
    blobs: list[bytes] = field(default_factory=list)

    def add(self, message: Message) -> None:
        """Every scalar of ``message`` and its sub-messages."""
        for spec, value in message.ListFields():
            values = list(value) if spec.is_repeated else [value]
            for item in values:
                if spec.message_type is not None:
                    self.add(item)
                elif isinstance(item, bytes):
                    self.blobs.append(item)
                elif not isinstance(item, bool):
                    self.numbers.append(int(item))


_MAX_INT = {FieldDescriptor.CPPTYPE_UINT32: 2**32 - 1, FieldDescriptor.CPPTYPE_UINT64: 2**64 - 1,
            FieldDescriptor.CPPTYPE_INT32: 2**31 - 1, FieldDescriptor.CPPTYPE_INT64: 2**63 - 1}


def _new_scalar(spec: FieldDescriptor, value: Any, rng: np.random.Generator, pool: FieldPool) -> Any:
    """Another value for a scalar field: an edge case, a neighbour of the old one, or one seen elsewhere."""
    if spec.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return not value
    if spec.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        old = bytes(value)
        options = [mutate_bytes(old, rng), b"", rng.bytes(len(old)), rng.bytes(32)]
        if pool.blobs:
            options.append(pool.blobs[int(rng.integers(len(pool.blobs)))])
        return options[int(rng.integers(len(options)))]
    top = _MAX_INT.get(spec.cpp_type, 2**31 - 1)
    old = int(value)
    options = [0, 1, min(top, old + 1), max(0, old - 1), top, int(rng.integers(1 << 31))]
    if pool.numbers:
        options.append(min(top, pool.numbers[int(rng.integers(len(pool.numbers)))]))
    return options[int(rng.integers(len(options)))]


def _mutate_repeated(items: Any, spec: FieldDescriptor, rng: np.random.Generator, pool: FieldPool) -> None:
    """Delete, duplicate, reorder, clear, extend or change one entry of a repeated field."""
    choice = int(rng.integers(6))
    composite = spec.message_type is not None
    if not items or choice == 4:  # extend
        if composite:
            added = items.add()
            if len(items) > 1:
                added.CopyFrom(items[int(rng.integers(len(items) - 1))])
        else:
            items.append(_new_scalar(spec, b"" if spec.cpp_type == FieldDescriptor.CPPTYPE_STRING else 0, rng,
                                     pool))
        return
    index = int(rng.integers(len(items)))
    if choice == 0:
        del items[index]
    elif choice == 1 and composite:
        items.add().CopyFrom(items[index])
    elif choice == 1:
        items.append(items[index])
    elif choice == 2:
        order = [copy.deepcopy(item) if composite else item for item in items][::-1]
        del items[:]
        items.extend(order)
    elif choice == 3:
        del items[:]
    elif composite:
        _mutate_fields(items[index], rng, pool, count=1)
    else:
        items[index] = _new_scalar(spec, items[index], rng, pool)


def _mutate_fields(message: Message, rng: np.random.Generator, pool: FieldPool, count: int) -> None:
    """Change ``count`` randomly chosen fields of ``message``, recursing into sub-messages."""
    fields = message.DESCRIPTOR.fields
    for _ in range(count):
        spec = fields[int(rng.integers(len(fields)))]
        value = getattr(message, spec.name)
        if spec.is_repeated:
            _mutate_repeated(value, spec, rng, pool)
        elif spec.message_type is not None:
            _mutate_fields(value, rng, pool, count=1)
        else:
            setattr(message, spec.name, _new_scalar(spec, value, rng, pool))


def mutate_secagg(payload: bytes, message_type: type[Message], rng: np.random.Generator, pool: FieldPool,
                  others: list[bytes]) -> bytes:
    """One mutation of an honest secure-aggregation message: random bytes, another party's (or another
    round's) message of the same kind replayed, one to three protobuf field changes, or byte mutations."""
    kind = int(rng.integers(10))
    if kind == 0:
        return rng.bytes(int(rng.integers(0, 2 * len(payload) + 16)))
    if kind == 1 and others:
        return others[int(rng.integers(len(others)))]
    if kind <= 5:
        message = message_type.FromString(payload)
        _mutate_fields(message, rng, pool, count=int(rng.integers(1, 4)))
        return message.SerializeToString()
    return mutate_bytes(payload, rng)


def _story(request: bytes) -> tuple[list[int], list[int]]:
    message = secagg_pb2.SecAggUnmaskRequest.FromString(request)
    return list(message.survivors), list(message.dropped)


def _check_story(agent: Party, survivors: list[int], dropped: list[int]) -> None:
    """What a party may accept as the survivor/dropped story: itself a survivor, at least t survivors, no party
    on both sides or repeated, none outside the setup."""
    _require(agent.me in survivors and len(set(survivors)) == len(survivors) >= agent.setup.threshold
             and len(set(dropped)) == len(dropped) and not set(survivors) & set(dropped)
             and set(survivors) | set(dropped) <= set(agent.setup.parties), f"accepted the story {survivors}/{dropped}")


def _check_keys_output(round_: SecAggTranscript, agent: Party, request: bytes, reply: bytes) -> None:
    setup = agent.setup
    parties = list(setup.parties)
    _require(agent.me in parties and parties == sorted(set(parties)), f"accepted a setup listing {parties[:8]}")
    try:
        graph.check_graph(len(parties), setup.message.neighbours, setup.threshold)
    except ValueError as exc:
        raise AssertionError(f"accepted an impossible graph: {exc}") from exc
    k = setup.message.neighbours
    _require(all(len(peers) == k and p not in peers and all(p in setup.neighbours[q] for q in peers)
                 for p, peers in setup.neighbours.items()), "accepted a setup whose graph is not k-regular")
    _require([n for n, _ in setup.segments] == [len(words) for words in round_.inputs[agent.me]],
             "accepted a setup whose segments do not fit the input")
    keys = secagg_pb2.SecAggPublicKeys.FromString(reply)
    _require((keys.round, keys.party) == (setup.round, agent.me) and len(keys.cipher_key) == len(keys.mask_key) == 32
             and keys.identity == agent.state.identity, "advertised malformed keys")


def _check_shares_output(round_: SecAggTranscript, agent: Party, request: bytes, reply: bytes) -> None:
    bundle = secagg_pb2.SecAggShareBundle.FromString(reply)
    receivers = [item.receiver for item in bundle.shares]
    kept = [entry.party for entry in agent.state.neighbour_keys.keys]
    _require(bundle.round == agent.setup.round and len(bundle.self_mask_commitment) == 32
             and all(item.sender == agent.me for item in bundle.shares) and receivers == kept
             and len(set(receivers)) == len(receivers) and set(receivers) <= agent.setup.neighbours[agent.me]
             and len(receivers) + 1 >= agent.setup.threshold, f"shared with {receivers} from a key list of {kept}")
    if agent.authenticated:  # the session id commits to exactly the advertisements this party saw (the graph of
        honest = secagg_pb2.SecAggKeyList.FromString(round_.requests["shares"][agent.me]).session  # 4 is complete)
        digests = {entry.party: entry.digest for entry in honest}
        seen = sorted({agent.me, *kept})
        _require(agent.state.session == session_id(agent.state.setup, [(p, digests[p]) for p in seen]),
                 "accepted a session list that is not the advertisements it saw (its signatures would bind to "
                 "another execution)")


def _check_masked_output(round_: SecAggTranscript, agent: Party, request: bytes, reply: bytes) -> None:
    message = secagg_pb2.SecAggMaskedInput.FromString(reply)
    peers = list(agent.state.mask_peers)
    _require((message.round, message.party) == (agent.setup.round, agent.me)
             and [len(s) for s in message.segments] == [(n * b + 7) // 8 for n, b in agent.setup.segments],
             "sent a malformed masked input")
    _require(len(set(peers)) == len(peers) and set(peers) <= agent.setup.neighbours[agent.me]
             and len(peers) + 1 >= agent.setup.threshold, f"masked with {peers}")
    _require(not agent.authenticated or list(message.mask_peers.peers) == peers, "signed other mask peers")


def _check_confirm_output(round_: SecAggTranscript, agent: Party, request: bytes, reply: bytes) -> None:
    survivors, dropped = _story(request)
    _check_story(agent, survivors, dropped)
    _require(agent.state.view == view_bytes(agent.state.setup, agent.state.session, agent.me, survivors, dropped),
             "confirmed another story than the one it was sent")
    _require(len(set(agent.state.mask_peers) & set(survivors)) >= agent.setup.threshold - 1,
             "confirmed a story that isolates its own input")


def _check_unmask_output(round_: SecAggTranscript, agent: Party, request: bytes, reply: bytes) -> None:
    survivors, dropped = _story(request)
    _check_story(agent, survivors, dropped)
    held = {s.sender: s for s in Party.load(round_.before["unmask"][agent.me] or b"").state.received}
    response = secagg_pb2.SecAggUnmaskResponse.FromString(reply)
    owners = [share.owner for share in response.shares]
    _require(len(set(owners)) == len(owners) and set(owners) <= set(held) & (set(survivors) | set(dropped)),
             f"revealed shares of {owners}")
    for share in response.shares:
        secret = held[share.owner].self_mask_share if share.self_mask else held[share.owner].mask_key_share
        _require(share.self_mask == (share.owner in survivors) and share.share == secret,
                 f"revealed the wrong secret of party {share.owner}")
    _require(not agent.authenticated or reply == round_.replies["unmask"][agent.me],
             "a signed party revealed other shares than for the story it confirmed")


_PARTY_CHECKS = {"keys": _check_keys_output, "shares": _check_shares_output, "masked": _check_masked_output,
                 "confirm": _check_confirm_output, "unmask": _check_unmask_output}


@dataclass
class SecAggTarget:
    """One kind of secure-aggregation message under fuzz: the stage it belongs to, who parses it (``party`` or
    ``coordinator``), its protobuf type, and the honest rounds whose copies get mutated.

    ``inexact`` says where an accepted mutation may leave the sum off by the masks it changed (never, by
    default: the sum must stay exact). ``"unsigned"``: in rounds without node identities, where a public key
    is not authenticated (a party's substituted mask key spoils only the pairs it is in; signed rounds refuse
    it). ``"any"``: also in signed rounds: forwarded shares a lying server withholds make the party mask
    without those peers, which honest parties cannot tell from peers that dropped (the server spoils its own
    sum, and learns nothing)."""

    name: str
    stage: str
    parser: str
    message_type: type[Message]
    rounds: list[SecAggTranscript]
    inexact: str = ""
    pool: FieldPool = field(default_factory=FieldPool)

    def __post_init__(self) -> None:
        for round_ in self.rounds:
            for payload in self.honest(round_).values():
                self.pool.add(self.message_type.FromString(payload))

    def honest(self, round_: SecAggTranscript) -> dict[int, bytes]:
        """The round's honest messages of this kind, by party (sent to it, or sent by it)."""
        return (round_.requests if self.parser == "party" else round_.replies)[self.stage]

    def case(self, rng: np.random.Generator) -> Callable[[], str]:
        """One fuzz case: a round, a party and a mutation of its message; run it with the rest honest."""
        round_ = self.rounds[int(rng.integers(len(self.rounds)))]
        party = SECAGG_PARTIES[int(rng.integers(len(SECAGG_PARTIES)))]
        others = [m for r in self.rounds for p, m in self.honest(r).items() if r is not round_ or p != party]
        payload = mutate_secagg(self.honest(round_)[party], self.message_type, rng, self.pool, others)
        return lambda: self.run(round_, party, payload)

    def run(self, round_: SecAggTranscript, party: int, payload: bytes) -> str:
        """``round_`` replayed with ``payload`` as ``party``'s message of this kind and run on live; returns the
        kind of acceptance, raises a ValueError for a clean rejection and anything else for a failure."""
        return (_party_case if self.parser == "party" else _coordinator_case)(self, round_, party, payload)


def _party_case(target: SecAggTarget, round_: SecAggTranscript, party: int, payload: bytes) -> str:
    """The party parses the mutated message (a ValueError is its refusal); what it answers must be well-formed
    and safe, and the round run on from there must end exact or aborted."""
    stage = target.stage
    reply, state = round_.step(stage, party, round_.before[stage][party], payload)
    _PARTY_CHECKS[stage](round_, Party.load(state), payload, reply)
    states = {**round_.after[stage], party: state}
    replies = {**round_.replies[stage], party: reply}
    aggregator = copy.deepcopy(round_.aggregators[stage])
    try:
        sums = _run_from(round_, stage, aggregator, states, replies)
    except SecAggAbort as exc:
        raise RoundAborted(str(exc)) from exc
    return _check_round(target, round_, party, payload, aggregator, sums)


def _coordinator_case(target: SecAggTarget, round_: SecAggTranscript, party: int, payload: bytes) -> str:
    """The coordinator collects the mutated message beside the honest ones and runs the round on: it must end
    exact (or exact but for the sender's own term) or aborted; a refused sender counts as a clean rejection."""
    stage = target.stage
    aggregator = copy.deepcopy(round_.aggregators[stage])
    known = len(aggregator.problems)
    try:
        sums = _run_from(round_, stage, aggregator, dict(round_.after[stage]),
                         {**round_.replies[stage], party: payload})
    except SecAggAbort as exc:
        raise RoundAborted(str(exc)) from exc
    label = _check_round(target, round_, party, payload, aggregator, sums)
    named = re.compile(rf"party {party}\b")
    if party in aggregator.culprits or any(named.match(p) for p in aggregator.problems[known:]):
        raise SenderRefused(f"party {party}'s {target.name} refused; the round went on without it")
    return label


def _check_round(target: SecAggTarget, round_: SecAggTranscript, party: int, payload: bytes,
                 aggregator: Aggregator, sums: list[np.ndarray]) -> str:
    """Sums that are well-formed and exact over the survivors (for a mutated masked input that was summed: exact
    plus exactly the change made to it); where ``target.inexact`` allows it, a surviving party whose message
    differs from its honest one may have changed masks (see SecAggTarget)."""
    survivors = aggregator.survivors
    _require(len(sums) == len(SECAGG_SEGMENTS) and all(
        s.shape == (n,) and s.dtype == ring.word_dtype(b) and int(s.max(initial=0)) >> b == 0
        for s, (n, b) in zip(sums, SECAGG_SEGMENTS, strict=False)), "malformed sums")
    _require(set(survivors) <= set(SECAGG_PARTIES) and len(survivors) >= aggregator.setup.threshold
             and not set(survivors) & set(aggregator.dropped), f"survivors {survivors}, dropped {aggregator.dropped}")
    want = plain_sum(round_.inputs, survivors)
    if target.parser == "coordinator" and target.stage == "masked" and party in survivors:
        want = _shifted(want, payload, target.honest(round_)[party])
    if all(np.array_equal(g, w) for g, w in zip(sums, want, strict=True)):
        return "accepted"
    allowed = target.inexact == "any" or (target.inexact == "unsigned" and not round_.identities)
    honest = target.message_type.FromString(target.honest(round_)[party])
    if allowed and party in survivors and target.message_type.FromString(payload) != honest:
        return "accepted (masks changed: sum not exact)"
    raise AssertionError(f"a wrong sum was returned silently (survivors {survivors}, fuzzed party {party})")


def _shifted(want: list[np.ndarray], mutated: bytes, honest: bytes) -> list[np.ndarray]:
    """``want`` plus the change from the honest masked input to the mutated one, per segment, in the ring."""
    new, old = (secagg_pb2.SecAggMaskedInput.FromString(m).segments for m in (mutated, honest))
    out = []
    for total, a, b, (n, bits) in zip(want, new, old, SECAGG_SEGMENTS, strict=True):
        out.append((total + ring.unpack(a, n, bits) - ring.unpack(b, n, bits)) & common.ring_mask(bits))
    return out


@functools.cache
def secagg_targets() -> dict[str, SecAggTarget]:
    """Every message a party or the coordinator parses in a SecAgg+ round, with honest rounds (one unsigned, one
    with node identities and the confirmation stage) to mutate; built once per process."""
    plain, signed = secagg_transcript(signed=False, round_id=7), secagg_transcript(signed=True, round_id=8)
    both, pb = [plain, signed], secagg_pb2
    specs = [("secagg-setup", "keys", "party", pb.SecAggSetup, both, ""),
             ("secagg-key-list", "shares", "party", pb.SecAggKeyList, both, "unsigned"),
             ("secagg-forwarded-shares", "masked", "party", pb.SecAggShareBundle, both, "any"),
             ("secagg-confirm-request", "confirm", "party", pb.SecAggUnmaskRequest, [signed], ""),
             ("secagg-unmask-request", "unmask", "party", pb.SecAggUnmaskRequest, both, ""),
             ("secagg-public-keys", "keys", "coordinator", pb.SecAggPublicKeys, both, "unsigned"),
             ("secagg-share-bundle", "shares", "coordinator", pb.SecAggShareBundle, both, ""),
             ("secagg-masked-input", "masked", "coordinator", pb.SecAggMaskedInput, both, ""),
             ("secagg-confirmation", "confirm", "coordinator", pb.SecAggConfirmation, [signed], ""),
             ("secagg-unmask-response", "unmask", "coordinator", pb.SecAggUnmaskResponse, both, "")]
    return {name: SecAggTarget(name, stage, parser, kind, rounds, inexact)
            for name, stage, parser, kind, rounds, inexact in specs}


def _label(result: object) -> str:
    return str(result)


def fuzz_secagg(target: SecAggTarget, cases: int, seed: int = 0) -> FuzzReport:
    """Run ``cases`` mutated messages of ``target``'s kind, each in an otherwise honest round (see the module
    notes: a clean refusal, a refused sender or an aborted round are rejections; anything else must leave the
    round exact)."""
    rng = np.random.default_rng(seed)
    report = FuzzReport(target.name)
    for _ in range(cases):
        run_case(report, target.case(rng), _label)
    return report
