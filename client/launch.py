"""Launch helper for a client node: ``flower-supernode`` with this node's partition and device."""

from __future__ import annotations

from pathlib import Path


def supernode_command(*, superlink: str, partition_id: int, num_partitions: int,
                      root_certificates: Path | None, clientappio_port: int = 9094,
                      device: str = "") -> list[str]:
    """The ``flower-supernode`` command line for one client node (TLS when ``root_certificates`` is given)."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
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
    return command
