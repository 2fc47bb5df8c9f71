"""Transport security of a real deployment: TLS plus Flower's SuperNode authentication with registered keys.

A SuperLink with TLS and ``--enable-supernode-auth``; node A (registered key, right CA) trains, node B (a key never
registered) is refused, node C (a registered key but another CA's root certificate) fails the TLS handshake.
"""

import json
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.supernode.register import try_load_public_key

from client.launch import supernode_command
from server.certs import generate_dev_certificates
from server.launch import CONNECTION_NAME, register_node, superlink_command, write_connection
from server.node_keys import generate_node_keys
from tests.deployment_helpers import (
    deployment_env,
    free_port,
    start_process,
    stop_processes,
    submit_and_wait,
    tiny_sft_config,
    wait_for_port,
)

# What flwr 1.39 logs, seen in real runs of this test: the SuperNode exits (code 305) with these lines.
REFUSED_UNREGISTERED = "[code: 2004] Failed to activate SuperNode."
SUPERLINK_REFUSAL = "No SuperNode found with the given public key."
TLS_FAILURES = ("SSL/TLS handshake error detected.", "Tls handshake failed")
GAVE_UP = "Exit Code: 305"


def test_node_keys_load_with_flowers_own_loaders(tmp_path: Path) -> None:
    pairs = generate_node_keys(tmp_path / "keys", 2)
    assert [p.private_key.name for p in pairs] == ["node-0.key", "node-1.key"]
    for pair in pairs:
        private_key = load_ssh_private_key(pair.private_key.read_bytes(), None)  # as flower-supernode does
        assert isinstance(private_key, ec.EllipticCurvePrivateKey) and private_key.curve.name == "secp384r1"
        assert pair.private_key.stat().st_mode & 0o777 == 0o600
        assert try_load_public_key(pair.public_key).startswith(b"-----BEGIN PUBLIC KEY-----")  # flwr register
    assert pairs[0].public_key.read_bytes() != pairs[1].public_key.read_bytes()


def test_node_auth_needs_tls(tmp_path: Path) -> None:
    key = generate_node_keys(tmp_path, 1)[0].private_key
    with pytest.raises(ValueError, match="needs TLS"):
        superlink_command(certs_dir=None, node_auth=True)
    with pytest.raises(ValueError, match="needs TLS"):
        supernode_command(superlink="127.0.0.1:9092", partition_id=0, num_partitions=1, root_certificates=None,
                          auth_private_key=key)
    certs = generate_dev_certificates(tmp_path / "certs")
    assert "--enable-supernode-auth" in superlink_command(certs_dir=certs["ca"].parent, node_auth=True)
    assert "--enable-supernode-auth" not in superlink_command(certs_dir=certs["ca"].parent)
    command = supernode_command(superlink="127.0.0.1:9092", partition_id=0, num_partitions=1,
                                root_certificates=certs["ca"], auth_private_key=key)
    assert command[command.index("--auth-supernode-private-key") + 1] == str(key)


