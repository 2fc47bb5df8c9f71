"""``fedsqueeze coordinator | node | submit | certs | register-node | app-hash``: real SuperLink/SuperNodes over
gRPC."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from client.app_trust import app_sha256
from client.launch import supernode_command, trainer_command
from client.supernode import DEFAULT_HEARTBEAT_S, HEARTBEAT_ENV, POLL_ENV, heartbeat_seconds, poll_seconds
from server.certs import certificate_expiry, certificate_paths, ensure_dev_certificates
from server.launch import APP_DIR, register_node, superlink_command, write_connection
from server.node_keys import NODE_KEYS_DIR, check_node_keys, generate_node_keys
from simulations.connection_check import Unreachable, WrongServer, probe
from simulations.node_process import DEFAULT_RECONNECT_S, make_trainer_folder, run_supernode, wait_for_trainer
from simulations.processes import Stopped, start_child, stop_child, stop_on_signals
from simulations.submit import submit

ALREADY_REGISTERED = "Public key already in use"  # Flower's words for a key registered before
IN_MEMORY = ":memory:"  # coordinator --database value: keep the SuperLink's state in memory (lost with it)
DATABASE = "superlink.db"


def _tool_env(env: dict[str, str] | None = None) -> dict[str, str]:
    # Flower's processes start each other by name (flwr-serverapp, flwr-clientapp): put this env's bin first.
    env = dict(env or os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _cmd_certs(args: argparse.Namespace) -> int:
    if args.nodes < 0:
        raise ValueError(f"--nodes must be >= 0, got {args.nodes}")
    folder = Path(args.dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a folder for the certificates")
    hosts = tuple(args.host) if args.host else None
    had_set = any(path.exists() for path in certificate_paths(folder).values())
    had_keys = {i for i in range(args.nodes) if (folder / NODE_KEYS_DIR / f"node-{i}.key").exists()}
    check_node_keys(folder / NODE_KEYS_DIR, args.nodes, replace=args.replace)  # before anything is written
    paths, written = ensure_dev_certificates(folder, hosts, replace=args.replace)
    pairs = generate_node_keys(folder / NODE_KEYS_DIR, args.nodes, replace=args.replace)
    print(f"{paths['ca']}, {paths['cert']}, {paths['key']}: {'written' if written else 'kept as they were'}")
    if written and had_set:
        print("replaced: every node's copy of the old ca.crt stops matching; copy the new ca.crt to every node")
    expiry = certificate_expiry(paths["cert"])
    if expiry < datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3):
        print(f"warning: {paths['cert']} expires {expiry:%Y-%m-%d %H:%M} UTC: write a new set with --replace (every "
              "node then needs the new ca.crt)")
    for index, pair in enumerate(pairs):
        if not pair.created:
            print(f"node {index}: {pair.private_key}, {pair.public_key}: kept as they were")
            continue
        print(f"node {index}: {pair.private_key} (private, copy to that node only), {pair.public_key} (register it)"
              + ("; replaced: the old key of this node stops matching its registration" if index in had_keys else ""))
    return 0


def default_coordinator_dir(environ: dict[str, str] | os._Environ = os.environ) -> Path:
    """Where the coordinator keeps its SuperLink's state unless told: $XDG_STATE_HOME (or ~/.local/state)/
    fedsqueeze/coordinator."""
    return Path(environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "fedsqueeze" / "coordinator"


def _cmd_coordinator(args: argparse.Namespace) -> int:
    certs = None if args.insecure else Path(args.certs)
    database = None if args.database == IN_MEMORY else Path(args.database or default_coordinator_dir() / DATABASE)
    command = superlink_command(certs_dir=certs, fleet_address=args.fleet_address, control_host=args.control_host,
                                control_port=args.control_port, database=str(database) if database else None,
                                node_auth=args.node_auth)  # every argument and TLS file checked here
    with contextlib.ExitStack() as held:
        if database is not None:
            held.enter_context(_only_user(database))
        with stop_on_signals():
            superlink = start_child(command, _tool_env())
            stopped: Stopped | None = None
            try:
                status = superlink.wait()
            except Stopped as exc:
                stopped = exc
            finally:
                stop_child(superlink)
    if stopped is not None:
        print(f"fedsqueeze: coordinator stopped ({stopped}); its SuperLink is stopped too", file=sys.stderr)
        return 128 + stopped.signum
    if status != 0:
        print(f"fedsqueeze: error: flower-superlink exited with status {status} (its last lines above say why)",
              file=sys.stderr)
    return status


@contextlib.contextmanager
def _only_user(database: Path) -> Iterator[None]:
    """Hold an exclusive lock beside ``database`` for the coordinator's life (the kernel drops it when the process
    dies); ValueError naming the database when another coordinator holds it."""
    database.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(database.with_name(database.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another coordinator keeps its state in {database}: stop it, or give this one "
                             "another --database") from None
        yield
    finally:
        os.close(fd)


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
    poll_seconds({POLL_ENV: str(args.poll_s)}, label="--poll-s")  # ValueError (one line, exit 2) before anything
    heartbeat_seconds({HEARTBEAT_ENV: str(args.heartbeat_s)}, label="--heartbeat-s")
    if not args.reconnect_s > 0:
        raise ValueError(f"--reconnect-s must be a positive number of seconds, got {args.reconnect_s}")
    supernode_command(**node)  # every argument and key file checked before anything starts
    try:
        probe(args.superlink, root, "--superlink")
    except WrongServer as exc:
        raise ValueError(str(exc)) from None  # waiting cannot fix a wrong CA or a wrong port
    except Unreachable as exc:
        print(f"fedsqueeze: {exc}; waiting for the SuperLink (up to {args.reconnect_s:.0f} s, --reconnect-s)",
              file=sys.stderr, flush=True)
    env = _tool_env()
    env[POLL_ENV] = str(args.poll_s)
    env[HEARTBEAT_ENV] = str(args.heartbeat_s)
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")  # start the per-message ClientApp within 0.2 s
    retry = dict(superlink=args.superlink, reconnect_s=args.reconnect_s)
    with stop_on_signals():
        try:
            if args.cold:  # a pinned cold node runs Flower's loop through client/supernode.py, so --poll-s applies
                return run_supernode(lambda left: supernode_command(**node, max_wait_s=left), env, **retry)
            return _run_warm_node(node, env, retry)
        except Stopped as exc:
            print(f"fedsqueeze: node stopped ({exc})", file=sys.stderr)
            return 128 + exc.signum
        except RuntimeError as exc:
            print(f"fedsqueeze: error: {exc}", file=sys.stderr)
            return 1


def _run_warm_node(node: dict, env: dict[str, str], retry: dict) -> int:
    """The node's warm trainer, then its SuperNode handing each message to it; both stopped on the way out."""
    folder = make_trainer_folder()
    socket_path = folder / "trainer.sock"
    trainer = start_child(trainer_command(socket_path, parent_pid=os.getpid()), env)
    try:
        wait_for_trainer(socket_path, trainer, timeout_s=120)
        return run_supernode(lambda left: supernode_command(**node, trainer_socket=socket_path, capped_poll=True,
                                                            max_wait_s=left), env, **retry)
    finally:
        stop_child(trainer)
        shutil.rmtree(folder, ignore_errors=True)


