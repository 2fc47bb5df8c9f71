"""An operator's mistakes with the deployment commands (``certs``, ``coordinator``, ``node``, ``submit``,
``register-node``) as a careless one makes them: each gets one line naming the problem and a non-zero exit, within
a bounded time, before any process starts — never a traceback, a hang, or a silent acceptance; and ``certs`` never
destroys a federation."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.certs import generate_dev_certificates
from server.node_keys import generate_node_keys
from tests.deployment_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]


def _fedsqueeze(argv: list[str], capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
                ) -> tuple[int, str, str]:
    """``fedsqueeze argv`` in this process, with every child process start refused (the command must not get
    that far); exit status, stdout, stderr."""
    import simulations.deploy_cli
    import simulations.submit
    from simulations.cli import main

    def no_process(*_: object, **__: object) -> None:
        raise AssertionError("a process was started: the input was not refused beforehand")

    monkeypatch.setattr(simulations.deploy_cli, "start_child", no_process)
    monkeypatch.setattr(simulations.submit, "stream_filtered", no_process)
    monkeypatch.setattr(simulations.deploy_cli, "register_node", no_process)
    capfd.readouterr()
    code = main(argv)
    out, err = capfd.readouterr()
    return code, out, err


def _one_line(err: str, text: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("fedsqueeze: error:")]
    assert len(errors) == 1 and text in errors[0] and "Traceback" not in err, err
    return errors[0]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A dev CA and server certificate, two node key pairs, and a second, unrelated CA."""
    folder = tmp_path_factory.mktemp("fed")
    certs = generate_dev_certificates(folder / "certs")
    pairs = generate_node_keys(folder / "certs" / "node-keys", 2)
    other = generate_dev_certificates(folder / "other")
    return {"dir": folder / "certs", "ca": certs["ca"], "cert": certs["cert"], "key": certs["key"],
            "node0": pairs[0].private_key, "node0pub": pairs[0].public_key, "node1": pairs[1].private_key,
            "keys": folder / "certs" / "node-keys", "other_dir": folder / "other", "other_ca": other["ca"]}


class _TlsListener:
    """A real TLS server on loopback presenting ``cert`` (one another CA signed): the handshake is all it does."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            try:
                self.context.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()


@pytest.fixture
def wrong_server(federation: dict[str, Path]) -> Iterator[int]:
    """The port of a TLS server whose certificate the federation's CA did not sign."""
    listener = _TlsListener(federation["other_dir"] / "server.pem", federation["other_dir"] / "server.key")
    yield listener.port
    listener.server.close()


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_certs_never_destroys_a_federation(tmp_path: Path, capfd, monkeypatch) -> None:
    folder = tmp_path / "certs"
    assert _fedsqueeze(["certs", str(folder), "--nodes", "2"], capfd, monkeypatch)[0] == 0
    first = _digests(folder)
    code, out, _ = _fedsqueeze(["certs", str(folder), "--nodes", "2"], capfd, monkeypatch)
    assert code == 0 and "kept as they were" in out and _digests(folder) == first  # byte for byte
    code, out, _ = _fedsqueeze(["certs", str(folder), "--nodes", "3"], capfd, monkeypatch)
    after = _digests(folder)
    assert code == 0 and set(after) - set(first) == {"node-keys/node-2.key", "node-keys/node-2.pub"}
    assert {k: v for k, v in after.items() if k in first} == first
    code, _, err = _fedsqueeze(["certs", str(folder), "--host", "coord.example.org"], capfd, monkeypatch)
    assert code == 2 and "--replace" in _one_line(err, "not coord.example.org") and _digests(folder) == after
    (folder / "server.key").unlink()
    code, _, err = _fedsqueeze(["certs", str(folder)], capfd, monkeypatch)
    assert code == 2 and "an incomplete set is never completed" in _one_line(err, "but not server.key")
    (folder / "node-keys" / "node-1.pub").unlink()
    code, _, err = _fedsqueeze(["certs", str(tmp_path / "fresh"), "--nodes", "1"], capfd, monkeypatch)
    assert code == 0
    shutil.copy(folder / "node-keys" / "node-1.key", tmp_path / "fresh" / "node-keys" / "node-1.key")
    code, _, err = _fedsqueeze(["certs", str(tmp_path / "fresh"), "--nodes", "2"], capfd, monkeypatch)
    assert code == 2 and not (tmp_path / "fresh" / "node-keys" / "node-1.pub").exists()
    _one_line(err, "node-1.key exists without its other half")
    (tmp_path / "a-file").write_text("x")
    code, _, err = _fedsqueeze(["certs", str(tmp_path / "a-file")], capfd, monkeypatch)
    assert code == 2 and "Traceback" not in err
    _one_line(err, "a-file is a file, not a folder")
    code, out, _ = _fedsqueeze(["certs", str(tmp_path / "fresh"), "--nodes", "2", "--replace"], capfd, monkeypatch)
    assert code == 0 and "every node's copy of the old ca.crt stops matching" in out
    assert "the old key of this node stops matching its registration" in out


