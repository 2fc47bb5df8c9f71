"""Launch helpers for the coordinator side of a deployment: the SuperLink and run submission."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from server.certs import CA_CERT, SERVER_CERT, SERVER_KEY
from server.logs import strip_ansi

APP_DIR = Path(__file__).resolve().parents[1]
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
CONNECTION_NAME = "fedsqueeze"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def superlink_command(*, certs_dir: Path | None, fleet_address: str = "0.0.0.0:9092",
                      control_host: str = "127.0.0.1", control_port: int = 8000,
                      database: str | None = None, node_auth: bool = False) -> list[str]:
    """The ``flower-superlink`` command line: TLS from ``certs_dir`` (ca.crt, server.pem, server.key) or insecure.

    ``node_auth`` turns on Flower's CLI-managed SuperNode authentication: only SuperNodes whose public keys were
    registered (register_node) may connect. It needs TLS, so it raises ValueError without ``certs_dir``.
    Runtime dependency installation stays off: the coordinator's environment already has fedsqueeze.
    The Control API stays on loopback (ValueError otherwise): open-source Flower authenticates none of its callers,
    and anyone who reaches it can submit an app whose code then runs on every node; submit from elsewhere through
    an SSH tunnel.
    """
    if control_host not in LOOPBACK:
        raise ValueError(f"the Control API must stay on loopback, not {control_host}: Flower authenticates none of "
                         "its callers (anyone reaching it could run code on every node); submit from another machine "
                         "through an SSH tunnel: ssh -N -L 8000:127.0.0.1:8000 COORDINATOR")
    if node_auth and certs_dir is None:
        raise ValueError("SuperNode authentication needs TLS: give the certificates directory "
                         "(make a dev set with: fedsqueeze certs DIR), not --insecure")
    command = ["flower-superlink", "--fleet-api-address", fleet_address, "--host", control_host,
               "--port", str(control_port), "--disable-runtime-dependency-installation"]
    check_address(fleet_address, "--fleet-address")
    if not 0 < control_port < 65536:
        raise ValueError(f"--control-port must be in 1..65535, got {control_port}")
    if certs_dir is None:
        command.append("--insecure")
    else:
        check_tls_files(certs_dir)
        command += ["--ssl-ca-certfile", str(certs_dir / CA_CERT), "--ssl-certfile", str(certs_dir / SERVER_CERT),
                    "--ssl-keyfile", str(certs_dir / SERVER_KEY)]
    if node_auth:
        command.append("--enable-supernode-auth")
    if database:
        command += ["--database", database]
    return command


def write_connection(flwr_home: Path, *, address: str, root_certificates: Path | None) -> Path:
    """Write a Flower config naming the SuperLink's control API as connection ``fedsqueeze``."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION_NAME}"', "", f"[superlink.{CONNECTION_NAME}]",
             f'address = "{address}"']
    if root_certificates is None:
        lines.append("insecure = true")
    else:
        if not root_certificates.is_file():
            raise FileNotFoundError(f"root certificate {root_certificates} is missing")
        lines.append(f'root-certificates = "{root_certificates.resolve()}"')
    path = flwr_home / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def submit_command(run_config: str, *, app_dir: Path = APP_DIR, stream: bool = True) -> list[str]:
    """The ``flwr run`` command that submits this app to the connection written by write_connection."""
    command = ["flwr", "run", str(app_dir), CONNECTION_NAME]
    if run_config:
        command += ["--run-config", run_config]
    if stream:
        command.append("--stream")
    return command


def register_node_command(public_key: Path, *, name: str = "") -> list[str]:
    """The ``flwr supernode register`` command that allow-lists one node's OpenSSH public key on the SuperLink.

    It talks to the connection written by write_connection (set ``FLWR_HOME`` to that directory).
    """
    if not public_key.is_file():
        raise FileNotFoundError(f"public key {public_key} is missing "
                                "(make node keys with: fedsqueeze certs DIR --nodes N)")
    command = ["flwr", "supernode", "register", str(public_key), CONNECTION_NAME, "--format", "json"]
    if name:
        command += ["--name", name]
    return command


