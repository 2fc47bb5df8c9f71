"""Launch helper for a client node: ``flower-supernode`` with this node's partition and device."""

from __future__ import annotations

from pathlib import Path


def supernode_command(*, superlink: str, partition_id: int, num_partitions: int,
                      root_certificates: Path | None, clientappio_port: int = 9094,
                      device: str = "", auth_private_key: Path | None = None) -> list[str]:
    """The ``flower-supernode`` command line for one client node (TLS when ``root_certificates`` is given).

    ``auth_private_key`` is this node's OpenSSH EC private key for a SuperLink with SuperNode authentication (its
    public key must be registered there first). Authentication needs TLS: ValueError without ``root_certificates``.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    if auth_private_key is not None:
        if root_certificates is None:
            raise ValueError("SuperNode authentication needs TLS: give the root certificates, not --insecure")
        if not auth_private_key.is_file():
            raise FileNotFoundError(f"node private key {auth_private_key} is missing")
    node_config = f"partition-id={partition_id} num-partitions={num_partitions}"
    if device:
        node_config += f' device="{device}"'
    command = ["flower-supernode", "--superlink", superlink, "--port", str(clientappio_port),
               "--node-config", node_config]
    if root_certificates is None:
        command.append("--insecure")
    else:
        if not root_certificates.is_file():
            raise FileNotFoundError(f"root certificate {root_certificates} is missing")
        command += ["--root-certificates", str(root_certificates)]
    if auth_private_key is not None:
        command += ["--auth-supernode-private-key", str(auth_private_key)]
    return command
