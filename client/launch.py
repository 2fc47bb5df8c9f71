"""Launch helpers for a client node: ``flower-supernode`` with this node's partition and device, and the node's
warm trainer (``client/trainer.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

from client.app_trust import parse_pins
from client.privacy_floor import FLOOR_KEY, PrivacyFloor
from client.state_dir import STATE_DIR_KEY
from client.warm_channel import TRAINER_SOCKET_KEY

IDENTITY_KEY = "secagg-identity-key"  # node config keys read by client/secure.py (kept import-light here)
TRUSTED_NODES = "secagg-trusted-nodes"


def supernode_command(*, superlink: str, partition_id: int, num_partitions: int,
                      root_certificates: Path | None, clientappio_port: int = 9094,
                      device: str = "", auth_private_key: Path | None = None,
                      trainer_socket: Path | None = None, capped_poll: bool = False,
                      trusted_nodes: Path | None = None, app_sha256: tuple[str, ...] = (),
                      privacy_floor: str = "", state_dir: Path | None = None,
                      max_wait_s: float | None = None) -> list[str]:
    """The ``flower-supernode`` command line for one client node (TLS when ``root_certificates`` is given).

    ``auth_private_key`` is this node's OpenSSH EC private key for a SuperLink with SuperNode authentication (its
    public key must be registered there first). Authentication needs TLS: ValueError without ``root_certificates``.
    ``trainer_socket`` names the node's warm trainer (trainer_command): each message is then run there.
    ``capped_poll`` runs the SuperNode through ``client/supernode.py`` (Flower's loop, shorter idle wait).
    ``trusted_nodes`` (the federation's node public keys, pinned on this node: a file or a folder of .pub) makes the
    node sign its secure-aggregation keys with ``auth_private_key`` and accept only keys its peers signed.
    ``app_sha256`` (hashes, or files of them; client/app_trust.py) makes the node run only app bundles it pinned; it
    runs the SuperNode through ``client/supernode.py``. ValueError/FileNotFoundError for a malformed or missing pin.
    ``privacy_floor`` (client/privacy_floor.py, ``"secagg=true min-parties=5"``) is the least protection this node
    accepts of a round; ValueError naming a bad entry.
    ``max_wait_s`` bounds how long the SuperNode keeps retrying an unreachable SuperLink (Flower: without end).
    ``state_dir`` is where the node keeps what must outlive one Flower run (its error-feedback residuals, so a
    coordinator restart loses none, client/residual_store.py; the secure-aggregation setups it took part in,
    client/setup_ledger.py).
    """
    PrivacyFloor.parse(privacy_floor)
    pins = sorted(parse_pins(app_sha256))
    if num_partitions < 1:
        raise ValueError(f"--num-partitions must be at least 1, got {num_partitions}")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"--partition-id {partition_id} is outside 0..{num_partitions - 1} (--num-partitions "
                         f"{num_partitions})")
    if trusted_nodes is not None and auth_private_key is None:
        raise ValueError("--trusted-nodes needs this node's own key (--auth-key): it signs the node's round keys")
    if auth_private_key is not None:
        if root_certificates is None:
            raise ValueError("SuperNode authentication needs TLS: give the root certificates, not --insecure")
        check_identity_files(auth_private_key, trusted_nodes)
    if root_certificates is not None:
        check_certificate_file(root_certificates, "--root-certificates")
    node_config = f"partition-id={partition_id} num-partitions={num_partitions}"
    if device:
        node_config += f' device="{device}"'
    if trainer_socket is not None:
        node_config += f' {TRAINER_SOCKET_KEY}="{trainer_socket}"'
    if privacy_floor.strip():
        node_config += f' {FLOOR_KEY}="{" ".join(privacy_floor.split())}"'
    if state_dir is not None:
        node_config += f' {STATE_DIR_KEY}="{state_dir.expanduser().resolve()}"'
    if trusted_nodes is not None and auth_private_key is not None:
        node_config += (f' {IDENTITY_KEY}="{auth_private_key.resolve()}"'
                        f' {TRUSTED_NODES}="{trusted_nodes.resolve()}"')
    program = [sys.executable, "-m", "client.supernode"] if capped_poll or pins else ["flower-supernode"]
    for pin in pins:
        program += ["--app-sha256", pin]
    command = [*program, "--superlink", superlink, "--port", str(clientappio_port),
               "--node-config", node_config]
    if root_certificates is None:
        command.append("--insecure")
    else:
        command += ["--root-certificates", str(root_certificates)]
    if auth_private_key is not None:
        command += ["--auth-supernode-private-key", str(auth_private_key)]
    if max_wait_s is not None:
        command += ["--max-wait-time", f"{max_wait_s:.0f}"]
    return command


def trainer_command(socket_path: Path, parent_pid: int | None = None) -> list[str]:
    """The command line of a node's warm trainer listening at ``socket_path`` (this interpreter, so this venv);
    with ``parent_pid`` it stops when that process (the node) is gone."""
    command = [sys.executable, "-m", "client.trainer", "--socket", str(socket_path)]
    return command + (["--parent-pid", str(parent_pid)] if parent_pid is not None else [])


def check_private_key_file(path: Path, flag: str) -> None:
    """A private key file must exist and be readable by its owner only, as SSH demands of its keys: ValueError
    (FileNotFoundError when missing) naming ``flag`` and the chmod that fixes it."""
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path} is missing")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ValueError(f"{flag} {path} is readable by others (mode {mode:04o}): a private key must be its owner's "
                         f"alone; chmod 600 {path}")


def check_identity_files(auth_private_key: Path, trusted_nodes: Path | None) -> None:
    """The node's private key loads, is its owner's alone, and (with ``trusted_nodes``) the pinned keys load and
    hold this node's own public key (the others, pinning the same list, would otherwise refuse its keys);
    ValueError naming the file and the problem."""
    from strategies.secagg.identity import SigningIdentity, TrustedIdentities

    check_private_key_file(auth_private_key, "--auth-key")
    identity = SigningIdentity.from_file(auth_private_key)
    if trusted_nodes is None:
        return
    if not trusted_nodes.exists():
        raise FileNotFoundError(f"--trusted-nodes {trusted_nodes} is missing")
    pinned = TrustedIdentities.from_path(trusted_nodes)
    if identity.public_der not in pinned.names:
        raise ValueError(f"--trusted-nodes {trusted_nodes} does not hold this node's own public key (--auth-key "
                         f"{auth_private_key}): nodes pinning the same list would refuse its keys")


def check_certificate_file(path: Path, flag: str) -> None:
    """``path`` holds a PEM certificate: FileNotFoundError when missing, ValueError naming ``flag`` otherwise (an
    OpenSSH public key or a private key given by mistake)."""
    from cryptography import x509

    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path} is missing")
    try:
        x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{flag} {path} is not a PEM certificate (give the CA's certificate, ca.crt: not a key)"
                         ) from exc
