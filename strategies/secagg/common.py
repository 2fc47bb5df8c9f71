"""What both sides of the protocol derive the same way: the setup, the graph, keys, labels and mask streams."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from google.protobuf.message import DecodeError

from protos.fedsqueeze.v1 import secagg_pb2
from strategies.secagg import graph, prg, ring
from strategies.secagg.errors import SecAggError

PROTOCOL_VERSION = 3
KEY_BYTES = 32
MAX_PARTIES = 100_000
MAX_SEGMENT_WORDS = 1 << 32
# The least threshold a node that signs its keys accepts unless its own privacy floor says otherwise: against a
# lying coordinator what holds is "sums over groups of at least t inputs", and a group of two hides neither input
# from anyone who knows the other.
SIGNED_MIN_THRESHOLD = 3


@dataclass(frozen=True)
class Setup:
    """A checked SecAggSetup with its neighbour graph."""

    message: secagg_pb2.SecAggSetup
    parties: tuple[int, ...]
    neighbours: dict[int, frozenset[int]]
    segments: tuple[tuple[int, int], ...]  # (length, bits)

    @property
    def round(self) -> int:
        """The round this instance belongs to."""
        return self.message.round

    @property
    def threshold(self) -> int:
        """Shares needed to rebuild a secret."""
        return self.message.threshold

    def x(self, party: int) -> int:
        """The party's Shamir x-coordinate."""
        return self.parties.index(party) + 1


def make_setup(round_id: int, parties: list[int], segments: list[tuple[int, int]], *, neighbours: int | None = None,
               threshold: int | None = None, graph_seed: bytes | None = None, run: int = 0) -> bytes:
    """A SecAggSetup for ``parties`` (defaults: logarithmic degree, majority threshold, seed from the round) in
    Flower run ``run``."""
    parties = sorted(set(parties))
    k = graph.default_neighbours(len(parties)) if neighbours is None else min(neighbours, len(parties) - 1)
    t = graph.default_threshold(k) if threshold is None else threshold
    graph.check_graph(len(parties), k, t)
    seed = graph_seed if graph_seed is not None else hashlib.sha256(b"fedsqueeze/secagg/graph" +
                                                                    round_id.to_bytes(8, "big")).digest()
    message = secagg_pb2.SecAggSetup(protocol_version=PROTOCOL_VERSION, round=round_id, parties=parties,
                                     neighbours=k, threshold=t, graph_seed=seed, run=run,
                                     segments=[secagg_pb2.SecAggSegment(length=n, bits=b) for n, b in segments])
    return message.SerializeToString()


def parse(message_type: type, data: bytes, what: str):
    """``data`` parsed as ``message_type``; SecAggError naming ``what`` if it is not."""
    if not isinstance(data, bytes | bytearray):
        raise SecAggError(f"{what} is not bytes")
    try:
        return message_type.FromString(bytes(data))
    except DecodeError as exc:
        raise SecAggError(f"{what} is malformed: {exc}") from exc


def read_setup(data: bytes) -> Setup:
    """Parse and check a SecAggSetup; SecAggError names what is wrong."""
    message = parse(secagg_pb2.SecAggSetup, data, "secagg setup")
    if message.protocol_version != PROTOCOL_VERSION:
        raise SecAggError(f"secagg protocol version {message.protocol_version} is not {PROTOCOL_VERSION}")
    parties = tuple(message.parties)
    if list(parties) != sorted(set(parties)) or not 2 <= len(parties) <= MAX_PARTIES:
        raise SecAggError("secagg setup must list 2 or more distinct parties in ascending order")
    try:
        graph.check_graph(len(parties), message.neighbours, message.threshold)
    except ValueError as exc:
        raise SecAggError(f"secagg setup: {exc}") from exc
    segments = tuple((s.length, s.bits) for s in message.segments)
    if not segments or any(not (0 < n <= MAX_SEGMENT_WORDS and 1 <= b <= 64) for n, b in segments):
        raise SecAggError("secagg setup needs segments of 1..2^32 words and 1..64 bits")
    return Setup(message, parties, graph.neighbour_sets(list(parties), message.neighbours, message.graph_seed),
                 segments)


