"""Runs the SecAgg+ protocol among in-process parties, with dropouts at chosen stages (no Flower)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from strategies.secagg import common
from strategies.secagg.aggregator import Aggregator
from strategies.secagg.errors import SecAggError
from strategies.secagg.identity import SigningIdentity, TrustedIdentities
from strategies.secagg.party import Party


@dataclass
class Dropouts:
    """Parties that stop answering before each stage."""

    before_keys: set[int] = field(default_factory=set)
    before_shares: set[int] = field(default_factory=set)
    before_masked: set[int] = field(default_factory=set)
    before_confirm: set[int] = field(default_factory=set)
    before_unmask: set[int] = field(default_factory=set)


def run_round(setup: bytes, inputs: dict[int, list[np.ndarray]], drops: Dropouts | None = None,
              tamper=None, identities: dict[int, SigningIdentity] | None = None,
              trusted: TrustedIdentities | None = None, rewrite=None, refusals: dict[int, str] | None = None,
              aggregator: Aggregator | None = None
              ) -> tuple[list[np.ndarray], Aggregator, dict[str, dict[int, bytes]]]:
    """Run every stage; each party's state goes through save/load between stages, as on a Flower node. With
    ``identities`` each party signs its keys; with ``trusted`` each party checks its neighbours' signatures.
    ``tamper(stage, replies)`` changes what parties sent the server; ``rewrite(stage, requests)`` what the server
    sends the parties (a lying server). With ``refusals``, a party that refuses (SecAggError) is recorded there
    and treated as silent, as a Flower error reply is; without, the error propagates.

    Returns the sums, the aggregator, and every message the server received, by stage."""
    drops = drops or Dropouts()
    states = {p: Party.start(setup, p, inputs[p]).save() for p in inputs}
    seen: dict[str, dict[int, bytes]] = {}
    aggregator = aggregator or Aggregator(setup)

    def step(stage: str, gone: set[int], requests: dict[int, bytes | None], call: str) -> dict[int, bytes]:
        replies = {}
        if rewrite is not None:
            requests = rewrite(stage, requests)
        for party, request in requests.items():
            if party in gone or (refusals is not None and party in refusals):
                continue
            state = Party.load(states[party])
            identity = (identities or {}).get(party)
            extra = {"advertise_keys": {"identity": identity}, "share_keys": {"trusted": trusted},
                     "masked_input": {"identity": identity}, "confirm": {"identity": identity},
                     "unmask": {"trusted": trusted}}[call]
            try:
                replies[party] = getattr(state, call)(**extra) if request is None else \
                    getattr(state, call)(request, **extra)
            except SecAggError as exc:
                if refusals is None:
                    raise
                refusals[party] = str(exc)
                continue
            states[party] = state.save()
        if tamper is not None:
            replies = tamper(stage, replies)
        seen[stage] = replies
        return replies

    keys = aggregator.collect_keys(step("keys", drops.before_keys, dict.fromkeys(inputs), "advertise_keys"))
    forwarded = aggregator.route_shares(step("shares", drops.before_shares, keys, "share_keys"))
    requests = aggregator.collect_masked(step("masked", drops.before_masked, forwarded, "masked_input"))
    if aggregator.authenticated:
        requests = aggregator.collect_confirmations(step("confirm", drops.before_confirm, requests, "confirm"))
    sums = aggregator.finish(step("unmask", drops.before_unmask, requests, "unmask"))
    return sums, aggregator, seen


def random_inputs(parties: list[int], segments: list[tuple[int, int]], parties_total: int, seed: int = 0
                  ) -> dict[int, list[np.ndarray]]:
    """Words each below 2^bits / parties_total, so the sum of every party's words fits the ring."""
    rng = np.random.default_rng(seed)
    return {p: [rng.integers(0, max(1, (1 << bits) // parties_total), size=length, dtype=np.uint64)
                for length, bits in segments] for p in parties}


def plain_sum(inputs: dict[int, list[np.ndarray]], parties: list[int], segments: list[tuple[int, int]]
              ) -> list[np.ndarray]:
    """The sum of the given parties' inputs, per segment, in the ring."""
    out = []
    for index, (length, bits) in enumerate(segments):
        total = np.zeros(length, dtype=np.uint64)
        for p in parties:
            total += inputs[p][index]
        out.append(total & common.ring_mask(bits))
    return out