def register_node(public_key: Path, *, env: dict[str, str], name: str = "", timeout_s: float = 60.0) -> int:
    """Register one public key with the running SuperLink; returns the node id Flower assigned to it.

    ``env`` must name the connection's directory as ``FLWR_HOME`` and have ``flwr`` on ``PATH``. Raises
    RuntimeError with Flower's own message when the SuperLink refuses (e.g. the key is already registered).
    """
    result = subprocess.run(register_node_command(public_key, name=name), env=env, capture_output=True, text=True,
                            timeout=timeout_s, check=False)
    start = result.stdout.find("{")
    try:
        reply = json.loads(result.stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        reply = {}
    if result.returncode != 0 or not reply.get("success"):
        detail = strip_ansi(reply.get("error-message") or (result.stdout + result.stderr)[-1000:])
        raise RuntimeError(f"registering {public_key} failed: {' '.join(detail.split())}")
    return int(reply["node-id"])


def check_address(address: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for an IPv6 address) split; ValueError naming ``flag`` otherwise (a URL, a
    scheme, a path, a port outside 1..65535)."""
    host, sep, port = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    valid_host = bool(host) and host.isascii() and not any(c.isspace() or c in "/@?#" for c in host) and (
        bracketed or ":" not in host)
    if not sep or not valid_host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"{flag} {address!r} is not HOST:PORT (e.g. 0.0.0.0:9092)")
    return host, int(port)


def check_tls_files(certs_dir: Path) -> None:
    """The SuperLink's TLS files load and agree: ca.crt and server.pem hold PEM certificates (server.pem its own
    first, then any intermediates), server.pem's chain leads to a certificate in ca.crt, and server.key is a PEM
    private key for server.pem and its owner's alone. FileNotFoundError or ValueError naming the file and the
    problem, before the SuperLink starts (it would otherwise print a traceback or keep running with handshakes that
    all fail)."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    paths = {name: certs_dir / name for name in (CA_CERT, SERVER_CERT, SERVER_KEY)}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"TLS file {path} is missing (make a dev set with: fedsqueeze certs DIR)")
    certs = {}
    for name in (CA_CERT, SERVER_CERT):
        try:
            certs[name] = x509.load_pem_x509_certificates(paths[name].read_bytes())
        except ValueError:
            raise ValueError(f"{paths[name]} is not a PEM certificate") from None
    mode = paths[SERVER_KEY].stat().st_mode & 0o777
    if mode & 0o077:
        raise ValueError(f"{paths[SERVER_KEY]} is readable by others (mode {mode:04o}): chmod 600 {paths[SERVER_KEY]}")
    try:
        key = serialization.load_pem_private_key(paths[SERVER_KEY].read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{paths[SERVER_KEY]} is not an unencrypted PEM private key (an OpenSSH key will not do: "
                         f"{' '.join(str(exc).split())[:120]})") from None
    leaf, *intermediates = certs[SERVER_CERT]
    if key.public_key().public_bytes(*_SPKI) != leaf.public_key().public_bytes(*_SPKI):
        raise ValueError(f"{paths[SERVER_KEY]} is not the key of {paths[SERVER_CERT]}")
    if not _chains_to(leaf, intermediates, certs[CA_CERT]):
        raise ValueError(f"{paths[SERVER_CERT]} is not signed by {paths[CA_CERT]} (nor through the intermediates it "
                         "holds): nodes holding that CA would refuse every connection")


def _chains_to(cert, intermediates: list, roots: list) -> bool:
    """Whether ``cert`` was issued, directly or through ``intermediates``, by one of ``roots`` (signatures
    checked; at most one pass over the intermediates, so no loop)."""
    from cryptography.exceptions import InvalidSignature

    def issued(child, parent) -> bool:
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    remaining = list(intermediates)
    while True:
        if any(issued(cert, root) for root in roots):
            return True
        parent = next((candidate for candidate in remaining if issued(cert, candidate)), None)
        if parent is None:
            return False
        remaining.remove(parent)
        cert = parent
