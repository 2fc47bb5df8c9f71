"""Process helpers shared by the real-deployment tests: free ports, waiting for a listener, starting a TLS
SuperLink with SuperNodes, submitting a run, stopping process groups."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from server.certs import generate_dev_certificates
from server.launch import register_node, submit_command, superlink_command, write_connection
from server.node_keys import generate_node_keys


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float) -> None:
    """Block until something accepts connections on 127.0.0.1:``port``; TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def stop_processes(processes: list[subprocess.Popen]) -> None:
    """Stop every process we started, and their children, by process-group id."""
    for proc in processes:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def deployment_env(tmp_path: Path) -> dict[str, str]:
    """The environment of every process of a test deployment: this venv's tools first, a private FLWR_HOME, one
    torch thread per client, nothing phoning home."""
    return {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "FLWR_HOME": str(tmp_path / "flwr-home"), "FEDSQUEEZE_CLIENT_THREADS": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1"}


def start_process(name: str, command: list[str], *, logs: Path, env: dict[str, str],
                  processes: dict[str, subprocess.Popen]) -> subprocess.Popen:
    """Start ``command`` in its own process group, logging to ``logs/<name>.log``; ``processes`` keeps it."""
    proc = subprocess.Popen(command, stdout=(logs / f"{name}.log").open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    processes[name] = proc
    return proc


def node_command(*, superlink: str, partition_id: int, num_partitions: int, root_certificates: Path,
                 clientappio_port: int, warm: bool = True, auth_key: Path | None = None,
                 trusted_nodes: Path | None = None) -> list[str]:
    """``fedsqueeze node`` as the README runs it: a SuperNode and (unless ``warm`` is False) its warm trainer;
    with ``auth_key`` and ``trusted_nodes`` it authenticates and signs its secure-aggregation steps."""
    command = [sys.executable, "-m", "simulations.cli", "node", "--superlink", superlink,
               "--partition-id", str(partition_id), "--num-partitions", str(num_partitions),
               "--root-certificates", str(root_certificates), "--clientappio-port", str(clientappio_port)]
    if auth_key is not None:
        command += ["--auth-key", str(auth_key)]
    if trusted_nodes is not None:
        command += ["--trusted-nodes", str(trusted_nodes)]
    return command + ([] if warm else ["--cold"])


def start_tls_federation(tmp_path: Path, *, logs: Path, env: dict[str, str],
                         processes: dict[str, subprocess.Popen], nodes: int = 2, warm: bool = True,
                         identities: bool = False) -> dict[str, Path]:
    """A SuperLink with dev TLS certificates and ``nodes`` client nodes (``fedsqueeze node``, one partition each),
    and the flwr connection to submit runs to it; returns the certificate paths. With ``identities`` the SuperLink
    authenticates nodes, each node's key is registered, and every node pins all of them (``--trusted-nodes``), so
    secure aggregation runs with signed keys and the confirmation stage."""
    certs = generate_dev_certificates(tmp_path / "certs")
    fleet_port, control_port = free_port(), free_port()
    start_process("superlink", superlink_command(certs_dir=certs["ca"].parent, fleet_address=f"127.0.0.1:{fleet_port}",
                                                 control_port=control_port, node_auth=identities),
                  logs=logs, env=env, processes=processes)
    wait_for_port(fleet_port, 60)
    wait_for_port(control_port, 60)
    write_connection(Path(env["FLWR_HOME"]), address=f"localhost:{control_port}", root_certificates=certs["ca"])
    keys = generate_node_keys(tmp_path / "certs" / "node-keys", nodes) if identities else []
    for pair in keys:
        register_node(pair.public_key, env=env)
    for partition in range(nodes):
        signed = dict(auth_key=keys[partition].private_key, trusted_nodes=tmp_path / "certs" / "node-keys") \
            if identities else {}
        start_process(f"supernode{partition}", node_command(
            superlink=f"localhost:{fleet_port}", partition_id=partition, num_partitions=nodes,
            root_certificates=certs["ca"], clientappio_port=free_port(), warm=warm, **signed),
            logs=logs, env=env, processes=processes)
    return certs


def submit_and_wait(run_config: str, *, out_dir: Path, logs: Path, env: dict[str, str], app_dir: Path | None = None
                    ) -> subprocess.CompletedProcess:
    """Submit a run with ``flwr run`` (this app, or the one in ``app_dir``) and wait until its summary.json is
    written; asserts both succeed."""
    command = submit_command(run_config) if app_dir is None else submit_command(run_config, app_dir=app_dir)
    submitted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    summary_path = out_dir / "summary.json"
    deadline = time.monotonic() + 60
    while not summary_path.exists() and time.monotonic() < deadline:
        time.sleep(1)
    assert summary_path.exists(), submitted.stdout[-3000:] + (logs / "superlink.log").read_text()[-3000:]
    return submitted
