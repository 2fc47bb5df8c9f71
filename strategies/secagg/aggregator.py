"""The coordinator's side of SecAgg+: route keys and shares, collect masked inputs, rebuild the masks of the
round, and return only the sum.

When the parties signed their keys (node identities), every key list also carries the session (the digest of every
accepted advertisement, which binds later signatures to this execution), and the round has one more stage: the
survivors confirm the survivor/dropped story by signing it (``collect_confirmations``), and the unmask request
carries those confirmations and the survivors' signed mask peers, which each party checks before revealing anything.
Every revealed share is checked against the digest its dealer published, so a party that reveals a false share
is named and set aside, and the secret is rebuilt from the honest shares when enough remain.

Every stage takes the replies that arrived (party -> bytes; a missing party has dropped out) and returns the
messages for the next stage. A malformed reply drops its sender, with the reason kept in ``problems``. When
fewer parties than the threshold remain, or a secret cannot be rebuilt from enough shares, the stage raises
SecAggAbort and nothing is returned.
"""

from __future__ import annotations

import hashlib

import numpy as np

from protos.fedsqueeze.v1 import secagg_pb2
from strategies.secagg import common, ring, shamir
from strategies.secagg.errors import SecAggAbort, SecAggError
from strategies.secagg.identity import advertisement_bytes, advertisement_digest, mask_peers_bytes, verify_signature
from strategies.secagg.party import PAIR_MASK, SELF_MASK


