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
    """Paths of one SuperNode's key pair: ``private_key`` stays on the node, ``public_key`` is registered."""

    private_key: Path
    public_key: Path


def generate_node_keys(out_dir: Path, count: int, prefix: str = "node") -> list[NodeKeyPair]:
    """Write ``count`` key pairs as ``out_dir/{prefix}-{i}.key`` (OpenSSH private, 0600) and ``.pub`` (OpenSSH).

    Existing files of the same names are replaced. Raises ValueError when ``count`` is negative.
    """
    if count < 0:
        raise ValueError(f"number of node keys must be >= 0, got {count}")
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = []
    for index in range(count):
        key = ec.generate_private_key(ec.SECP384R1())
        pair = NodeKeyPair(out_dir / f"{prefix}-{index}.key", out_dir / f"{prefix}-{index}.pub")
        write_secret(pair.private_key, key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.OpenSSH,
                                                          serialization.NoEncryption()))
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        pair.public_key.write_bytes(public + f" fedsqueeze-{prefix}-{index}\n".encode())
        pairs.append(pair)
    return pairs
