"""Secure aggregation against a coordinator that substitutes keys: the attack recovers a client's exact input when
key advertisements are not signed, and with pinned node identities it is refused before any secret is shared;
honest rounds with identities stay exact under dropouts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protos.fedsqueeze.v1 import secagg_pb2
from server.node_keys import generate_node_keys
from strategies.secagg import common, ring, shamir
from strategies.secagg.errors import SecAggError
from strategies.secagg.identity import SigningIdentity, TrustedIdentities, advertisement_bytes
from strategies.secagg.party import PAIR_MASK, SELF_MASK, Party
from tests.secagg_harness import Dropouts, plain_sum, random_inputs, run_round

SEGMENTS = [(300, 24)]
PARTIES = [11, 22, 33, 44, 55]


def _federation(tmp_path: Path, parties: list[int]) -> tuple[dict[int, SigningIdentity], TrustedIdentities]:
    """Each party's node key (written as fedsqueeze certs --nodes writes them) and the pinned list of all of them."""
    pairs = generate_node_keys(tmp_path / "node-keys", len(parties))
    pinned = tmp_path / "trusted-nodes.pub"
    pinned.write_text("# the federation's nodes\n" + "".join(p.public_key.read_text() for p in pairs))
    return ({party: SigningIdentity.from_file(pair.private_key) for party, pair in zip(parties, pairs, strict=True)},
            TrustedIdentities.from_file(pinned))


def _setup(round_id: int = 3) -> bytes:
    return common.make_setup(round_id, PARTIES, SEGMENTS, neighbours=4, threshold=3, run=77)


def test_an_honest_round_with_signed_keys_is_exact_with_dropouts(tmp_path: Path) -> None:
    identities, trusted = _federation(tmp_path, PARTIES)
    inputs = random_inputs(PARTIES, SEGMENTS, len(PARTIES), seed=5)
    gone = {PARTIES[1], PARTIES[4]}  # n - t = 2 dropouts after sharing keys
    sums, aggregator, seen = run_round(_setup(), inputs, Dropouts(before_masked=gone), identities=identities,
                                       trusted=trusted)
    survivors = [p for p in PARTIES if p not in gone]
    assert aggregator.survivors == survivors
    assert np.array_equal(sums[0], plain_sum(inputs, survivors, SEGMENTS)[0])
    advertised = secagg_pb2.SecAggPublicKeys.FromString(seen["keys"][PARTIES[0]])
    assert advertised.identity == identities[PARTIES[0]].public_der and advertised.signature


