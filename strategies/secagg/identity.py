"""Long-term node identities, so that a coordinator cannot slip its own keys into a secure-aggregation round.

Against an honest-but-curious server, SecAgg+ needs no identities. Against one that lies, it does (Bonawitz et al.
2017, §6; Bell et al. 2020): the server relays every party's public keys, so unless each advertisement is signed
by a key its peers already trust, the server can hand a target key pairs it made itself "from" every neighbour,
decrypt the target's shares, and unmask its input.

Choice: a node's identity is its SuperNode authentication key pair (P-384, OpenSSH format, written by
``fedsqueeze certs --nodes``; Ed25519 keys are read too). The federation already vets exactly these keys —
``flwr supernode register`` allow-lists them on the SuperLink — so every node gets one key pair and one list, not
a second PKI. What a node trusts is its *own copy* of the federation's list of public keys (an
``authorized_keys``-style file given at setup, like SSH's ``known_hosts``), never anything the coordinator sends:
the coordinator runs the SuperLink whose allow-list it could change. A party signs SHA-256 of the exact setup bytes
(run, round, party list, threshold, graph seed, segments), its party id and both public keys; a peer accepts the
advertisement only when the signature verifies under a pinned key that no other party of the round uses.

The later signatures (whom a party masked with, which survivor story it confirms) are bound to the *execution*, not
only to the setup: a coordinator that runs one setup twice must not carry a signature from one run of it into the
other. A mask-peer statement names the signer's own public keys of this execution; a confirmation names the
session id, a hash over the digest of every party's advertisement in this execution (``session_id``), which every
party checks against its own keys and its neighbours' before it shares anything.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from strategies.secagg.errors import SecAggError

DOMAIN = b"fedsqueeze/secagg/v1/key-advertisement"
VIEW_DOMAIN = b"fedsqueeze/secagg/v3/survivor-view"
PEERS_DOMAIN = b"fedsqueeze/secagg/v3/mask-peers"
DIGEST_DOMAIN = b"fedsqueeze/secagg/v3/advertisement-digest"
SESSION_DOMAIN = b"fedsqueeze/secagg/v3/session"
_DER = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
VerifyingKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def advertisement_bytes(setup: bytes, party: int, cipher_key: bytes, mask_key: bytes) -> bytes:
    """What a party signs: a domain tag, SHA-256 of the setup bytes it was sent, its party id and its two keys."""
    return DOMAIN + hashlib.sha256(setup).digest() + party.to_bytes(8, "big") + cipher_key + mask_key


def _ids(parties: list[int] | set[int]) -> bytes:
    ordered = sorted(parties)
    return len(ordered).to_bytes(8, "big") + b"".join(p.to_bytes(8, "big") for p in ordered)


def advertisement_digest(setup: bytes, party: int, cipher_key: bytes, mask_key: bytes, identity: bytes) -> bytes:
    """SHA-256 of one party's advertisement in one execution (its fresh keys and the identity that signed them):
    what the session lists for it."""
    return hashlib.sha256(DIGEST_DOMAIN + advertisement_bytes(setup, party, cipher_key, mask_key) +
                          len(identity).to_bytes(4, "big") + identity).digest()


def session_id(setup: bytes, digests: list[tuple[int, bytes]]) -> bytes:
    """The id of one execution: SHA-256 over the setup and every advertised party's digest, in party order. Keys
    are fresh in every execution, so two executions of one setup never share an id, and neither do two parties
    shown different lists."""
    body = b"".join(party.to_bytes(8, "big") + digest for party, digest in digests)
    return hashlib.sha256(SESSION_DOMAIN + hashlib.sha256(setup).digest() + len(digests).to_bytes(8, "big")
                          + body).digest()


def view_bytes(setup: bytes, session: bytes, party: int, survivors: list[int], dropped: list[int]) -> bytes:
    """What a survivor signs to confirm the story it was told: the setup, this execution's session id, itself,
    the survivors and the dropped."""
    return (VIEW_DOMAIN + hashlib.sha256(setup).digest() + session + party.to_bytes(8, "big") + _ids(survivors)
            + _ids(dropped))


def mask_peers_bytes(setup: bytes, party: int, cipher_key: bytes, mask_key: bytes, peers: list[int]) -> bytes:
    """What a party signs about its masked input: the setup, itself with its public keys of this execution (its
    neighbours hold them), and the neighbours it masked with."""
    return PEERS_DOMAIN + hashlib.sha256(setup).digest() + party.to_bytes(8, "big") + cipher_key + mask_key + \
        _ids(peers)


def _sign(key: SigningKey, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(hashes.SHA384()))


def _verify(key: VerifyingKey, signature: bytes, data: bytes) -> None:
    if isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(signature, data)
    else:
        key.verify(signature, data, ec.ECDSA(hashes.SHA384()))


class SigningIdentity:
    """This node's long-term private key: signs its key advertisements."""

    def __init__(self, key: SigningKey) -> None:
        if not isinstance(key, SigningKey):
            raise SecAggError(f"a node identity must be an EC or Ed25519 key, got {type(key).__name__}")
        self._key = key
        self.public_der = key.public_key().public_bytes(*_DER)

    @classmethod
    def from_file(cls, path: Path) -> SigningIdentity:
        """The private key at ``path`` (OpenSSH or PEM, unencrypted); SecAggError naming the problem."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SecAggError(f"cannot read the node identity key {path}: {exc.strerror or exc}") from exc
        for load in (serialization.load_ssh_private_key, serialization.load_pem_private_key):
            try:
                return cls(load(data, password=None))
            except (ValueError, TypeError, UnsupportedAlgorithm):
                continue
        raise SecAggError(f"{path} is not an unencrypted OpenSSH or PEM private key")

    def sign(self, data: bytes) -> bytes:
        """A signature over ``data``."""
        return _sign(self._key, data)


class TrustedIdentities:
    """The federation's node public keys as this node pinned them, by DER encoding, with their names."""

    def __init__(self, keys: dict[bytes, str]) -> None:
        self.names = dict(keys)
        self._keys: dict[bytes, VerifyingKey] = {}
        for der in self.names:
            key = serialization.load_der_public_key(der)
            if not isinstance(key, VerifyingKey):
                raise SecAggError(f"trusted identity {self.names[der]!r} is not an EC or Ed25519 key")
            self._keys[der] = key

    @classmethod
    def from_file(cls, path: Path) -> TrustedIdentities:
        """One OpenSSH public key per line (``ecdsa-sha2-nistp384 AAAA... name``; blank and ``#`` lines skipped);
        SecAggError naming the file and line that does not parse."""
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SecAggError(f"cannot read the trusted node identities {path}: {exc}") from exc
        keys: dict[bytes, str] = {}
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                key = serialization.load_ssh_public_key(text.encode())
            except (ValueError, UnsupportedAlgorithm) as exc:
                raise SecAggError(f"{path} line {number} is not an OpenSSH public key: {exc}") from exc
            fields = text.split()
            keys[key.public_bytes(*_DER)] = fields[2] if len(fields) > 2 else f"{path.name}:{number}"
        if not keys:
            raise SecAggError(f"{path} holds no public keys")
        return cls(keys)

    @classmethod
    def from_path(cls, path: Path) -> TrustedIdentities:
        """The pinned keys in ``path``: a file of OpenSSH public keys, or a folder of ``.pub`` files; SecAggError
        naming the file that does not parse (a private key given by mistake included), or an empty folder."""
        if not path.is_dir():
            return cls.from_file(path)
        keys: dict[bytes, str] = {}
        for file in sorted(path.glob("*.pub")):
            keys.update(cls.from_file(file).names)
        if not keys:
            raise SecAggError(f"{path} holds no .pub node keys")
        return cls(keys)

    def verify(self, identity: bytes, signature: bytes, data: bytes, what: str) -> str:
        """The name of the pinned key ``identity`` when ``signature`` over ``data`` verifies under it; SecAggError
        naming ``what`` otherwise (an unsigned, unknown or forged advertisement)."""
        if not identity or not signature:
            raise SecAggError(f"{what} is not signed; this node accepts only keys signed by a trusted node")
        key = self._keys.get(identity)
        if key is None:
            raise SecAggError(f"{what} is signed by a key this node does not trust "
                              f"(SHA-256 {hashlib.sha256(identity).hexdigest()[:16]})")
        try:
            _verify(key, signature, data)
        except InvalidSignature as exc:
            raise SecAggError(f"{what}: the signature of {self.names[identity]!r} does not verify (keys "
                              "substituted, or signed for another run, round, party list or execution)") from exc
        return self.names[identity]


def verify_signature(identity: bytes, signature: bytes, data: bytes, what: str) -> None:
    """Check ``signature`` over ``data`` under the DER public key ``identity`` (one this party already accepted
    as a pinned peer's); SecAggError naming ``what`` when it is missing or does not verify."""
    if not identity or not signature:
        raise SecAggError(f"{what} is not signed by the identity that signed that party's keys; refused")
    try:
        key = serialization.load_der_public_key(identity)
        if not isinstance(key, VerifyingKey):
            raise SecAggError(f"{what}: the signer's key is not an EC or Ed25519 key")
        _verify(key, signature, data)
    except (InvalidSignature, ValueError, UnsupportedAlgorithm) as exc:
        raise SecAggError(f"{what}: the signature does not verify (altered, or made in another execution of this "
                          "setup); refused") from exc
