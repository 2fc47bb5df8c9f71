"""The setup-replay attack on signed secure aggregation, as a lying coordinator mounts it against unmodified
parties: run one setup in several executions to harvest signatures, then isolate one target in a last execution.

1. *Harvest*: the same setup bytes run again and again (each a new Flower run, or a node that forgot them). In each
   execution every party shares and masks honestly, the coordinator asks the survivors to confirm one chosen
   survivor/dropped story, keeps the signed confirmations and the target's signed "I masked with all my
   neighbours", and abandons the round before anything is revealed.
2. *Isolate*: in the last execution the target is forwarded the shares of only t - 1 neighbours F (so it masks
   with those alone); the target is told "everyone survived", each f in F "the rest of F dropped", every other
   party "F dropped". Each unmask request carries the confirmations harvested for that party's story and the
   target's replayed statement. If the parties reveal, the target's self-mask seed and F's mask keys come back,
   and so does the target's input, alone.

``ReplayAttack.harvest`` and ``ReplayAttack.isolate`` drive Party objects directly; the Flower-path test in
``tests/test_secagg_replay.py`` feeds the same steps through the node's own handlers via ``Deliver``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from protos.fedsqueeze.v1 import secagg_pb2
from strategies.secagg import common, ring, shamir
from strategies.secagg.aggregator import Aggregator
from strategies.secagg.errors import SecAggError
from strategies.secagg.party import PAIR_MASK, SELF_MASK, Party

Story = tuple[tuple[int, ...], tuple[int, ...]]  # (survivors, dropped)
# One party's step: (party, step name, request or None) -> reply bytes; raises SecAggError/ValueError to refuse.
Deliver = Callable[[int, str, bytes | None], bytes]


def party_deliver(setup: bytes, inputs: dict[int, list[np.ndarray]], identities: dict | None, trusted
                  ) -> Deliver:
    """Fresh in-process parties for one execution of ``setup``; each step goes through the party's saved state,
    as on a Flower node."""
    states = {p: Party.start(setup, p, inputs[p]).save() for p in inputs}
    signs = {"advertise_keys", "masked_input", "confirm"}

    def deliver(party: int, step: str, request: bytes | None) -> bytes:
        state = Party.load(states[party])
        extra = (identities or {}).get(party) if step in signs else trusted
        out = state.advertise_keys(extra) if request is None else getattr(state, step)(request, extra)
        states[party] = state.save()
        return out

    return deliver


@dataclass
class Execution:
    """What the coordinator holds after the masked inputs of one execution came in."""

    aggregator: Aggregator
    masked: dict[int, bytes]
    refusals: dict[int, str] = field(default_factory=dict)


@dataclass
class ReplayAttack:
    """The attack on one setup; ``few`` are the t - 1 neighbours the target is left with."""

    setup: bytes
    target: int
    harvested: dict[Story, dict[int, secagg_pb2.SecAggConfirmation]] = field(default_factory=dict)
    statement: secagg_pb2.SecAggMaskPeers | None = None  # the target's signed "all my neighbours"
    seed_shares: list[tuple[int, bytes]] = field(default_factory=list)  # the target's seed shares last revealed

    def __post_init__(self) -> None:
        self.info = common.read_setup(self.setup)
        self.few = sorted(self.info.neighbours[self.target])[:self.info.threshold - 1]

    def stories(self) -> dict[int, Story]:
        """The story each party is told in the last execution."""
        everyone, few = set(self.info.parties), set(self.few)
        out = {}
        for party in self.info.parties:
            dropped = set() if party == self.target else few - {party} if party in few else few
            out[party] = (tuple(sorted(everyone - dropped)), tuple(sorted(dropped)))
        return out

    def needed_stories(self) -> list[Story]:
        """Every distinct story of the last execution: each needs its own harvest execution."""
        return sorted(set(self.stories().values()))

    def _execute(self, deliver: Deliver, starve_target: bool) -> Execution:
        """Keys, shares and masked inputs of one execution; with ``starve_target`` the target gets the shares of
        ``few`` only. A party that refuses a step stays silent from then on."""
        aggregator, refusals = Aggregator(self.setup), {}

        def stage(step: str, requests: dict[int, bytes | None]) -> dict[int, bytes]:
            replies = {}
            for party, request in requests.items():
                if party in refusals:
                    continue
                try:
                    replies[party] = deliver(party, step, request)
                except (SecAggError, ValueError) as exc:
                    refusals[party] = str(exc)
            return replies

        key_lists = aggregator.collect_keys(stage("advertise_keys", dict.fromkeys(self.info.parties)))
        forwarded = aggregator.route_shares(stage("share_keys", key_lists))
        if starve_target and self.target in forwarded:
            bundle = secagg_pb2.SecAggShareBundle.FromString(forwarded[self.target])
            kept = [item for item in bundle.shares if item.sender in self.few]
            forwarded[self.target] = secagg_pb2.SecAggShareBundle(round=bundle.round,
                                                                  shares=kept).SerializeToString()
        return Execution(aggregator, stage("masked_input", forwarded), refusals)

    def _request(self, story: Story, **fields) -> secagg_pb2.SecAggUnmaskRequest:
        return secagg_pb2.SecAggUnmaskRequest(round=self.info.round, survivors=story[0], dropped=story[1], **fields)

    def harvest(self, deliver: Deliver, story: Story) -> dict[int, str]:
        """One honest execution in which every survivor of ``story`` is asked to confirm it; the confirmations and
        the target's mask-peer statement are kept, the round abandoned. Returns the refusals."""
        execution = self._execute(deliver, starve_target=False)
        if self.target in execution.masked and self.statement is None:
            self.statement = secagg_pb2.SecAggMaskedInput.FromString(execution.masked[self.target]).mask_peers
        request = self._request(story).SerializeToString()
        kept = self.harvested.setdefault(story, {})
        for party in story[0]:
            if party in execution.refusals:
                continue
            try:
                kept[party] = secagg_pb2.SecAggConfirmation.FromString(deliver(party, "confirm", request))
            except (SecAggError, ValueError) as exc:
                execution.refusals[party] = str(exc)
        return execution.refusals

    def isolate(self, deliver: Deliver, signed: bool = True) -> tuple[list[np.ndarray] | None, dict[int, str]]:
        """The last execution; returns the target's input words if the parties revealed enough to rebuild them
        (else None) and every party's refusal."""
        execution = self._execute(deliver, starve_target=True)
        stories, refusals = self.stories(), execution.refusals
        current: dict[Story, list[secagg_pb2.SecAggConfirmation]] = {}
        if signed:
            for party, story in stories.items():
                if party in refusals:
                    continue
                try:
                    reply = deliver(party, "confirm", self._request(story).SerializeToString())
                    current.setdefault(story, []).append(secagg_pb2.SecAggConfirmation.FromString(reply))
                except (SecAggError, ValueError) as exc:
                    refusals[party] = str(exc)
        statements = {p: secagg_pb2.SecAggMaskedInput.FromString(data).mask_peers
                      for p, data in execution.masked.items()}
        if self.statement is not None:
            statements[self.target] = self.statement  # the replayed "all my neighbours"
        revealed: dict[int, secagg_pb2.SecAggUnmaskResponse] = {}
        for party, story in stories.items():
            if party in refusals:
                continue
            confirmations = {**self.harvested.get(story, {}), **{c.party: c for c in current.get(story, [])}}
            request = self._request(story, confirmations=[confirmations[p] for p in sorted(confirmations)],
                                    mask_peers=[statements[p] for p in story[0] if p in statements and signed])
            try:
                revealed[party] = secagg_pb2.SecAggUnmaskResponse.FromString(
                    deliver(party, "unmask", request.SerializeToString()))
            except (SecAggError, ValueError) as exc:
                refusals[party] = str(exc)
        return self._recover(execution, revealed), refusals

    def _recover(self, execution: Execution, revealed: dict[int, secagg_pb2.SecAggUnmaskResponse]
                 ) -> list[np.ndarray] | None:
        """The target's input words per segment from its masked input, its self-mask seed and the mask keys of
        ``few``; None when the parties revealed too few shares of any of them."""
        if self.target not in execution.masked:
            return None
        self.seed_shares = []
        keys: dict[int, list[tuple[int, bytes]]] = {p: [] for p in self.few}
        for party, response in revealed.items():
            for share in response.shares:
                if share.self_mask and share.owner == self.target:
                    self.seed_shares.append((self.info.x(party), share.share))
                elif not share.self_mask and share.owner in keys:
                    keys[share.owner].append((self.info.x(party), share.share))
        t = self.info.threshold
        if len(self.seed_shares) < t or any(len(points) < t for points in keys.values()):
            return None
        message = secagg_pb2.SecAggMaskedInput.FromString(execution.masked[self.target])
        words = [ring.unpack(data, length, bits)
                 for data, (length, bits) in zip(message.segments, self.info.segments, strict=True)]
        self_masks = common.segment_masks(shamir.combine(self.seed_shares[:t], 32), self.info, SELF_MASK)
        words = [w - m for w, m in zip(words, self_masks, strict=True)]
        target_mask_key = execution.aggregator.keys[self.target].mask_key
        for peer, points in keys.items():
            seed = common.pair_seed(shamir.combine(points[:t], 32), target_mask_key, self.info.round, peer,
                                    self.target)
            masks = common.segment_masks(seed, self.info, PAIR_MASK)
            words = [w - m if self.target < peer else w + m for w, m in zip(words, masks, strict=True)]
        return [w & common.ring_mask(bits) for w, (_, bits) in zip(words, self.info.segments, strict=True)]
