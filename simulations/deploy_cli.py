"""``fedsqueeze coordinator | node | submit | certs | register-node | app-hash``: real SuperLink/SuperNodes over
gRPC."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from client.app_trust import app_sha256
from client.launch import supernode_command, trainer_command
from client.supernode import DEFAULT_HEARTBEAT_S, HEARTBEAT_ENV, POLL_ENV, heartbeat_seconds, poll_seconds
from server.certs import generate_dev_certificates
from server.launch import APP_DIR, register_node, submit_command, superlink_command, write_connection
from server.node_keys import NODE_KEYS_DIR, generate_node_keys
from simulations.terminal import stream_filtered


def _tool_env(env: dict[str, str] | None = None) -> dict[str, str]:
    # Flower's processes start each other by name (flwr-serverapp, flwr-clientapp): put this env's bin first.
    env = dict(env or os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _run(command: list[str], env: dict[str, str] | None = None) -> int:
    print("+ " + " ".join(command), flush=True)
    return subprocess.call(command, env=_tool_env(env))


def _cmd_certs(args: argparse.Namespace) -> int:
    if args.nodes < 0:
        raise ValueError(f"--nodes must be >= 0, got {args.nodes}")
    paths = generate_dev_certificates(Path(args.dir), tuple(args.host or ("localhost", "127.0.0.1")))
    for role, path in paths.items():
        print(f"{role}: {path}")
    for index, pair in enumerate(generate_node_keys(Path(args.dir) / NODE_KEYS_DIR, args.nodes)):
        print(f"node {index}: {pair.private_key} (private, copy to that node only), {pair.public_key} (register)")
    return 0


def _cmd_coordinator(args: argparse.Namespace) -> int:
    certs = None if args.insecure else Path(args.certs)
    return _run(superlink_command(certs_dir=certs, fleet_address=args.fleet_address, control_host=args.control_host,
                                  control_port=args.control_port, database=args.database,
                                  node_auth=args.node_auth))


def _wait_for_trainer(socket_path: Path, trainer: subprocess.Popen, timeout_s: float) -> None:
    """Block until the warm trainer accepts connections; RuntimeError if it exits or does not listen in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if trainer.poll() is not None:
            raise RuntimeError(f"the warm trainer exited with status {trainer.returncode} before it listened")
        if socket_path.exists():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                if probe.connect_ex(str(socket_path)) == 0:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"the warm trainer did not listen at {socket_path} within {timeout_s:.0f} s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def default_state_dir(partition_id: int, environ: dict[str, str] | os._Environ = os.environ) -> Path:
    """Where a node keeps state across runs unless told: $XDG_STATE_HOME (or ~/.local/state)/fedsqueeze/node-<id>."""
    base = Path(environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "fedsqueeze" / f"node-{partition_id}"


def _cmd_node(args: argparse.Namespace) -> int:
    root = None if args.insecure else Path(args.root_certificates)
    node = dict(superlink=args.superlink, partition_id=args.partition_id, num_partitions=args.num_partitions,
                root_certificates=root, clientappio_port=args.clientappio_port, device=args.device,
                auth_private_key=Path(args.auth_key) if args.auth_key else None,
                trusted_nodes=Path(args.trusted_nodes) if args.trusted_nodes else None,
                app_sha256=tuple(args.app_sha256 or ()), privacy_floor=args.privacy_floor,
                state_dir=Path(args.state_dir) if args.state_dir else default_state_dir(args.partition_id))
    poll_seconds({POLL_ENV: str(args.poll_s)})  # ValueError (one line, exit 2) before anything starts
    heartbeat_seconds({HEARTBEAT_ENV: str(args.heartbeat_s)})
    if args.cold:  # a pinned cold node runs Flower's loop through client/supernode.py, so --poll-s applies
        return _run(supernode_command(**node), env={**os.environ, POLL_ENV: str(args.poll_s),
                                                    HEARTBEAT_ENV: str(args.heartbeat_s)})
    socket_dir = Path(tempfile.mkdtemp(prefix="fedsqueeze-trainer-"))  # 0700: only this user reaches the socket
    socket_path = socket_dir / "trainer.sock"
    supernode = supernode_command(**node, trainer_socket=socket_path, capped_poll=True)  # checks the arguments
    env = _tool_env()
    env[POLL_ENV] = str(args.poll_s)
    env[HEARTBEAT_ENV] = str(args.heartbeat_s)
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")  # start the per-message ClientApp within 0.2 s
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # stop both children on SIGTERM
    processes: list[subprocess.Popen] = []
    try:
        trainer = trainer_command(socket_path, parent_pid=os.getpid())
        print("+ " + " ".join(trainer), flush=True)
        processes.append(subprocess.Popen(trainer, env=env))
        _wait_for_trainer(socket_path, processes[0], timeout_s=120)
        print("+ " + " ".join(supernode), flush=True)
        processes.append(subprocess.Popen(supernode, env=env))
        return processes[1].wait()
    except RuntimeError as exc:
        print(f"fedsqueeze: error: {exc}", file=sys.stderr)
        return 1
    finally:
        for process in reversed(processes):
            _stop(process)
        shutil.rmtree(socket_dir, ignore_errors=True)


def _cmd_app_hash(args: argparse.Namespace) -> int:
    print(app_sha256(Path(args.dir)))
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    root = None if args.insecure else Path(args.root_certificates)
    with tempfile.TemporaryDirectory(prefix="fedsqueeze-flwr-") as home:
        write_connection(Path(home), address=args.superlink, root_certificates=root)
        env = {**os.environ, "FLWR_HOME": home}
        command = submit_command(args.run_config, stream=not args.no_stream)
        if args.no_stream:
            return _run(command, env=env)
        print(f"+ {' '.join(command)}  (Flower's lines go to {args.log})", file=sys.stderr, flush=True)
        return stream_filtered(command, _tool_env(env), Path(args.log), verbose=args.verbose)


def _cmd_register_node(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="fedsqueeze-flwr-") as home:
        write_connection(Path(home), address=args.superlink, root_certificates=Path(args.root_certificates))
        env = {**os.environ, "FLWR_HOME": home,
               "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        for public_key in args.public_keys:
            try:
                node_id = register_node(Path(public_key), env=env)
            except RuntimeError as exc:
                print(f"fedsqueeze: error: {exc}", file=sys.stderr)
                return 1
            print(f"{public_key}: registered as node {node_id}")
    return 0


def _tls_args(parser: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--insecure", action="store_true", help="no TLS (local trials only)")
    group.add_argument(flag, help=help_text)


def add_deploy_commands(sub: argparse._SubParsersAction) -> None:
    """Register the deployment subcommands on the ``fedsqueeze`` parser."""
    certs = sub.add_parser("certs", help="make a dev CA and SuperLink certificate for TLS trials")
    certs.add_argument("dir", help="output directory for ca.crt, server.pem, server.key")
    certs.add_argument("--host", action="append", default=None, help="host name or IP (repeatable)")
    certs.add_argument("--nodes", type=int, default=0,
                       help=f"also write this many SuperNode key pairs under DIR/{NODE_KEYS_DIR}/ (for --node-auth)")
    certs.set_defaults(func=_cmd_certs, host=None)

    coord = sub.add_parser("coordinator", help="start the SuperLink (Fleet API over gRPC)")
    _tls_args(coord, "--certs", "directory with ca.crt, server.pem, server.key")
    coord.add_argument("--fleet-address", default="0.0.0.0:9092", help="gRPC Fleet API address for SuperNodes")
    coord.add_argument("--control-host", default="127.0.0.1", help="control API host (flwr run connects here)")
    coord.add_argument("--control-port", type=int, default=8000, help="control API port")
    coord.add_argument("--database", default=None, help="SuperLink state database file (default: in memory)")
    coord.add_argument("--node-auth", action="store_true",
                       help="only SuperNodes whose public keys were registered (register-node) may connect; needs TLS")
    coord.set_defaults(func=_cmd_coordinator)

    node = sub.add_parser("node", help="start a client node (SuperNode) that trains its data partition")
    _tls_args(node, "--root-certificates", "CA certificate that signed the SuperLink's certificate")
    node.add_argument("--superlink", default="127.0.0.1:9092", help="SuperLink Fleet API address")
    node.add_argument("--partition-id", type=int, required=True)
    node.add_argument("--num-partitions", type=int, required=True)
    node.add_argument("--clientappio-port", type=int, default=9094, help="local port, unique per node on a host")
    node.add_argument("--device", default="", help="cpu, cuda or cuda:N for this node (default: the run's)")
    node.add_argument("--auth-key", default=None,
                      help="this node's private key (from certs --nodes) for a coordinator with --node-auth")
    node.add_argument("--trusted-nodes", default=None,
                      help="the federation's node public keys as this node pinned them (a file of OpenSSH keys or a "
                           "folder of .pub): the node then signs its secure-aggregation keys with --auth-key and "
                           "accepts only keys a distinct pinned node signed")
    node.add_argument("--app-sha256", action="append", default=None, metavar="HEX_OR_FILE",
                      help="run only app bundles with this sha256 (from app-hash on the tree you reviewed; or a file "
                           "of them, one a line; repeatable): other runs get an error reply and none of their code "
                           "starts on this node")
    node.add_argument("--privacy-floor", default="", metavar="'KEY=VALUE ...'",
                      help="the least protection this node accepts of a round, e.g. 'secagg=true min-parties=5 "
                           "min-threshold=3 min-dp-noise=0.8 max-dp-clip=1 codecs=compeft,dense': a round below it "
                           "is refused before training, and the coordinator records the refusal and its reason")
    node.add_argument("--cold", action="store_true",
                      help="no warm trainer: every message loads the model again in a fresh ClientApp process "
                           "(plain flower-supernode behaviour)")
    node.add_argument("--poll-s", type=float, default=0.5,
                      help="longest idle wait between the node's pulls from the SuperLink (Flower's own: 3 s)")
    node.add_argument("--state-dir", default="",
                      help="where the node keeps what must outlive a run: its error-feedback residuals (a "
                           "coordinator that restarts and resumes loses none) and the secure-aggregation setups it "
                           "took part in (it never joins one twice; a node that signs its keys needs it) (default "
                           "$XDG_STATE_HOME/fedsqueeze/node-<partition>)")
    node.add_argument("--heartbeat-s", type=float, default=DEFAULT_HEARTBEAT_S,
                      help="how often the node tells the SuperLink it is alive, 10-1800 s (Flower's own: 30): after "
                           "two missed beats the round goes on without it, and a restarted node may rejoin")
    node.set_defaults(func=_cmd_node)

    submit = sub.add_parser("submit", help="submit a fedsqueeze run to a running SuperLink (flwr run)")
    _tls_args(submit, "--root-certificates", "CA certificate that signed the SuperLink's certificate")
    submit.add_argument("--superlink", default="127.0.0.1:8000", help="SuperLink control API address")
    submit.add_argument("--run-config", default="", help="overrides in TOML form: \"preset='encoder' num-clients=2\"")
    submit.add_argument("--no-stream", action="store_true", help="return once submitted instead of streaming logs")
    submit.add_argument("--log", default="runs/submit/log.txt",
                        help="where every streamed line goes, timestamped (default runs/submit/log.txt); the "
                             "terminal shows the run's own lines and errors")
    submit.add_argument("--verbose", action="store_true", help="show every streamed line on the terminal too")
    submit.set_defaults(func=_cmd_submit)

    app_hash = sub.add_parser("app-hash", help="print the sha256 of the app bundle flwr run ships for DIR "
                                               "(pin it on nodes with node --app-sha256)")
    app_hash.add_argument("dir", nargs="?", default=str(APP_DIR), help="the Flower app directory (default: this app)")
    app_hash.set_defaults(func=_cmd_app_hash)

    register = sub.add_parser("register-node", help="allow a SuperNode's public key on a coordinator with --node-auth")
    register.add_argument("public_keys", nargs="+", metavar="PUBKEY", help="OpenSSH public key file (node-N.pub)")
    register.add_argument("--superlink", default="127.0.0.1:8000", help="SuperLink control API address")
    register.add_argument("--root-certificates", required=True,
                          help="CA certificate that signed the SuperLink's certificate")
    register.set_defaults(func=_cmd_register_node)