def _coordinator_certs(tmp_path: Path, federation: dict[str, Path], change: str) -> Path:
    folder = tmp_path / "certs"
    shutil.copytree(federation["dir"], folder)
    if change == "openssh-key":
        shutil.copy(federation["node0"], folder / "server.key")
    elif change == "other-ca":
        shutil.copy(federation["other_ca"], folder / "ca.crt")
    elif change == "open-key":
        (folder / "server.key").chmod(0o644)
    return folder


@pytest.mark.parametrize(("change", "args", "text"), [
    ("openssh-key", [], "server.key is not an unencrypted PEM private key (an OpenSSH key will not do"),
    ("other-ca", [], "server.pem is not signed by"),
    ("open-key", [], "server.key is readable by others (mode 0644): chmod 600"),
    ("", ["--fleet-address", "garbage"], "--fleet-address 'garbage' is not HOST:PORT"),
    ("", ["--control-port", "0"], "--control-port must be in 1..65535"),
])
def test_a_coordinator_with_bad_tls_files_or_addresses_is_refused_before_it_starts(
        tmp_path: Path, federation, capfd, monkeypatch, change: str, args: list[str], text: str) -> None:
    folder = _coordinator_certs(tmp_path, federation, change)
    code, _, err = _fedsqueeze(["coordinator", "--certs", str(folder), *args], capfd, monkeypatch)
    assert code == 2
    _one_line(err, text)


def _node(federation: dict[str, Path], *extra: str, root: str | None = None, port: int = 1) -> list[str]:
    return ["node", "--root-certificates", root or str(federation["ca"]), "--superlink", f"127.0.0.1:{port}",
            "--partition-id", "0", "--num-partitions", "2", *extra]


@pytest.mark.parametrize(("case", "text"), [
    ("pub-as-root", "--root-certificates"),
    ("open-auth-key", "is readable by others (mode 0644): a private key must be its owner's alone; chmod 600"),
    ("private-key-as-trusted", "is not an OpenSSH public key"),
    ("own-key-not-trusted", "does not hold this node's own public key"),
    ("unknown-codec", "privacy floor codecs: unknown codec 'zip' (known: dense, compeft, ferret)"),
    ("negative-partitions", "--num-partitions must be at least 1, got -2"),
    ("negative-poll", "--poll-s must be in (0, 60] seconds, got -1.0"),
    ("zero-reconnect", "--reconnect-s must be a positive number of seconds"),
])
def test_a_node_with_a_bad_argument_or_key_file_is_refused_before_it_starts(
        tmp_path: Path, federation, capfd, monkeypatch, case: str, text: str) -> None:
    key = tmp_path / "node.key"
    shutil.copy(federation["node0"], key)
    key.chmod(0o600)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(federation["node0pub"], trusted / "node-0.pub")
    signed = ["--auth-key", str(key), "--trusted-nodes", str(trusted)]
    argv = {
        "pub-as-root": _node(federation, root=str(federation["node0pub"])),
        "open-auth-key": _node(federation, *signed),
        "private-key-as-trusted": _node(federation, "--auth-key", str(key), "--trusted-nodes",
                                        str(federation["node1"])),
        "own-key-not-trusted": _node(federation, "--auth-key", str(federation["node1"]), "--trusted-nodes",
                                     str(trusted)),
        "unknown-codec": _node(federation, "--privacy-floor", "codecs=zip"),
        "negative-partitions": [*_node(federation)[:-4], "--partition-id", "0", "--num-partitions", "-2"],
        "negative-poll": _node(federation, "--poll-s", "-1"),
        "zero-reconnect": _node(federation, "--reconnect-s", "0"),
    }[case]
    if case == "open-auth-key":
        key.chmod(0o644)
    code, _, err = _fedsqueeze(argv, capfd, monkeypatch)
    assert code == 2
    _one_line(err, text)