def public_bytes(secret: bytes) -> bytes:
    """The X25519 public key of a raw private key."""
    return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()


def agree(secret: bytes, peer_public: bytes) -> bytes:
    """The X25519 shared secret with a peer; SecAggError for a malformed or degenerate public key."""
    if len(peer_public) != KEY_BYTES:
        raise SecAggError(f"a public key has {len(peer_public)} bytes, expected {KEY_BYTES}")
    try:
        return X25519PrivateKey.from_private_bytes(secret).exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # an all-zero shared secret (small-order point)
        raise SecAggError(f"key agreement failed: {exc}") from exc


def _pair_info(purpose: bytes, round_id: int, a: int, b: int) -> bytes:
    low, high = sorted((a, b))
    return (b"fedsqueeze/secagg/v1/" + purpose + round_id.to_bytes(8, "big") + low.to_bytes(8, "big")
            + high.to_bytes(8, "big"))


def share_key(secret: bytes, peer_public: bytes, round_id: int, a: int, b: int) -> bytes:
    """The AES-256-GCM key for shares between parties ``a`` and ``b`` this round."""
    return prg.derive(agree(secret, peer_public), _pair_info(b"share-key", round_id, a, b))


def pair_seed(secret: bytes, peer_public: bytes, round_id: int, a: int, b: int) -> bytes:
    """The seed of the pairwise mask between parties ``a`` and ``b`` this round."""
    return prg.derive(agree(secret, peer_public), _pair_info(b"pair-mask", round_id, a, b))


def share_aad(round_id: int, sender: int, receiver: int, digests: bytes = b"", session: bytes = b"") -> bytes:
    """Associated data binding a share ciphertext to its round, sender, receiver, the share digests the sender
    published beside it (so the server cannot swap the digests a receiver checks) and, with node identities, the
    session id of the execution (so a share opens only for a holder that saw the very advertisements its dealer
    saw: one party slot played by different nodes in different sessions shares nothing across them)."""
    return b"fedsqueeze/secagg/v1/shares" + round_id.to_bytes(8, "big") + sender.to_bytes(8, "big") + \
        receiver.to_bytes(8, "big") + digests + session


def share_digest(kind: bytes, round_id: int, owner: int, holder: int, share: bytes) -> bytes:
    """SHA-256 of one Shamir share (``kind``: SELF_MASK seed or mask key) bound to its round, owner and holder.
    The owner publishes it when it deals the share; a share revealed later must match it, which names a party
    that reveals a false share. A share is a uniformly random 521-bit number, so its digest reveals nothing."""
    return hashlib.sha256(b"fedsqueeze/secagg/v2/share-digest" + kind + round_id.to_bytes(8, "big")
                          + owner.to_bytes(8, "big") + holder.to_bytes(8, "big") + share).digest()


def confirmations_needed(setup: Setup) -> int:
    """Signed confirmations of one survivor/dropped story a party needs before it reveals anything: at least the
    threshold, and a strict majority of the invited parties, so two different stories cannot both reach it
    unless some party signed both (an honest one never does)."""
    return max(setup.threshold, len(setup.parties) // 2 + 1)


def segment_masks(seed: bytes, setup: Setup, kind: bytes) -> list[np.ndarray]:
    """The mask words of every segment from one seed (``kind`` separates self masks from pairwise masks)."""
    return [prg.mask_words(seed, kind + setup.round.to_bytes(8, "big") + index.to_bytes(4, "big"), length, bits)
            for index, (length, bits) in enumerate(setup.segments)]


def ring_mask(bits: int) -> np.unsignedinteger:
    """2^bits - 1 in the ring's word type (its wrap-around arithmetic is exact modulo 2^bits)."""
    return ring.word_dtype(bits).type((1 << bits) - 1)