class KeySubstitution:
    """A coordinator that gives the target key pairs it made itself in place of every neighbour's, forwards
    shares it forged under those keys, and then strips every mask off the target's input."""

    def __init__(self, setup: bytes, target: int, honest_keys: dict[int, secagg_pb2.SecAggPublicKeys],
                 signer: SigningIdentity | None = None) -> None:
        self.setup, self.target = setup, target
        self.info = common.read_setup(setup)
        self.neighbours = sorted(self.info.neighbours[target])
        self.cipher = {j: X25519PrivateKey.generate().private_bytes_raw() for j in self.neighbours}
        self.mask = {j: X25519PrivateKey.generate().private_bytes_raw() for j in self.neighbours}
        self.target_keys = honest_keys[target]
        self.honest = honest_keys
        self.signer = signer

    def key_list(self, keep_signatures: bool = False) -> bytes:
        """The target's key list: the neighbours' party ids with the coordinator's own public keys."""
        entries = []
        for j in self.neighbours:
            entry = secagg_pb2.SecAggPublicKeys(round=self.info.round, party=j,
                                                cipher_key=common.public_bytes(self.cipher[j]),
                                                mask_key=common.public_bytes(self.mask[j]))
            if keep_signatures:  # the honest node's identity and signature, over other keys
                entry.identity, entry.signature = self.honest[j].identity, self.honest[j].signature
            elif self.signer is not None:  # signed, but by a key the federation never pinned
                entry.identity = self.signer.public_der
                entry.signature = self.signer.sign(advertisement_bytes(self.setup, j, entry.cipher_key,
                                                                       entry.mask_key))
            entries.append(entry)
        return secagg_pb2.SecAggKeyList(round=self.info.round, keys=entries).SerializeToString()

    def open_shares(self, bundle: bytes) -> tuple[bytes, bytes]:
        """Decrypt the target's shares meant for its 'neighbours' and rebuild its self-mask seed and mask key."""
        seed_points, key_points = [], []
        for item in secagg_pb2.SecAggShareBundle.FromString(bundle).shares:
            key = common.share_key(self.cipher[item.receiver], self.target_keys.cipher_key, self.info.round,
                                   self.target, item.receiver)
            plain = AESGCM(key).decrypt(item.ciphertext[:12], item.ciphertext[12:],
                                        common.share_aad(self.info.round, self.target, item.receiver,
                                                         item.self_mask_digest + item.mask_key_digest))
            shares = secagg_pb2.SecAggShares.FromString(plain)
            seed_points.append((self.info.x(item.receiver), shares.self_mask_share))
            key_points.append((self.info.x(item.receiver), shares.mask_key_share))
        return shamir.combine(seed_points, 32), shamir.combine(key_points, 32)

    def forged_shares(self) -> bytes:
        """Shares 'from' every neighbour, under the coordinator's keys, so the target goes on to mask its input."""
        items = []
        for j in self.neighbours:
            shares = secagg_pb2.SecAggShares(round=self.info.round, sender=j, receiver=self.target,
                                             self_mask_share=os.urandom(33), mask_key_share=os.urandom(33))
            key = common.share_key(self.cipher[j], self.target_keys.cipher_key, self.info.round, self.target, j)
            nonce = os.urandom(12)
            digests = (common.share_digest(SELF_MASK, self.info.round, j, self.target, shares.self_mask_share),
                       common.share_digest(PAIR_MASK, self.info.round, j, self.target, shares.mask_key_share))
            sealed = AESGCM(key).encrypt(nonce, shares.SerializeToString(),
                                         common.share_aad(self.info.round, j, self.target, b"".join(digests)))
            items.append(secagg_pb2.SecAggCiphertext(sender=j, receiver=self.target, ciphertext=nonce + sealed,
                                                     self_mask_digest=digests[0], mask_key_digest=digests[1]))
        return secagg_pb2.SecAggShareBundle(round=self.info.round, shares=items).SerializeToString()

    def unmask(self, masked: bytes, seed: bytes) -> np.ndarray:
        """The target's input: its masked words less its self mask and every pairwise mask."""
        (length, bits), = self.info.segments
        message = secagg_pb2.SecAggMaskedInput.FromString(masked)
        words = ring.unpack(message.segments[0], length, bits)
        words -= common.segment_masks(seed, self.info, SELF_MASK)[0]
        for j in self.neighbours:
            pair = common.pair_seed(self.mask[j], self.target_keys.mask_key, self.info.round, self.target, j)
            mask = common.segment_masks(pair, self.info, PAIR_MASK)[0]
            if self.target < j:
                words -= mask
            else:
                words += mask
        return words & common.ring_mask(bits)


def _advertised(setup: bytes, inputs: dict[int, list[np.ndarray]], identities: dict[int, SigningIdentity] | None
                ) -> tuple[dict[int, Party], dict[int, secagg_pb2.SecAggPublicKeys]]:
    parties = {p: Party.start(setup, p, inputs[p]) for p in PARTIES}
    keys = {p: secagg_pb2.SecAggPublicKeys.FromString(
        party.advertise_keys(None if identities is None else identities[p])) for p, party in parties.items()}
    return parties, keys


def test_without_identities_key_substitution_recovers_one_clients_exact_input() -> None:
    """The attack has teeth: this is what the signatures stop."""
    setup = _setup()
    inputs = random_inputs(PARTIES, SEGMENTS, len(PARTIES), seed=9)
    target = PARTIES[2]
    parties, keys = _advertised(setup, inputs, identities=None)
    attack = KeySubstitution(setup, target, keys)
    bundle = parties[target].share_keys(attack.key_list())
    seed, _mask_key = attack.open_shares(bundle)
    masked = parties[target].masked_input(attack.forged_shares())
    assert np.array_equal(attack.unmask(masked, seed), inputs[target][0])


@pytest.mark.parametrize(("forgery", "reason"), [
    ("unsigned", "the keys of party .* not signed"),
    ("untrusted-signer", "signed by a key this node does not trust"),
    ("honest-signature-other-keys", "does not verify"),
])
def test_with_pinned_identities_key_substitution_is_refused_before_any_share(tmp_path: Path, forgery: str,
                                                                            reason: str) -> None:
    identities, trusted = _federation(tmp_path, PARTIES)
    setup = _setup()
    inputs = random_inputs(PARTIES, SEGMENTS, len(PARTIES), seed=9)
    target = PARTIES[2]
    parties, keys = _advertised(setup, inputs, identities)
    signer = SigningIdentity(ec.generate_private_key(ec.SECP384R1())) if forgery == "untrusted-signer" else None
    attack = KeySubstitution(setup, target, keys, signer=signer)
    with pytest.raises(SecAggError, match=reason):
        parties[target].share_keys(attack.key_list(keep_signatures=forgery == "honest-signature-other-keys"),
                                   trusted)
    assert not parties[target].state.self_mask_seed  # nothing was shared


