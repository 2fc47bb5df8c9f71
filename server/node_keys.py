"""SuperNode key pairs for Flower's CLI-managed node authentication (only registered public keys may connect).

Formats are the ones flwr 1.39 reads: the SuperNode loads its private key with ``load_ssh_private_key`` and
``flwr supernode register`` loads an OpenSSH EC public key on a NIST curve. Keys are P-384, as Flower's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server.secret_files import write_secret

NODE_KEYS_DIR = "node-keys"


@dataclass(frozen=True)
class NodeKeyPair:
    """Paths of one SuperNode's key pair: ``private_key`` stays on the node, ``public_key`` is registered;
    ``created``: written by this call (else an existing pair, kept)."""

    private_key: Path
    public_key: Path
    created: bool = True


def check_node_keys(out_dir: Path, count: int, prefix: str = "node", *, replace: bool = False) -> set[NodeKeyPair]:
    """The existing pairs ``generate_node_keys`` would keep; ValueError, before anything is written, for a negative
    ``count``, a folder that is a file, or half a pair (unless ``replace``)."""
    if count < 0:
        raise ValueError(f"number of node keys must be >= 0, got {count}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file, not a folder for node keys")
    kept = set()
    for index in range(count):
        pair = NodeKeyPair(out_dir / f"{prefix}-{index}.key", out_dir / f"{prefix}-{index}.pub")
        present = [path for path in (pair.private_key, pair.public_key) if path.exists()]
        if len(present) == 1 and not replace:
            raise ValueError(f"{present[0]} exists without its other half: move it aside, or write a new pair with "
                             "--replace")
        if present and not replace:
            kept.add(pair)
    return kept


def generate_node_keys(out_dir: Path, count: int, prefix: str = "node", *, replace: bool = False
                       ) -> list[NodeKeyPair]:
    """The key pairs ``out_dir/{prefix}-{i}.key`` (OpenSSH private, 0600) and ``.pub`` (OpenSSH), i < ``count``.

    A complete existing pair is kept (it may be registered and on its node already) and only missing pairs are
    written, unless ``replace``, which writes every one anew. ValueError for a negative ``count``, a folder that
    is a file, or half a pair (one file without the other).
    """
    kept = check_node_keys(out_dir, count, prefix, replace=replace)
    wanted = [NodeKeyPair(out_dir / f"{prefix}-{i}.key", out_dir / f"{prefix}-{i}.pub") for i in range(count)]
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = []
    for index, pair in enumerate(wanted):
        if pair in kept:
            pairs.append(NodeKeyPair(pair.private_key, pair.public_key, created=False))
            continue
        key = ec.generate_private_key(ec.SECP384R1())
        write_secret(pair.private_key, key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.OpenSSH,
                                                          serialization.NoEncryption()))
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        pair.public_key.write_bytes(public + f" fedsqueeze-{prefix}-{index}\n".encode())
        pairs.append(pair)
    return pairs