def _wait_for_text(path: Path, text: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace")
        if text in content:
            return content
        time.sleep(0.5)
    raise AssertionError(f"{path.name} does not show {text!r} after {timeout_s} s:\n{content[-3000:]}")


@pytest.mark.slow
def test_only_the_registered_node_with_the_right_ca_joins_and_trains(tmp_path: Path, tiny_causal_lm: str) -> None:
    certs = generate_dev_certificates(tmp_path / "certs")
    other_ca = generate_dev_certificates(tmp_path / "other-ca")["ca"]
    key_a, key_b, key_c = generate_node_keys(tmp_path / "certs" / "node-keys", 3)
    fleet_port, control_port = free_port(), free_port()
    env = deployment_env(tmp_path)
    flwr_home = Path(env["FLWR_HOME"])
    logs = tmp_path / "logs"
    logs.mkdir()
    processes: dict[str, subprocess.Popen] = {}

    def start(name: str, command: list[str]) -> None:
        start_process(name, command, logs=logs, env=env, processes=processes)

    def supernode(name: str, key: Path, root_certificates: Path) -> None:
        start(name, supernode_command(superlink=f"localhost:{fleet_port}", partition_id=0, num_partitions=1,
                                      root_certificates=root_certificates, clientappio_port=free_port(),
                                      auth_private_key=key))

    try:
        start("superlink", superlink_command(certs_dir=certs["ca"].parent, fleet_address=f"127.0.0.1:{fleet_port}",
                                             control_port=control_port, node_auth=True))
        wait_for_port(fleet_port, 60)
        wait_for_port(control_port, 60)
        write_connection(flwr_home, address=f"localhost:{control_port}", root_certificates=certs["ca"])
        node_a = register_node(key_a.public_key, env=env)
        node_c = register_node(key_c.public_key, env=env)  # registered, so only TLS can keep C out
        supernode("supernode-a", key_a.private_key, certs["ca"])
        supernode("supernode-b", key_b.private_key, certs["ca"])
        supernode("supernode-c", key_c.private_key, other_ca)

        out_dir = tmp_path / "run"  # who joins is the question, not what it learns: the tiny causal LM trains
        run_config = tiny_sft_config(tiny_causal_lm, out_dir, clients=1, rounds=1, extra="secagg=false")
        submit_and_wait(run_config, out_dir=out_dir, logs=logs, env=env)
        summary_path = out_dir / "summary.json"

        # TLS run with the registered node: exactly one client, and it is node A.
        rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
        assert json.loads(summary_path.read_text())["rounds"] == 1
        assert [r["clients_ok"] for r in rows] == [1]
        assert [c["node_id"] for c in rows[0]["clients"]] == [node_a]

        # B: refused by the SuperLink (which names B's key), gave up, never given a node id.
        log_b = _wait_for_text(logs / "supernode-b.log", REFUSED_UNREGISTERED, 60)
        assert GAVE_UP in log_b
        superlink_log = (logs / "superlink.log").read_text()
        refusal = superlink_log[superlink_log.index(SUPERLINK_REFUSAL) - 400:superlink_log.index(SUPERLINK_REFUSAL)]
        assert repr(try_load_public_key(key_b.public_key))[2:-1] in refusal
        listed = subprocess.run(["flwr", "supernode", "list", CONNECTION_NAME, "--format", "json"], env=env,
                                capture_output=True, text=True, timeout=60)
        nodes = {int(n["node-id"]): n["status"] for n in json.loads(listed.stdout[listed.stdout.find("{"):])["nodes"]}
        assert set(nodes) == {node_a, node_c} and nodes[node_a] == "online", nodes
        # C: its registered key never reached the SuperLink (never activated); the TLS handshake failed first.
        assert nodes[node_c] == "registered", nodes
        log_c = _wait_for_text(logs / "supernode-c.log", TLS_FAILURES[0], 60)
        assert TLS_FAILURES[1] in log_c and GAVE_UP in log_c
        assert "TLS disabled" not in superlink_log and "insecure" not in superlink_log.lower()
        assert processes["supernode-b"].wait(timeout=30) != 0 and processes["supernode-c"].wait(timeout=30) != 0
    finally:
        stop_processes(list(processes.values()))
    assert all(proc.poll() is not None for proc in processes.values())


def test_the_control_api_stays_on_loopback_and_keys_are_private_from_creation(tmp_path: Path) -> None:
    from server.launch import LOOPBACK

    for host in ("0.0.0.0", "10.1.2.3", "coord.example.org"):
        with pytest.raises(ValueError, match="must stay on loopback"):
            superlink_command(certs_dir=None, control_host=host)
    for host in LOOPBACK:
        assert superlink_command(certs_dir=None, control_host=host)[4] == host
    target = tmp_path / "elsewhere.txt"
    target.write_text("not to be overwritten")
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "server.key").symlink_to(target)  # a planted link is replaced, never followed
    certs = generate_dev_certificates(tmp_path / "certs")
    assert certs["key"].stat().st_mode & 0o777 == 0o600 and not certs["key"].is_symlink()
    assert target.read_text() == "not to be overwritten"
