"""Nodes that run only the app their operator pinned (``fedsqueeze node --app-sha256``): argument checks, the hash
``fedsqueeze app-hash`` prints against the FAB ``flwr run`` ships, and a real TLS SuperLink with a pinned node that
refuses an altered copy of this app (no code of it starts on the node) and trains with the untouched copy."""

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from client.app_trust import REFUSAL_HEAD, AppRejected, app_sha256, check_app, parse_pins
from client.launch import supernode_command
from server.launch import APP_DIR
from tests.deployment_helpers import (
    deployment_env,
    free_port,
    node_command,
    start_process,
    start_tls_federation,
    stop_processes,
    submit_and_wait,
)

HASH = "ab" * 32


def _copy_app(destination: Path) -> str:
    """Write the files ``flwr run`` bundles from this app under ``destination`` (one consistent snapshot, taken
    from the bundle itself); returns that bundle's sha256."""
    from flwr.cli.build import build_fab_from_disk

    fab = build_fab_from_disk(APP_DIR)
    with zipfile.ZipFile(io.BytesIO(fab)) as bundle:
        for name in bundle.namelist():
            if not name.startswith(".info/"):  # Flower's manifest, written again on every build
                (destination / name).parent.mkdir(parents=True, exist_ok=True)
                (destination / name).write_bytes(bundle.read(name))
    return hashlib.sha256(fab).hexdigest()


def test_pins_accept_hashes_and_files(tmp_path: Path) -> None:
    pins_file = tmp_path / "pins.txt"
    pins_file.write_text(f"# reviewed 2024-05-01\n{'cd' * 32}  # release 1\n\n{'EF' * 32}\n")
    assert parse_pins([HASH.upper(), str(pins_file)]) == {HASH, "cd" * 32, "ef" * 32}
    assert parse_pins([]) == frozenset()


@pytest.mark.parametrize(("value", "error", "message"), [
    ("abc", ValueError, "--app-sha256 takes a sha256 (64 hex digits) or a file of them, got 'abc'"),
    ("g" * 64, ValueError, "got 'gggg"),
    ("missing/pins.txt", FileNotFoundError, "--app-sha256 file missing/pins.txt is missing"),
])
def test_malformed_or_missing_pin_is_one_clear_error(value: str, error: type, message: str) -> None:
    with pytest.raises(error) as caught:
        parse_pins([value])
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_pin_file_with_a_bad_line_or_no_hash_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{HASH}\nnot-a-hash\n")
    with pytest.raises(ValueError, match=r"bad.txt:2 is not a sha256"):
        parse_pins([str(bad)])
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing reviewed yet\n")
    with pytest.raises(ValueError, match="names no app hash"):
        parse_pins([str(empty)])


def test_check_app_names_actual_and_pinned_hash() -> None:
    content = b"bundle"
    actual = hashlib.sha256(content).hexdigest()
    assert check_app(content, frozenset({actual})) == actual
    with pytest.raises(AppRejected) as caught:
        check_app(content + b"!", frozenset({actual}))
    assert str(caught.value).startswith(REFUSAL_HEAD) and actual in str(caught.value)
    assert hashlib.sha256(content + b"!").hexdigest() in str(caught.value)


def test_supernode_command_pins_through_fedsqueeze_loop() -> None:
    command = supernode_command(superlink="127.0.0.1:9092", partition_id=0, num_partitions=1,
                                root_certificates=None, app_sha256=(HASH.upper(),))
    assert command[:5] == [sys.executable, "-m", "client.supernode", "--app-sha256", HASH]
    plain = supernode_command(superlink="127.0.0.1:9092", partition_id=0, num_partitions=1, root_certificates=None)
    assert plain[0] == "flower-supernode" and "--app-sha256" not in plain
    with pytest.raises(ValueError, match="64 hex digits"):
        supernode_command(superlink="127.0.0.1:9092", partition_id=0, num_partitions=1, root_certificates=None,
                          app_sha256=("123",))


