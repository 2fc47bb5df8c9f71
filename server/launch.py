"""Launch helpers for the coordinator side of a deployment: the SuperLink and run submission."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from server.certs import CA_CERT, SERVER_CERT, SERVER_KEY

APP_DIR = Path(__file__).resolve().parents[1]
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
    if certs_dir is None:
        command.append("--insecure")
    else:
        for name in (CA_CERT, SERVER_CERT, SERVER_KEY):
            if not (certs_dir / name).is_file():
                raise FileNotFoundError(f"TLS file {certs_dir / name} is missing "
                                        "(make a dev set with: fedsqueeze certs DIR)")
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
        detail = reply.get("error-message") or (result.stdout + result.stderr)[-1000:]
        raise RuntimeError(f"registering {public_key} failed: {' '.join(detail.split())}")
    return int(reply["node-id"])