def _cmd_app_hash(args: argparse.Namespace) -> int:
    print(app_sha256(Path(args.dir)))
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    root = None if args.insecure else Path(args.root_certificates)
    return submit(args.run_config, superlink=args.superlink, root_certificates=root, log_path=Path(args.log),
                  stream=not args.no_stream, verbose=args.verbose, env=_tool_env())


def _cmd_register_node(args: argparse.Namespace) -> int:
    try:
        probe(args.superlink, Path(args.root_certificates), "--superlink")
    except ConnectionError as exc:
        print(f"fedsqueeze: error: SuperLink unreachable: {exc}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="fedsqueeze-flwr-") as home:
        write_connection(Path(home), address=args.superlink, root_certificates=Path(args.root_certificates))
        env = {**os.environ, "FLWR_HOME": home,
               "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        failed = 0
        for public_key in args.public_keys:  # every key is tried: a federation grown by certs --nodes N+1 can be
            try:                              # registered with node-keys/*.pub again
                node_id = register_node(Path(public_key), env=env)
            except RuntimeError as exc:
                if ALREADY_REGISTERED in str(exc):
                    print(f"{public_key}: registered already, kept")
                    continue
                print(f"fedsqueeze: error: {exc}", file=sys.stderr)
                failed += 1
                continue
            print(f"{public_key}: registered as node {node_id}")
    return 1 if failed else 0


def _tls_args(parser: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--insecure", action="store_true", help="no TLS (local trials only)")
    group.add_argument(flag, help=help_text)


def add_deploy_commands(sub: argparse._SubParsersAction) -> None:
    """Register the deployment subcommands on the ``fedsqueeze`` parser."""
    certs = sub.add_parser("certs", help="make a dev CA and SuperLink certificate for TLS trials (never overwrites: "
                                         "an existing set and existing node keys are kept)")
    certs.add_argument("dir", help="output directory for ca.crt, server.pem, server.key")
    certs.add_argument("--host", action="append", default=None, help="host name or IP (repeatable)")
    certs.add_argument("--nodes", type=int, default=0,
                       help=f"also write this many SuperNode key pairs under DIR/{NODE_KEYS_DIR}/ (for --node-auth); "
                            "pairs already there are kept, missing ones added")
    certs.add_argument("--replace", action="store_true",
                       help="write everything anew: every node's ca.crt and every registered node key stop matching")
    certs.set_defaults(func=_cmd_certs, host=None)

    coord = sub.add_parser("coordinator", help="start the SuperLink (Fleet API over gRPC)")
    _tls_args(coord, "--certs", "directory with ca.crt, server.pem, server.key")
    coord.add_argument("--fleet-address", default="0.0.0.0:9092", help="gRPC Fleet API address for SuperNodes")
    coord.add_argument("--control-host", default="127.0.0.1", help="control API host (flwr run connects here)")
    coord.add_argument("--control-port", type=int, default=8000, help="control API port")
    coord.add_argument("--database", default="",
                       help="the SuperLink's state (registered nodes, runs) on disk, so a restarted coordinator keeps "
                            f"its federation (default $XDG_STATE_HOME/fedsqueeze/coordinator/{DATABASE}; "
                            f"'{IN_MEMORY}' keeps it in memory, lost with the process)")
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
    node.add_argument("--reconnect-s", type=float, default=DEFAULT_RECONNECT_S,
                      help="how long the node keeps trying to reach the SuperLink (at start, after losing it, or "
                           "while it still holds this node's previous session) before it gives up with an error "
                           f"(default {DEFAULT_RECONNECT_S:.0f})")
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