class Aggregator:
    """The server's protocol state for one round."""

    def __init__(self, setup: bytes) -> None:
        self.setup = common.read_setup(setup)
        self.setup_bytes = bytes(setup)  # what parties sign (SHA-256 of these exact bytes)
        self.keys: dict[int, secagg_pb2.SecAggPublicKeys] = {}
        self.commitments: dict[int, bytes] = {}
        self.outbox: dict[int, list[secagg_pb2.SecAggCiphertext]] = {}
        self.masked: set[int] = set()  # parties whose masked input is in ``masked_sum``
        self.masked_sum = [np.zeros(length, dtype=ring.word_dtype(bits)) for length, bits in self.setup.segments]
        self.problems: list[str] = []
        self.survivors: list[int] = []
        self.dropped: list[int] = []
        self.digests: dict[tuple[int, int], tuple[bytes, bytes]] = {}  # (owner, holder) -> (seed, key) digests
        self.mask_peers: dict[int, secagg_pb2.SecAggMaskPeers] = {}
        self.confirmations: dict[int, secagg_pb2.SecAggConfirmation] = {}
        self.culprits: set[int] = set()  # parties that revealed a false share
        self.authenticated = False  # the parties signed their keys: the round has the confirmation stage


    def _need(self, count: int, stage: str) -> None:
        if count < self.setup.threshold:
            raise SecAggAbort(f"secure aggregation round {self.setup.round} aborted at {stage}: {count} parties "
                              f"remain, the threshold is {self.setup.threshold}")

    def _known(self, replies: dict[int, bytes], allowed: set[int], stage: str) -> dict[int, bytes]:
        out = {}
        for party, data in replies.items():
            if party not in allowed:
                self.problems.append(f"party {party}: {stage} reply from a party not expected at this stage")
            else:
                out[party] = data
        return out

    def collect_keys(self, replies: dict[int, bytes]) -> dict[int, bytes]:
        """Stage 1 → 2: check each party's public keys (signed ones must verify under the identity they name: every
        peer would refuse the round over one that does not, so it drops its sender here); returns each party's
        SecAggKeyList of its neighbours."""
        for party, data in self._known(replies, set(self.setup.parties), "advertise-keys").items():
            try:
                keys = common.parse(secagg_pb2.SecAggPublicKeys, data, "public keys")
                if (keys.round, keys.party) != (self.setup.round, party):
                    raise SecAggError("public keys name another round or party")
                if len(keys.cipher_key) != common.KEY_BYTES or len(keys.mask_key) != common.KEY_BYTES:
                    raise SecAggError("public keys are not 32-byte X25519 keys")
                if keys.identity or keys.signature:
                    verify_signature(keys.identity, keys.signature, advertisement_bytes(
                        self.setup_bytes, party, keys.cipher_key, keys.mask_key), f"the keys of party {party}")
            except SecAggError as exc:
                self.problems.append(f"party {party}: {exc}")
                continue
            self.keys[party] = keys
        self._need(len(self.keys), "key advertisement")
        self.authenticated = any(keys.identity for keys in self.keys.values())  # once, not per masked input
        session = [secagg_pb2.SecAggKeyDigest(party=p, digest=advertisement_digest(
                       self.setup_bytes, p, self.keys[p].cipher_key, self.keys[p].mask_key, self.keys[p].identity))
                   for p in sorted(self.keys)] if self.authenticated else []
        return {party: secagg_pb2.SecAggKeyList(
                    round=self.setup.round,
                    keys=[self.keys[p] for p in sorted(self.setup.neighbours[party] & self.keys.keys())],
                    session=session,
                ).SerializeToString()
                for party in self.keys}

    def route_shares(self, replies: dict[int, bytes]) -> dict[int, bytes]:
        """Stage 2 → 3: check each party's share ciphertexts; returns, for every party that shared, the
        ciphertexts its neighbours that also shared addressed to it."""
        bundles: dict[int, secagg_pb2.SecAggShareBundle] = {}
        for party, data in self._known(replies, set(self.keys), "share-keys").items():
            try:
                bundle = common.parse(secagg_pb2.SecAggShareBundle, data, "share bundle")
                receivers = [item.receiver for item in bundle.shares]
                expected = self.setup.neighbours[party] & self.keys.keys()
                if bundle.round != self.setup.round or len(bundle.self_mask_commitment) != 32:
                    raise SecAggError("share bundle names another round or lacks its commitment")
                if any(item.sender != party for item in bundle.shares) or len(set(receivers)) != len(receivers) \
                        or set(receivers) != expected:
                    raise SecAggError("share bundle must hold one ciphertext from this party per neighbour")
                digests = {party: (bundle.own_self_mask_digest, bundle.own_mask_key_digest)}
                digests.update({item.receiver: (item.self_mask_digest, item.mask_key_digest) for item in bundle.shares})
                if any(len(seed) != 32 or len(key) != 32 for seed, key in digests.values()):
                    raise SecAggError("share bundle lacks the 32-byte digest of a share")
            except SecAggError as exc:
                self.problems.append(f"party {party}: {exc}")
                continue
            bundles[party] = bundle
            self.commitments[party] = bundle.self_mask_commitment
            self.digests.update({(party, holder): pair for holder, pair in digests.items()})
        self._need(len(bundles), "key sharing")
        self.outbox = {party: [] for party in bundles}
        for bundle in bundles.values():
            for item in bundle.shares:
                if item.receiver in self.outbox:
                    self.outbox[item.receiver].append(item)
        return {party: secagg_pb2.SecAggShareBundle(round=self.setup.round, shares=items).SerializeToString()
                for party, items in self.outbox.items()}

    def _check_mask_peers(self, party: int, statement: secagg_pb2.SecAggMaskPeers) -> None:
        """A signed round: the masked input carries mask peers the party signed with the identity it advertised,
        naming at least t - 1 distinct neighbours. Every party checks the same before revealing anything, so a
        statement that fails here would make them all refuse and abort the round: it drops its sender instead."""
        peers = list(statement.peers)
        if statement.party != party:
            raise SecAggError("masked input lacks this party's signed mask peers")
        if len(set(peers)) != len(peers) or not set(peers) <= self.setup.neighbours[party] \
                or len(peers) + 1 < self.setup.threshold:
            raise SecAggError(f"masked input's mask peers {peers[:8]} are not t - 1 or more distinct neighbours")
        keys = self.keys[party]
        verify_signature(keys.identity, statement.signature,
                         mask_peers_bytes(self.setup_bytes, party, keys.cipher_key, keys.mask_key, peers),
                         f"the mask peers of party {party}")

    def add_masked(self, party: int, data: bytes) -> None:
        """Stage 3, one reply: check a masked input and add it to the running ring sum, so the server holds one
        sum however many parties send (ring addition wraps, so the order does not matter). A bad or repeated
        input is refused (kept in ``problems``) and adds nothing."""
        if not self._known({party: data}, set(self.outbox) - self.masked, "masked-input"):
            return
        try:
            message = common.parse(secagg_pb2.SecAggMaskedInput, data, "masked input")
            if (message.round, message.party) != (self.setup.round, party):
                raise SecAggError("masked input names another round or party")
            if self.authenticated:
                self._check_mask_peers(party, message.mask_peers)
            if len(message.segments) != len(self.setup.segments):
                raise SecAggError(f"masked input has {len(message.segments)} segments, expected "
                                  f"{len(self.setup.segments)}")
            words = [ring.unpack(data, length, bits)
                     for data, (length, bits) in zip(message.segments, self.setup.segments, strict=True)]
        except (SecAggError, ValueError) as exc:
            self.problems.append(f"party {party}: masked input rejected: {exc}")
            return
        for total, part in zip(self.masked_sum, words, strict=True):
            total += part
        self.masked.add(party)
        if message.HasField("mask_peers"):  # a copy: a reference would keep the whole masked input alive
            self.mask_peers[party] = secagg_pb2.SecAggMaskPeers()
            self.mask_peers[party].CopyFrom(message.mask_peers)

    def collect_masked(self, replies: dict[int, bytes]) -> dict[int, bytes]:
        """Stage 3 → 4: add the masked inputs not yet added (add_masked) and close the stage; returns the unmask
        request (with node identities: the request to confirm it) for every party whose input is in the sum."""
        for party, data in replies.items():
            self.add_masked(party, data)
        self._need(len(self.masked), "masked input collection")
        self.survivors = sorted(self.masked)
        self.dropped = sorted(set(self.outbox) - set(self.masked))
        request = secagg_pb2.SecAggUnmaskRequest(round=self.setup.round, survivors=self.survivors,
                                                 dropped=self.dropped).SerializeToString()
        return dict.fromkeys(self.survivors, request)

    def collect_confirmations(self, replies: dict[int, bytes]) -> dict[int, bytes]:
        """Stage 4a → 4b (node identities): keep each survivor's signed confirmation of the story; returns the
        unmask request, now carrying the confirmations and the survivors' signed mask peers, for every survivor
        that confirmed. The parties verify the signatures; too few confirmations abort here."""
        for party, data in self._known(replies, set(self.survivors), "confirm").items():
            try:
                message = common.parse(secagg_pb2.SecAggConfirmation, data, "confirmation")
                if (message.round, message.party) != (self.setup.round, party) or not message.signature:
                    raise SecAggError("confirmation names another round or party, or is unsigned")
            except SecAggError as exc:
                self.problems.append(f"party {party}: {exc}")
                continue
            self.confirmations[party] = message
        needed = common.confirmations_needed(self.setup)
        if len(self.confirmations) < needed:
            raise SecAggAbort(f"secure aggregation round {self.setup.round} aborted at confirmation: "
                              f"{len(self.confirmations)} survivors confirmed, {needed} are needed")
        request = secagg_pb2.SecAggUnmaskRequest(
            round=self.setup.round, survivors=self.survivors, dropped=self.dropped,
            confirmations=[self.confirmations[p] for p in sorted(self.confirmations)],
            mask_peers=[self.mask_peers[p] for p in self.survivors if p in self.mask_peers]).SerializeToString()
        return dict.fromkeys(sorted(self.confirmations), request)

    def _rebuild(self, owner: int, points: list[tuple[int, bytes]], what: str) -> bytes:
        if len(points) < self.setup.threshold:
            raise SecAggAbort(f"secure aggregation round {self.setup.round} aborted: only {len(points)} verified "
                              f"shares of party {owner}'s {what} arrived, {self.setup.threshold} are needed")
        try:
            return shamir.combine(points[:self.setup.threshold], 32)
        except SecAggError as exc:
            raise SecAggAbort(f"party {owner}'s {what} cannot be rebuilt: {exc} (it dealt shares that do not "
                              "lie on one polynomial)") from exc

    def _verified(self, revealed: dict[int, list[secagg_pb2.SecAggRevealedShare]]
                  ) -> tuple[dict[int, list[tuple[int, bytes]]], dict[int, list[tuple[int, bytes]]]]:
        """Seed and key points per owner from the revealers whose every share matches its dealer's digest; a
        revealer with one false share is named in ``problems`` and ``culprits`` and all its shares set aside."""
        for party, shares in revealed.items():
            for share in shares:
                kind = SELF_MASK if share.self_mask else PAIR_MASK
                expected = self.digests.get((share.owner, party), (b"", b""))[0 if share.self_mask else 1]
                if common.share_digest(kind, self.setup.round, share.owner, party, share.share) != expected:
                    what = "self-mask seed" if share.self_mask else "mask key"
                    self.problems.append(f"party {party} revealed a false share of party {share.owner}'s {what}; "
                                         "its shares are set aside")
                    self.culprits.add(party)
                    break
        seed_points: dict[int, list[tuple[int, bytes]]] = {p: [] for p in self.survivors}
        key_points: dict[int, list[tuple[int, bytes]]] = {p: [] for p in self.dropped}
        for party in sorted(set(revealed) - self.culprits):
            for share in revealed[party]:
                (seed_points if share.self_mask else key_points)[share.owner].append((self.setup.x(party),
                                                                                      share.share))
        return seed_points, key_points

    def finish(self, replies: dict[int, bytes]) -> list[np.ndarray]:
        """Stage 4: rebuild the survivors' self-mask seeds and the dropped parties' mask keys, remove every mask,
        and return the sum of the survivors' inputs per segment (exact in the ring; uint32 up to 32 bits)."""
        revealed: dict[int, list[secagg_pb2.SecAggRevealedShare]] = {}
        owners_alive = set(self.survivors) | set(self.dropped)
        for party, data in self._known(replies, set(self.survivors), "unmask").items():
            try:
                message = common.parse(secagg_pb2.SecAggUnmaskResponse, data, "unmask response")
                if (message.round, message.party) != (self.setup.round, party):
                    raise SecAggError("unmask response names another round or party")
                holders_of = {p for p in owners_alive if p == party or p in self.setup.neighbours[party]}
                owners = [share.owner for share in message.shares]
                if len(set(owners)) != len(owners) or not set(owners) <= holders_of:
                    raise SecAggError("unmask response reveals shares this party cannot hold, or repeats one")
                if any(share.self_mask != (share.owner in self.survivors) for share in message.shares):
                    raise SecAggError("unmask response reveals the wrong secret of a party")
            except SecAggError as exc:
                self.problems.append(f"party {party}: {exc}")
                continue
            revealed[party] = list(message.shares)
        seed_points, key_points = self._verified(revealed)
        self._need(len(set(revealed) - self.culprits), "unmasking" + (
            f" (parties {sorted(self.culprits)} revealed false shares)" if self.culprits else ""))
        totals = self.masked_sum
        for owner in self.survivors:
            seed = self._rebuild(owner, seed_points[owner], "self-mask seed")
            if hashlib.sha256(seed).digest() != self.commitments[owner]:
                raise SecAggAbort(f"party {owner}'s rebuilt self-mask seed does not match its commitment "
                                  "(it dealt inconsistent shares)")
            for total, mask in zip(totals, common.segment_masks(seed, self.setup, SELF_MASK), strict=True):
                total -= mask
        for owner in self.dropped:
            secret = self._rebuild(owner, key_points[owner], "mask key")
            if common.public_bytes(secret) != self.keys[owner].mask_key:
                raise SecAggAbort(f"party {owner}'s rebuilt mask key does not match its public key "
                                  "(it dealt inconsistent shares)")
            for peer in sorted(self.setup.neighbours[owner] & set(self.survivors)):
                seed = common.pair_seed(secret, self.keys[peer].mask_key, self.setup.round, owner, peer)
                for total, mask in zip(totals, common.segment_masks(seed, self.setup, PAIR_MASK), strict=True):
                    if peer < owner:
                        total -= mask  # the survivor added this mask; remove it
                    else:
                        total += mask
        for total, (_, bits) in zip(totals, self.setup.segments, strict=True):
            total &= common.ring_mask(bits)
        return totals