@pytest.mark.parametrize("argv", [
    [sys.executable, "-m", "simulations.cli", "node", "--insecure", "--partition-id", "0", "--num-partitions", "1",
     "--cold", "--app-sha256", "0123"],
    [sys.executable, "-m", "client.supernode", "--app-sha256", "0123", "--insecure"],
], ids=["fedsqueeze-node", "client.supernode"])
def test_cli_refuses_malformed_pin_before_starting(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=APP_DIR)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fedsqueeze: error: --app-sha256 takes a sha256 (64 hex digits) or a file of them, got '0123'"]


def test_app_hash_is_the_bundle_flwr_builds(tmp_path: Path) -> None:
    app = tmp_path / "app"
    fab_hash = _copy_app(app)
    assert app_sha256(app) == fab_hash  # the copy bundles to the very same bytes
    (app / "client" / "app.py").write_text((app / "client" / "app.py").read_text() + "# altered\n")
    assert app_sha256(app) != fab_hash
    built = subprocess.run(["flwr", "build", "--app", str(app)], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60, env=deployment_env(tmp_path))
    assert built.returncode == 0, built.stdout + built.stderr
    (fab_file,) = tmp_path.glob("*.fab")
    assert hashlib.sha256(fab_file.read_bytes()).hexdigest() == app_sha256(app)


@pytest.mark.slow
def test_pinned_node_refuses_altered_app_and_runs_the_pinned_one(tmp_path: Path, tiny_causal_lm: str) -> None:
    pristine, altered = tmp_path / "pristine", tmp_path / "altered"
    pinned = _copy_app(pristine)
    _copy_app(altered)
    source = altered / "client" / "app.py"
    source.write_text(source.read_text() + "print('code the node operator never reviewed')\n")
    tampered = app_sha256(altered)
    env = deployment_env(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    processes: dict[str, subprocess.Popen] = {}
    try:
        certs = start_tls_federation(tmp_path, logs=logs, env=env, processes=processes, nodes=0)
        superlink = processes["superlink"].args
        fleet_port = superlink[superlink.index("--fleet-api-address") + 1].rsplit(":", 1)[1]
        node = node_command(superlink=f"localhost:{fleet_port}", partition_id=0, num_partitions=1,
                            root_certificates=certs["ca"], clientappio_port=free_port(), warm=False)
        start_process("node", [*node, "--app-sha256", pinned], logs=logs, env=env, processes=processes)
        task = (f"preset='sft' model='{tiny_causal_lm}' per-topic=20 heldout=16 max-length=64 local-steps=2 "
                "batch-size=4 lr=0.01 eval-samples=2 max-new-tokens=4 num-clients=1 num-server-rounds=1 "
                "partitioner='iid' wait-for-clients-s=60.0")

        refused_dir = tmp_path / "refused-run"
        submit_and_wait(f"{task} out-dir='{refused_dir}'", out_dir=refused_dir, logs=logs, env=env, app_dir=altered)
        (row,) = [json.loads(line) for line in (refused_dir / "metrics.jsonl").read_text().splitlines()]
        assert row["clients_ok"] == 0 and row["clients_failed"] == 1 and not row["applied"]
        assert any(REFUSAL_HEAD in problem and tampered in problem for problem in row["problems"]), row["problems"]
        node_log = (logs / "node.log").read_text()
        refusals = [line for line in node_log.splitlines() if REFUSAL_HEAD in line]
        assert len(refusals) == 1 and tampered in refusals[0] and pinned in refusals[0], node_log[-3000:]
        assert "Received successfully" not in node_log  # the run's message never reached a ClientApp

        accepted_dir = tmp_path / "accepted-run"
        submit_and_wait(f"{task} out-dir='{accepted_dir}'", out_dir=accepted_dir, logs=logs, env=env,
                        app_dir=pristine)
        (row,) = [json.loads(line) for line in (accepted_dir / "metrics.jsonl").read_text().splitlines()]
        assert row["clients_ok"] == 1 and row["applied"], row
        assert len([line for line in (logs / "node.log").read_text().splitlines() if REFUSAL_HEAD in line]) == 1
    finally:
        stop_processes(list(processes.values()))