def test_signed_keys_do_not_carry_over_to_another_round_or_party_list(tmp_path: Path) -> None:
    identities, trusted = _federation(tmp_path, PARTIES)
    inputs = random_inputs(PARTIES, SEGMENTS, len(PARTIES), seed=2)
    _, old_keys = _advertised(_setup(round_id=3), inputs, identities)
    for setup in (_setup(round_id=4), common.make_setup(3, PARTIES, SEGMENTS, neighbours=4, threshold=3, run=78)):
        parties, keys = _advertised(setup, inputs, identities)
        target = PARTIES[0]
        replayed = secagg_pb2.SecAggKeyList(round=common.read_setup(setup).round, keys=[
            *(keys[p] for p in PARTIES[1:4]), old_keys[PARTIES[4]]])
        for entry in replayed.keys:
            entry.round = common.read_setup(setup).round
        with pytest.raises(SecAggError, match=f"party {PARTIES[4]}.*does not verify"):
            parties[target].share_keys(replayed.SerializeToString(), trusted)


def test_one_identity_cannot_sign_for_two_parties(tmp_path: Path) -> None:
    identities, trusted = _federation(tmp_path, PARTIES)
    identities[PARTIES[4]] = identities[PARTIES[3]]  # one node's key answering as two parties
    with pytest.raises(SecAggError, match="signs for another party of this round"):
        run_round(_setup(), random_inputs(PARTIES, SEGMENTS, len(PARTIES)), identities=identities, trusted=trusted)


def test_identity_files_are_read_and_bad_ones_named(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "node.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.OpenSSH,
                                                          serialization.NoEncryption()))
    (tmp_path / "nodes.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                       serialization.PublicFormat.OpenSSH) + b" n\n")
    identity = SigningIdentity.from_file(tmp_path / "node.key")
    trusted = TrustedIdentities.from_file(tmp_path / "nodes.pub")
    assert trusted.verify(identity.public_der, identity.sign(b"data"), b"data", "test") == "n"
    (tmp_path / "bad.pub").write_text("ssh-ed25519 AAAA-not-base64 n\n")
    with pytest.raises(SecAggError, match=r"bad\.pub line 1 is not an OpenSSH public key"):
        TrustedIdentities.from_file(tmp_path / "bad.pub")
    (tmp_path / "empty.pub").write_text("# nothing\n")
    with pytest.raises(SecAggError, match="holds no public keys"):
        TrustedIdentities.from_file(tmp_path / "empty.pub")
    (tmp_path / "garbage.key").write_text("not a key")
    with pytest.raises(SecAggError, match="not an unencrypted OpenSSH or PEM private key"):
        SigningIdentity.from_file(tmp_path / "garbage.key")
    with pytest.raises(SecAggError, match="cannot read the node identity key"):
        SigningIdentity.from_file(tmp_path / "missing.key")


def test_a_node_pins_identities_only_with_its_own_key(tmp_path: Path) -> None:
    from client.launch import IDENTITY_KEY, TRUSTED_NODES, supernode_command
    from server.certs import generate_dev_certificates

    pairs = generate_node_keys(tmp_path / "node-keys", 2)
    certs = generate_dev_certificates(tmp_path / "certs")
    node = dict(superlink="127.0.0.1:9092", partition_id=0, num_partitions=2, root_certificates=certs["ca"])
    with pytest.raises(ValueError, match="needs this node's own key"):
        supernode_command(**node, trusted_nodes=tmp_path / "node-keys")
    with pytest.raises(FileNotFoundError, match=r"--trusted-nodes .* is missing"):
        supernode_command(**node, auth_private_key=pairs[0].private_key, trusted_nodes=tmp_path / "nowhere.pub")
    command = supernode_command(**node, auth_private_key=pairs[0].private_key, trusted_nodes=tmp_path / "node-keys")
    node_config = command[command.index("--node-config") + 1]
    assert f'{IDENTITY_KEY}="{pairs[0].private_key.resolve()}"' in node_config
    assert f'{TRUSTED_NODES}="{(tmp_path / "node-keys").resolve()}"' in node_config
