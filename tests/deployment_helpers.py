"""Process helpers shared by the real-deployment tests: free ports, waiting for a listener, starting a TLS
SuperLink with SuperNodes, submitting a run, stopping process groups."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
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


def stop_processes(processes: list[subprocess.Popen], grace_s: float = 15.0) -> None:
    """Stop every process we started, and their children, by process-group id: SIGTERM, then SIGKILL what is
    left after ``grace_s``."""
    for proc in processes:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
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
    """The environment of every process of a test deployment: this venv's tools first, a private FLWR_HOME and
    node state folder, one torch thread per client, nothing phoning home."""
    return {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "FLWR_HOME": str(tmp_path / "flwr-home"), "XDG_STATE_HOME": str(tmp_path / "node-state"),
            "FEDSQUEEZE_CLIENT_THREADS": "1",
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
    """``fedsqueeze node`` as docs/deployment.md runs it: a SuperNode and (unless ``warm`` is False) its warm trainer;
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
                         identities: bool = False, database: Path | None = None,
                         commands: dict[str, list[str]] | None = None, fleet_host: str = "127.0.0.1",
                         node_dial: Callable[[int], str] | None = None, node_prefix: tuple[str, ...] = (),
                         cert_hosts: tuple[str, ...] = (), coordinator_cli: bool = False) -> dict[str, Path]:
    """A SuperLink with dev TLS certificates and ``nodes`` client nodes (``fedsqueeze node``, one partition each),
    and the flwr connection to submit runs to it; returns the certificate paths. With ``identities`` the SuperLink
    authenticates nodes, each node's key is registered, and every node pins all of them (``--trusted-nodes``), so
    secure aggregation runs with signed keys and the confirmation stage. With ``database`` the SuperLink keeps its
    state in that file (it survives a restart). ``commands`` receives every process's command line by name, for a
    test that restarts one. Links: the Fleet API listens on ``fleet_host``, nodes dial ``node_dial(fleet_port)``
    (default localhost:PORT; a relay's address, say), each node command starts with ``node_prefix`` (``ip netns
    exec NS``), and the server certificate also names ``cert_hosts``. With ``coordinator_cli`` the SuperLink runs
    under ``fedsqueeze coordinator`` (process name still ``superlink``), its state in its default place under
    the environment's XDG_STATE_HOME unless ``database`` names one."""
    certs = generate_dev_certificates(tmp_path / "certs", hosts=("localhost", "127.0.0.1", *cert_hosts))
    fleet_port, control_port = free_port(), free_port()
    commands = {} if commands is None else commands
    if coordinator_cli:
        commands["superlink"] = [sys.executable, "-m", "simulations.cli", "coordinator", "--certs",
                                 str(certs["ca"].parent), "--fleet-address", f"{fleet_host}:{fleet_port}",
                                 "--control-port", str(control_port), *(["--node-auth"] if identities else []),
                                 *(["--database", str(database)] if database is not None else [])]
    else:
        commands["superlink"] = superlink_command(
            certs_dir=certs["ca"].parent, fleet_address=f"{fleet_host}:{fleet_port}", control_port=control_port,
            node_auth=identities, database=str(database) if database is not None else None)
    start_process("superlink", commands["superlink"], logs=logs, env=env, processes=processes)
    wait_for_port(fleet_port, 90)
    wait_for_port(control_port, 60)
    write_connection(Path(env["FLWR_HOME"]), address=f"localhost:{control_port}", root_certificates=certs["ca"])
    keys = generate_node_keys(tmp_path / "certs" / "node-keys", nodes) if identities else []
    for pair in keys:
        register_node(pair.public_key, env=env)
    for partition in range(nodes):
        signed = dict(auth_key=keys[partition].private_key, trusted_nodes=tmp_path / "certs" / "node-keys") \
            if identities else {}
        dial = node_dial(fleet_port) if node_dial is not None else f"localhost:{fleet_port}"
        commands[f"supernode{partition}"] = [*node_prefix, *node_command(
            superlink=dial, partition_id=partition, num_partitions=nodes,
            root_certificates=certs["ca"], clientappio_port=free_port(), warm=warm, **signed)]
        start_process(f"supernode{partition}", commands[f"supernode{partition}"], logs=logs, env=env,
                      processes=processes)
    return certs


def restart_process(name: str, command: list[str], *, logs: Path, env: dict[str, str],
                    processes: dict[str, subprocess.Popen]) -> subprocess.Popen:
    """Start ``command`` again under ``name`` after its first process died; the new log goes to
    ``logs/<name>-restarted.log`` and the old process is kept under ``<name>-crashed`` (to be reaped)."""
    processes[f"{name}-crashed"] = processes.pop(name)
    proc = subprocess.Popen(command, stdout=(logs / f"{name}-restarted.log").open("w"), stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    processes[name] = proc
    return proc


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``, every process of its group and every process below it, all at once (a machine that lost
    power: nothing gets to stop gracefully), reap it and wait until every one of them is gone (a dying SuperLink
    still accepts connections on its port for a moment, so a caller that restarts it and waits for the port could
    otherwise find the old one)."""
    import psutil

    below = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for child in below:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    for child in below:  # gone, or a zombie nobody reaped yet: either way its sockets are closed
        while True:
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"process {child.pid} outlived SIGKILL by 30 s")
            time.sleep(0.05)


def warm_trainer_pid(node: subprocess.Popen, timeout_s: float = 60.0) -> int:
    """The pid of the warm trainer a ``fedsqueeze node`` process started (its child running client.trainer)."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in psutil.Process(node.pid).children(recursive=True):
            try:
                if child.cmdline()[1:3] == ["-m", "client.trainer"]:  # not its tree guard, which names it too
                    return child.pid
            except psutil.Error:  # a process that came and went meanwhile
                continue
        time.sleep(0.2)
    raise TimeoutError(f"no warm trainer under process {node.pid} after {timeout_s} s")


def tiny_sft_config(model: str, out_dir: Path, *, clients: int, rounds: int, wait_s: float = 120.0,
                    extra: str = "") -> str:
    """The run config of a deployed test run: SFT of the tiny causal LM at ``model``, ``clients`` nodes (one iid
    partition each, waited for ``wait_s``), ``rounds`` rounds, written to ``out_dir``; ``extra`` adds run-config
    entries."""
    return (f"preset='sft' model='{model}' per-topic=20 heldout=16 max-length=64 local-steps=4 batch-size=4 "
            f"lr=0.01 eval-samples=2 max-new-tokens=4 num-clients={clients} num-server-rounds={rounds} "
            f"partitioner='iid' wait-for-clients-s={wait_s} out-dir='{out_dir}' {extra}").strip()


def metrics_rows(out_dir: Path) -> list[dict]:
    """The rounds a run has recorded so far (metrics.jsonl), [] before the first."""
    path = out_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_round(out_dir: Path, round_id: int, timeout_s: float, logs: Path) -> list[dict]:
    """Block until the run in ``out_dir`` has recorded round ``round_id``; its rows. TimeoutError (with the
    SuperLink log's end) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = metrics_rows(out_dir)
        if len(rows) >= round_id:
            return rows
        time.sleep(0.2)
    raise TimeoutError(f"round {round_id} not recorded after {timeout_s} s: "
                       + (logs / "superlink.log").read_text()[-3000:])


def wait_for_log(path: Path, text: str, count: int, timeout_s: float) -> None:
    """Block until ``text`` occurs ``count`` times in the log at ``path``; TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.1)
    raise TimeoutError(f"'{text}' not {count} times in {path} after {timeout_s} s")


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