def test_a_node_facing_a_server_its_ca_does_not_vouch_for_stops_at_once(federation, wrong_server, capfd,
                                                                        monkeypatch) -> None:
    code, _, err = _fedsqueeze(_node(federation, port=wrong_server), capfd, monkeypatch)
    assert code == 2
    _one_line(err, f"the server at 127.0.0.1:{wrong_server} (--superlink) presents a certificate that")


def test_a_node_with_no_superlink_gives_up_after_its_reconnection_budget(federation, tmp_path: Path) -> None:
    """A real SuperNode (cold: no trainer) dialling a closed port: it retries for --reconnect-s, then one line and
    a non-zero exit; nothing of it is left running."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "simulations.cli", *_node(federation, "--cold", "--reconnect-s",
                                                                          "4", port=free_port()),
                           "--clientappio-port", str(free_port()), "--state-dir", str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 1, done.stderr[-3000:]
    assert time.monotonic() - started < 120
    _one_line(done.stderr, "no working connection to the SuperLink at 127.0.0.1:")
    assert "waiting for the SuperLink (up to 4 s" in done.stderr


def test_submit_says_why_before_flower_is_asked(federation, wrong_server, capfd, monkeypatch) -> None:
    base = ["submit", "--root-certificates", str(federation["ca"])]
    code, _, err = _fedsqueeze([*base, "--run-config", "num-server-round=2"], capfd, monkeypatch)
    assert code == 2
    _one_line(err, "unknown run-config key 'num-server-round'")
    code, _, err = _fedsqueeze([*base, "--run-config", "num-server-rounds='two'"], capfd, monkeypatch)
    assert code == 2
    _one_line(err, "run-config key 'num-server-rounds' expects int, got 'two'")
    closed = free_port()
    code, _, err = _fedsqueeze([*base, "--superlink", f"127.0.0.1:{closed}"], capfd, monkeypatch)
    assert code == 1
    _one_line(err, f"SuperLink unreachable: nothing listens at 127.0.0.1:{closed} (--superlink): connection refused")
    code, _, err = _fedsqueeze([*base, "--superlink", f"127.0.0.1:{wrong_server}"], capfd, monkeypatch)
    assert code == 1
    _one_line(err, "presents a certificate that")


def test_register_node_tells_a_closed_port_from_a_wrong_ca(federation, wrong_server, capfd, monkeypatch) -> None:
    base = ["register-node", str(federation["node0pub"]), "--root-certificates", str(federation["ca"])]
    closed = free_port()
    code, _, err = _fedsqueeze([*base, "--superlink", f"127.0.0.1:{closed}"], capfd, monkeypatch)
    assert code == 1 and "connection refused" in _one_line(err, "nothing listens")
    code, _, err = _fedsqueeze([*base, "--superlink", f"127.0.0.1:{wrong_server}"], capfd, monkeypatch)
    assert code == 1 and "does not vouch for" in _one_line(err, "presents a certificate that")


def test_a_killed_nodes_trainer_folder_is_removed_by_the_next_node(tmp_path: Path) -> None:
    from simulations.node_process import PID_FILE, TRAINER_PREFIX, remove_stale_trainer_folders

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale, live, starting = (tmp_path / f"{TRAINER_PREFIX}{name}" for name in ("stale", "live", "starting"))
    for folder in (stale, live, starting):
        folder.mkdir(mode=0o700)
    (stale / PID_FILE).write_text(str(gone.pid))  # a node SIGKILLed: its process is gone
    (stale / "trainer.sock").write_text("")
    (live / PID_FILE).write_text(str(os.getpid()))
    assert remove_stale_trainer_folders(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and starting.exists()


def _chain(folder: Path) -> dict[str, Path]:
    """A root CA, an intermediate it signed, and a server certificate the intermediate signed (production's shape):
    ca.crt holds the root, server.pem the server's certificate then the intermediate."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, issuer: x509.Certificate | None, key, signer, ca: bool) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        return (x509.CertificateBuilder().subject_name(name)
                .issuer_name(issuer.subject if issuer is not None else name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                .sign(signer, hashes.SHA256()))

    root_key, mid_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = cert("root", None, root_key, root_key, True)
    mid = cert("intermediate", root, mid_key, root_key, True)
    leaf = cert("localhost", mid, leaf_key, mid_key, False)
    pem = serialization.Encoding.PEM
    folder.mkdir()
    (folder / "ca.crt").write_bytes(root.public_bytes(pem))
    (folder / "server.pem").write_bytes(leaf.public_bytes(pem) + mid.public_bytes(pem))
    (folder / "server.key").write_bytes(leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
    (folder / "server.key").chmod(0o600)
    return {"dir": folder, "leaf_only": leaf.public_bytes(pem)}


def test_a_server_certificate_signed_through_an_intermediate_is_accepted(tmp_path: Path) -> None:
    from server.launch import check_tls_files

    chain = _chain(tmp_path / "chain")
    check_tls_files(chain["dir"])  # leaf + intermediate in server.pem, the root in ca.crt: a production set
    (chain["dir"] / "server.pem").write_bytes(chain["leaf_only"])  # the intermediate left out: no path to the root
    with pytest.raises(ValueError, match=r"is not signed by .*ca\.crt"):
        check_tls_files(chain["dir"])


def test_a_peer_that_hangs_up_mid_handshake_is_waited_for_not_refused(federation) -> None:
    """A proxy in front of a SuperLink that is not up yet accepts and closes: that is 'not there yet'."""
    from simulations.connection_check import Unreachable, probe

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def hang_up() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    with pytest.raises(Unreachable, match="hung up during the TLS handshake"):
        probe(f"127.0.0.1:{port}", federation["ca"], "--superlink")
    server.close()


def test_certs_checks_everything_before_writing_and_replace_keeps_the_hosts(tmp_path: Path, capfd,
                                                                              monkeypatch) -> None:
    from server.certs import certificate_hosts

    half = tmp_path / "half"
    (half / "node-keys").mkdir(parents=True)
    (half / "node-keys" / "node-0.key").write_text("a lone private key")
    code, _, err = _fedsqueeze(["certs", str(half), "--nodes", "1"], capfd, monkeypatch)
    assert code == 2 and not (half / "ca.crt").exists()  # refused before the CA set was written
    _one_line(err, "node-0.key exists without its other half")
    remote = tmp_path / "remote"
    assert _fedsqueeze(["certs", str(remote), "--host", "coord.example.org"], capfd, monkeypatch)[0] == 0
    assert _fedsqueeze(["certs", str(remote), "--replace"], capfd, monkeypatch)[0] == 0
    assert certificate_hosts(remote / "server.pem") == ["coord.example.org"]


def test_a_second_coordinator_on_the_same_state_is_refused(tmp_path: Path, federation, capfd, monkeypatch) -> None:
    import fcntl

    database = tmp_path / "state" / "superlink.db"
    database.parent.mkdir()
    with (database.parent / "superlink.db.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the first coordinator
        code, _, err = _fedsqueeze(["coordinator", "--certs", str(federation["dir"]), "--database", str(database)],
                                   capfd, monkeypatch)
    assert code == 2
    _one_line(err, f"another coordinator keeps its state in {database}")
