"""One party's side of SecAgg+: a state machine that can be saved between Flower messages.

Stages: ``Party.start`` (inputs given) → ``advertise_keys`` → ``share_keys`` → ``masked_input`` → (``confirm``)
→ ``unmask``. Each stage runs once and in order; the state (secrets included) is a SecAggPartyState that stays in
the party's own node state. In ``unmask`` the party reveals, for each peer, either a share of its self-mask seed
(the peer sent a masked input) or a share of its mask key (the peer dropped), never both, and refuses requests
that would let the server learn both or that contradict what it knows.

A party with a node identity (it signed its keys) also defends against a server that lies (Bonawitz et al. 2017
§6, Bell et al. 2020): it signs the neighbours it masked with, it confirms the survivor/dropped story it is told
by signing it, and it reveals nothing until a strict majority of the round's parties signed the same story and,
for each survivor whose seed it helps rebuild, that survivor's signed mask peers show at least t - 1 of them
survived (so the server learns only sums over groups of at least t inputs). Those signatures are bound to this
execution — a mask-peer statement to the signer's fresh keys, a confirmation to the session id over every party's
advertisement — so a server that runs one setup several times cannot carry a signature from one run into another.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protos.fedsqueeze.v1 import secagg_pb2
from strategies.secagg import common, ring, shamir
from strategies.secagg.errors import SecAggError
from strategies.secagg.identity import (
    SigningIdentity,
    TrustedIdentities,
    advertisement_bytes,
    advertisement_digest,
    mask_peers_bytes,
    session_id,
    verify_signature,
    view_bytes,
)

NEW, ADVERTISED, SHARED, MASKED, CONFIRMED, UNMASKED = range(6)
_STAGE_NAMES = ("new", "keys advertised", "keys shared", "masked input sent", "survivors confirmed", "unmasked")
SELF_MASK = b"self"
PAIR_MASK = b"pair"


class Party:
    """One party's protocol state; build with ``start`` or ``load``, save with ``save``."""

    def __init__(self, state: secagg_pb2.SecAggPartyState) -> None:
        self.state = state
        self.setup = common.read_setup(state.setup)
        self.me = state.party
        if self.me not in self.setup.parties:
            raise SecAggError(f"party {self.me} is not among the setup's parties")

    @classmethod
    def start(cls, setup: bytes, party: int, inputs: list[np.ndarray]) -> Party:
        """A party holding ``inputs`` (one uint64 array per segment, each word < 2^bits)."""
        checked = common.read_setup(setup)
        if len(inputs) != len(checked.segments):
            raise SecAggError(f"{len(inputs)} input segments for a setup of {len(checked.segments)}")
        packed = []
        for index, (words, (length, bits)) in enumerate(zip(inputs, checked.segments, strict=True)):
            if words.shape != (length,):
                raise SecAggError(f"input segment {index} has shape {words.shape}, expected ({length},)")
            if bits < 64 and words.size and int(words.max()) >> bits:
                raise SecAggError(f"input segment {index} has words outside the ring of 2^{bits}")
            packed.append(ring.pack(words.astype(np.uint64), bits))
        return cls(secagg_pb2.SecAggPartyState(setup=setup, party=party, stage=NEW, inputs=packed))

    @classmethod
    def load(cls, data: bytes) -> Party:
        """A party saved with ``save``."""
        return cls(common.parse(secagg_pb2.SecAggPartyState, data, "secagg party state"))

    def save(self) -> bytes:
        """The party's state as bytes (secrets included: keep it on this node)."""
        return self.state.SerializeToString()

    @property
    def authenticated(self) -> bool:
        """Whether this party signed its keys (and so holds the server to the malicious-server checks)."""
        return bool(self.state.identity)

    def _advance(self, expected: int, to: int | None = None) -> None:
        if self.state.stage != expected:
            raise SecAggError(f"party {self.me}: this step needs stage '{_STAGE_NAMES[expected]}', "
                              f"the party is at '{_STAGE_NAMES[self.state.stage]}'")
        self.state.stage = expected + 1 if to is None else to

    def _signer(self, identity: SigningIdentity | None) -> SigningIdentity:
        if identity is None or identity.public_der != self.state.identity:
            raise SecAggError(f"party {self.me} signed its keys and must sign this step with the same identity")
        return identity

    def _round(self, message, what: str) -> None:
        if message.round != self.setup.round:
            raise SecAggError(f"{what} is for round {message.round}, this is round {self.setup.round}")

    def advertise_keys(self, identity: SigningIdentity | None = None) -> bytes:
        """Stage 1: fresh X25519 key pairs for this round; returns SecAggPublicKeys, signed with this node's
        long-term ``identity`` when given (bound to the exact setup, this party and both keys)."""
        if identity is not None and not self.setup.message.run:
            raise SecAggError("a signed secure-aggregation setup must name the Flower run that carries it (run 0 "
                              "could be replayed in any run); refused")
        self._advance(NEW)
        self.state.cipher_secret = X25519PrivateKey.generate().private_bytes_raw()
        self.state.mask_secret = X25519PrivateKey.generate().private_bytes_raw()
        keys = secagg_pb2.SecAggPublicKeys(round=self.setup.round, party=self.me,
                                           cipher_key=common.public_bytes(self.state.cipher_secret),
                                           mask_key=common.public_bytes(self.state.mask_secret))
        if identity is not None:
            keys.identity = self.state.identity = identity.public_der
            keys.signature = identity.sign(advertisement_bytes(self.state.setup, self.me, keys.cipher_key,
                                                               keys.mask_key))
        return keys.SerializeToString()

    def share_keys(self, key_list: bytes, trusted: TrustedIdentities | None = None) -> bytes:
        """Stage 2: Shamir-share the self-mask seed and the mask key among this party and its neighbours whose
        keys arrived; returns a SecAggShareBundle of ciphertexts, one per neighbour. With ``trusted`` (the node
        identities this node pinned), every neighbour's keys must be signed by a distinct trusted identity other
        than this party's own, for this very setup: a substituted or replayed key aborts the round here, before
        any secret is shared."""
        self._advance(ADVERTISED)
        keys = common.parse(secagg_pb2.SecAggKeyList, key_list, "secagg key list")
        self._round(keys, "key list")
        mine = self.setup.neighbours[self.me]
        seen: set[bytes] = {common.public_bytes(self.state.cipher_secret), common.public_bytes(self.state.mask_secret)}
        signers: set[bytes] = {self.state.identity} if self.state.identity else set()
        peers = []
        for entry in keys.keys:
            if entry.party not in mine:
                raise SecAggError(f"key list holds party {entry.party}, not a neighbour of {self.me}")
            if any(entry.party == peer.party for peer in peers):
                raise SecAggError(f"key list names party {entry.party} twice")
            if entry.round != self.setup.round:
                raise SecAggError(f"key list entry of party {entry.party} is for another round")
            if len(entry.cipher_key) != common.KEY_BYTES or len(entry.mask_key) != common.KEY_BYTES:
                raise SecAggError(f"party {entry.party} has malformed public keys")
            if entry.cipher_key in seen or entry.mask_key in seen or entry.cipher_key == entry.mask_key:
                raise SecAggError(f"party {entry.party} reuses a public key")
            if trusted is not None:
                signed = advertisement_bytes(self.state.setup, entry.party, entry.cipher_key, entry.mask_key)
                trusted.verify(entry.identity, entry.signature, signed, f"the keys of party {entry.party}")
                if entry.identity in signers:
                    raise SecAggError(f"the keys of party {entry.party} are signed by an identity that signs for "
                                      "another party of this round (one node posing as several); refused")
                signers.add(entry.identity)
            seen.update((entry.cipher_key, entry.mask_key))
            peers.append(entry)
        if len(peers) + 1 < self.setup.threshold:
            raise SecAggError(f"only {len(peers)} neighbours advertised keys; {self.setup.threshold - 1} are needed")
        if self.authenticated:
            self.state.session = self._session(keys, peers)
        self.state.neighbour_keys.CopyFrom(secagg_pb2.SecAggKeyList(round=self.setup.round, keys=peers))
        self.state.self_mask_seed = os.urandom(32)
        holders = [self.me] + [p.party for p in peers]
        xs = [self.setup.x(h) for h in holders]
        seed_shares = shamir.split(self.state.self_mask_seed, xs, self.setup.threshold)
        key_shares = shamir.split(self.state.mask_secret, xs, self.setup.threshold)
        bundle = secagg_pb2.SecAggShareBundle(round=self.setup.round,
                                              self_mask_commitment=hashlib.sha256(self.state.self_mask_seed).digest())
        for holder, seed_share, key_share, peer in zip(holders, seed_shares, key_shares, [None, *peers], strict=True):
            shares = secagg_pb2.SecAggShares(round=self.setup.round, sender=self.me, receiver=holder,
                                             self_mask_share=seed_share, mask_key_share=key_share)
            seed_digest, key_digest = _digests(shares)
            if peer is None:
                self.state.received.append(shares)
                bundle.own_self_mask_digest, bundle.own_mask_key_digest = seed_digest, key_digest
                continue
            key = common.share_key(self.state.cipher_secret, peer.cipher_key, self.setup.round, self.me, holder)
            nonce = os.urandom(12)
            sealed = AESGCM(key).encrypt(nonce, shares.SerializeToString(),
                                         common.share_aad(self.setup.round, self.me, holder, seed_digest + key_digest,
                                                          self.state.session))
            bundle.shares.append(secagg_pb2.SecAggCiphertext(sender=self.me, receiver=holder,
                                                             ciphertext=nonce + sealed, self_mask_digest=seed_digest,
                                                             mask_key_digest=key_digest))
        return bundle.SerializeToString()

    def _digest(self, party: int, cipher_key: bytes, mask_key: bytes, identity: bytes) -> bytes:
        return advertisement_digest(self.state.setup, party, cipher_key, mask_key, identity)

    def _session(self, keys: secagg_pb2.SecAggKeyList, peers: list[secagg_pb2.SecAggPublicKeys]) -> bytes:
        """This execution's session id from the server's list of advertisement digests, once the list is shown to
        hold this party's own keys and exactly the neighbours' keys it was sent, each once, in party order."""
        listed = [(entry.party, entry.digest) for entry in keys.session]
        parties = [party for party, _ in listed]
        if parties != sorted(set(parties)) or not set(parties) <= set(self.setup.parties) \
                or any(len(digest) != 32 for _, digest in listed):
            raise SecAggError("the session list must name distinct parties of the setup in ascending order, each "
                              "with a 32-byte digest")
        digests = dict(listed)
        mine = self._digest(self.me, common.public_bytes(self.state.cipher_secret),
                            common.public_bytes(self.state.mask_secret), self.state.identity)
        if digests.get(self.me) != mine:
            raise SecAggError("the session list does not hold this party's own keys of this execution; refused")
        for entry in peers:
            if digests.get(entry.party) != self._digest(entry.party, entry.cipher_key, entry.mask_key,
                                                       entry.identity):
                raise SecAggError(f"the session list disagrees with the keys of neighbour {entry.party} this party "
                                  "was sent; refused")
        missing = (set(digests) & self.setup.neighbours[self.me]) - {entry.party for entry in peers}
        if missing:
            raise SecAggError(f"the session list holds neighbours {sorted(missing)[:8]} whose keys this party was not "
                              "sent; refused")
        return session_id(self.state.setup, listed)

    def masked_input(self, forwarded: bytes, identity: SigningIdentity | None = None) -> bytes:
        """Stage 3: open the neighbours' shares (each must match the digests its dealer published), then mask the
        input with the self mask and one pairwise mask per neighbour that shared; returns SecAggMaskedInput. A
        party that signed its keys signs the list of those neighbours with ``identity`` too."""
        self._advance(SHARED)
        signer = self._signer(identity) if self.authenticated else None
        bundle = common.parse(secagg_pb2.SecAggShareBundle, forwarded, "forwarded shares")
        self._round(bundle, "forwarded shares")
        peers = {entry.party: entry for entry in self.state.neighbour_keys.keys}
        senders = set()
        for item in bundle.shares:
            peer = peers.get(item.sender)
            if peer is None or item.receiver != self.me or item.sender in senders:
                raise SecAggError(f"forwarded share from {item.sender} to {item.receiver} is not for this party "
                                  "from a neighbour, or repeats one")
            key = common.share_key(self.state.cipher_secret, peer.cipher_key, self.setup.round, self.me, item.sender)
            aad = common.share_aad(self.setup.round, item.sender, self.me, item.self_mask_digest + item.mask_key_digest,
                                   self.state.session)
            try:
                plain = AESGCM(key).decrypt(item.ciphertext[:12], item.ciphertext[12:], aad)
            except (InvalidTag, ValueError) as exc:
                raise SecAggError(f"share ciphertext from party {item.sender} does not authenticate (altered, or dealt "
                                  "in another session of this setup)") from exc
            shares = common.parse(secagg_pb2.SecAggShares, plain, f"shares from party {item.sender}")
            if (shares.round, shares.sender, shares.receiver) != (self.setup.round, item.sender, self.me):
                raise SecAggError(f"shares from party {item.sender} name another round, sender or receiver")
            if _digests(shares) != (item.self_mask_digest, item.mask_key_digest):
                raise SecAggError(f"party {item.sender} published share digests that do not match the shares it "
                                  "sent this party; refused (it could blame this party for a false share)")
            senders.add(item.sender)
            self.state.received.append(shares)
        if len(senders) + 1 < self.setup.threshold:
            raise SecAggError(f"only {len(senders)} neighbours shared keys; {self.setup.threshold - 1} are needed")
        total = [ring.unpack(data, length, bits)
                 for data, (length, bits) in zip(self.state.inputs, self.setup.segments, strict=True)]
        for words, mask in zip(total, common.segment_masks(self.state.self_mask_seed, self.setup, SELF_MASK),
                               strict=True):
            words += mask
        for peer_id in sorted(senders):
            seed = common.pair_seed(self.state.mask_secret, peers[peer_id].mask_key, self.setup.round, self.me,
                                    peer_id)
            for words, mask in zip(total, common.segment_masks(seed, self.setup, PAIR_MASK), strict=True):
                if self.me < peer_id:
                    words += mask
                else:
                    words -= mask
        out = secagg_pb2.SecAggMaskedInput(round=self.setup.round, party=self.me)
        for words, (_, bits) in zip(total, self.setup.segments, strict=True):
            words &= common.ring_mask(bits)
            out.segments.append(ring.pack(words, bits))
        self.state.mask_peers[:] = sorted(senders)
        if signer is not None:
            signed = mask_peers_bytes(self.state.setup, self.me, common.public_bytes(self.state.cipher_secret),
                                      common.public_bytes(self.state.mask_secret), sorted(senders))
            out.mask_peers.CopyFrom(secagg_pb2.SecAggMaskPeers(party=self.me, peers=sorted(senders),
                                                               signature=signer.sign(signed)))
        del self.state.inputs[:]
        return out.SerializeToString()

    def _read_view(self, request: bytes) -> secagg_pb2.SecAggUnmaskRequest:
        """The survivor/dropped story in ``request``, checked against what this party knows."""
        message = common.parse(secagg_pb2.SecAggUnmaskRequest, request, "unmask request")
        self._round(message, "unmask request")
        survivors, dropped = set(message.survivors), set(message.dropped)
        if len(survivors) != len(message.survivors) or len(dropped) != len(message.dropped):
            raise SecAggError("unmask request repeats a party")
        if survivors & dropped:
            raise SecAggError(f"unmask request names parties {sorted(survivors & dropped)} as both survivors and "
                              "dropped: revealing both secrets of a party would unmask its input; refused")
        if self.me not in survivors:
            raise SecAggError(f"unmask request does not count this party ({self.me}) among the survivors")
        if len(survivors) < self.setup.threshold:
            raise SecAggError(f"unmask request names {len(survivors)} survivors, fewer than the threshold "
                              f"{self.setup.threshold}; refused")
        if not survivors | dropped <= set(self.setup.parties):
            raise SecAggError("unmask request names parties outside the setup")
        return message

    def _view(self, message: secagg_pb2.SecAggUnmaskRequest) -> bytes:
        return view_bytes(self.state.setup, self.state.session, self.me, list(message.survivors),
                          list(message.dropped))

    def _check_isolation(self, owner: int, peers: list[int], survivors: set[int]) -> None:
        """Refuse to help rebuild ``owner``'s self-mask seed unless at least t - 1 of the peers it masked with
        survived: otherwise the server would hold its input masked only by secrets it is about to learn."""
        alive = len(set(peers) & survivors)
        if alive < self.setup.threshold - 1:
            raise SecAggError(f"party {owner} masked its input with {len(peers)} neighbours and the server says only "
                              f"{alive} of them survived ({self.setup.threshold - 1} needed): revealing its self-mask "
                              "would expose its input alone; refused")

    def confirm(self, request: bytes, identity: SigningIdentity | None = None) -> bytes:
        """Stage 4a (parties with a node identity): check the survivor/dropped story and sign it; returns
        SecAggConfirmation. The party keeps the story and will reveal shares for this one only."""
        self._advance(MASKED)
        message = self._read_view(request)
        if self.authenticated:
            self._check_isolation(self.me, list(self.state.mask_peers), set(message.survivors))
        self.state.view = self._view(message)
        out = secagg_pb2.SecAggConfirmation(round=self.setup.round, party=self.me)
        if self.authenticated:
            out.identity = self.state.identity
            out.signature = self._signer(identity).sign(self.state.view)
        return out.SerializeToString()

    def unmask(self, request: bytes, trusted: TrustedIdentities | None = None) -> bytes:
        """Stage 4: reveal self-mask shares of survivors and mask-key shares of dropped parties; returns
        SecAggUnmaskResponse. Refuses a request naming a party as both, leaving this party out, or naming fewer
        survivors than the threshold. A party with a node identity reveals only the story it confirmed, once a
        strict majority of the round's parties (and at least t) confirmed it under distinct ``trusted``
        identities, and only seeds of survivors whose signed mask peers mostly survived."""
        confirmed = self.authenticated or self.state.stage == CONFIRMED
        if confirmed:
            self._advance(CONFIRMED)
        else:
            self._advance(MASKED, to=UNMASKED)
        message = self._read_view(request)
        if confirmed and self._view(message) != self.state.view:
            raise SecAggError("the unmask request tells another survivor/dropped story than the one this party "
                              "confirmed; refused")
        survivors, dropped = set(message.survivors), set(message.dropped)
        held = {shares.sender: shares for shares in self.state.received}
        if self.authenticated:
            self._check_confirmed(message, trusted)
            self._check_mask_peers(message, set(held) & survivors)
        response = secagg_pb2.SecAggUnmaskResponse(round=self.setup.round, party=self.me)
        for owner in sorted(set(held) & (survivors | dropped)):
            in_survivors = owner in survivors
            share = held[owner].self_mask_share if in_survivors else held[owner].mask_key_share
            response.shares.append(secagg_pb2.SecAggRevealedShare(owner=owner, self_mask=in_survivors, share=share))
        del self.state.received[:]
        self.state.cipher_secret = self.state.mask_secret = self.state.self_mask_seed = b""
        return response.SerializeToString()

    def _check_confirmed(self, message: secagg_pb2.SecAggUnmaskRequest, trusted: TrustedIdentities | None) -> None:
        """The request tells the story this party confirmed, and enough distinct trusted survivors signed it in this
        execution (under this party's session id: a confirmation from another execution does not verify)."""
        if trusted is None:
            raise SecAggError(f"party {self.me} signed its keys, so it needs the trusted identities to unmask")
        survivors, signers, parties = set(message.survivors), set(), set()
        for confirmation in message.confirmations:
            if confirmation.round != self.setup.round or confirmation.party not in survivors \
                    or confirmation.party in parties or confirmation.identity in signers:
                continue  # not a distinct survivor's confirmation of this round: it counts for nothing
            signed = view_bytes(self.state.setup, self.state.session, confirmation.party, list(message.survivors),
                                list(message.dropped))
            try:
                trusted.verify(confirmation.identity, confirmation.signature, signed,
                               f"the confirmation of party {confirmation.party}")
            except SecAggError:
                continue
            signers.add(confirmation.identity)
            parties.add(confirmation.party)
        needed = common.confirmations_needed(self.setup)
        if len(signers) < needed:
            raise SecAggError(f"only {len(signers)} parties confirmed the survivor/dropped story this party was told "
                              f"in this execution, {needed} are needed (the server may be telling parties different "
                              "stories, or replaying confirmations from another execution); refused")

    def _check_mask_peers(self, message: secagg_pb2.SecAggUnmaskRequest, owners: set[int]) -> None:
        """Every survivor whose self-mask share this party will reveal signed whom it masked with, and enough
        of those survived."""
        survivors = set(message.survivors)
        advertised = {entry.party: entry for entry in self.state.neighbour_keys.keys}
        statements = {statement.party: statement for statement in message.mask_peers}
        for owner in sorted(owners):
            if owner == self.me:
                peers = list(self.state.mask_peers)
            else:
                statement = statements.get(owner)
                if statement is None:
                    raise SecAggError(f"the unmask request lacks the signed mask peers of survivor {owner}; refused")
                peers = list(statement.peers)
                keys = advertised[owner]
                signed = mask_peers_bytes(self.state.setup, owner, keys.cipher_key, keys.mask_key, peers)
                verify_signature(keys.identity, statement.signature, signed, f"the mask peers of party {owner}")
                if not set(peers) <= self.setup.neighbours[owner] or len(set(peers)) != len(peers):
                    raise SecAggError(f"the signed mask peers of party {owner} are not distinct neighbours of it")
            self._check_isolation(owner, peers, survivors)


def _digests(shares: secagg_pb2.SecAggShares) -> tuple[bytes, bytes]:
    """The published digests of the two shares in ``shares``."""
    return (common.share_digest(SELF_MASK, shares.round, shares.sender, shares.receiver, shares.self_mask_share),
            common.share_digest(PAIR_MASK, shares.round, shares.sender, shares.receiver, shares.mask_key_share))
