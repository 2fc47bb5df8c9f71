"""The deployment commands as an operator runs them, over real processes (TLS, node authentication, loopback, a
tiny causal LM): a deployed run trains end to end on warm nodes, ``fedsqueeze submit`` exits with each run's
outcome and says why on the terminal, a refused
registration reads as plain text, node start-up logs no noise, and a coordinator stopped with SIGTERM, or killed
with SIGKILL, leaves no process listening."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deployment_helpers import (
    deployment_env,
    free_port,
    start_process,
    stop_processes,
    tiny_sft_config,
    wait_for_port,
)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "simulations.cli"]


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _submit(run_config: str, control_port: int, certs: Path, env: dict[str, str], log: Path
            ) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "submit", "--root-certificates", str(certs / "ca.crt"), "--superlink",
                           f"127.0.0.1:{control_port}", "--run-config", run_config, "--log", str(log)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)


def _last_line(done: subprocess.CompletedProcess) -> str:
    """What submit's terminal ends with (no traceback anywhere on it)."""
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stderr.strip().splitlines()[-1]


def test_submit_reports_how_each_run_ended_and_the_coordinator_stops_with_its_superlink(
        tmp_path: Path, tiny_causal_lm: str) -> None:
    env = deployment_env(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    certs = tmp_path / "certs"
    subprocess.run([*CLI, "certs", str(certs), "--nodes", "2"], env=env, check=True, capture_output=True, cwd=ROOT)
    fleet_port, control_port = free_port(), free_port()
    processes: dict[str, subprocess.Popen] = {}
    superlink = f"127.0.0.1:{control_port}"
    try:
        coordinator = start_process("coordinator", [*CLI, "coordinator", "--certs", str(certs), "--fleet-address",
                                                    f"127.0.0.1:{fleet_port}", "--control-port", str(control_port),
                                                    "--node-auth"], logs=logs, env=env, processes=processes)
        wait_for_port(control_port, 90)
        wait_for_port(fleet_port, 30)
        register = [*CLI, "register-node", "--superlink", superlink, "--root-certificates", str(certs / "ca.crt")]
        keys = certs / "node-keys"
        done = subprocess.run([*register, str(keys / "node-0.pub"), str(keys / "node-1.pub")], env=env,
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        again = subprocess.run([*register, str(keys / "node-0.pub")], env=env, capture_output=True, text=True,
                               timeout=120, cwd=ROOT)
        assert again.returncode == 0 and "node-0.pub: registered already, kept" in again.stdout, again.stderr
        refused = subprocess.run([*register, str(certs / "ca.crt")], env=env, capture_output=True, text=True,
                                 timeout=120, cwd=ROOT)  # not a node's public key: Flower's refusal, as plain text
        errors = [line for line in refused.stderr.splitlines() if line.startswith("fedsqueeze: error:")]
        assert refused.returncode == 1 and len(errors) == 1 and "\x1b" not in refused.stderr, refused.stderr

        # No node yet: the ServerApp gives up waiting, and submit says so.
        run = tmp_path / "runs"
        waiting = _submit(tiny_sft_config(tiny_causal_lm, run / "none", clients=2, rounds=1, wait_s=5.0),
                          control_port, certs, env, logs / "s1.txt")
        assert waiting.returncode == 1, waiting.stderr[-3000:]
        assert "finished:failed: only 0 of 2 client nodes connected within 5 s" in _last_line(waiting)

        for partition in (0, 1):
            start_process(f"node{partition}", [
                *CLI, "node", "--superlink", f"127.0.0.1:{fleet_port}", "--root-certificates", str(certs / "ca.crt"),
                "--partition-id", str(partition), "--num-partitions", "2", "--clientappio-port", str(free_port()),
                "--auth-key", str(keys / f"node-{partition}.key")], logs=logs, env=env, processes=processes)

        # A run the ServerApp refuses before training (its exception's message is the reason): out-dir/plots a file.
        (run / "plots-file").mkdir(parents=True)
        (run / "plots-file" / "plots").write_text("not a folder")
        started = time.monotonic()
        refused = _submit(tiny_sft_config(tiny_causal_lm, run / "plots-file", clients=2, rounds=1), control_port,
                          certs, env, logs / "s3.txt")
        assert refused.returncode == 1 and "holds a file 'plots' where the run writes its plots/ folder" in \
            _last_line(refused)
        assert not (run / "plots-file" / "metrics.jsonl").exists() and time.monotonic() - started < 120

        # A run that finishes: exit 0, the summary is there, and the model learnt; each node's warm trainer built
        # its task on the first message and reused it afterwards.
        finished = _submit(tiny_sft_config(tiny_causal_lm, run / "done", clients=2, rounds=2), control_port, certs,
                           env, logs / "s4.txt")
        assert finished.returncode == 0, finished.stderr[-3000:]
        assert _last_line(finished).startswith("fedsqueeze: run ") and _last_line(finished).endswith(" finished")
        summary = json.loads((run / "done" / "summary.json").read_text())
        rows = [json.loads(line) for line in (run / "done" / "metrics.jsonl").read_text().splitlines()]
        assert summary["rounds"] == 2 and [r["clients_ok"] for r in rows] == [2, 2]
        assert [[c["task_built"] for c in r["clients"]] for r in rows] == [[1.0, 1.0], [0.0, 0.0]]
        assert summary["metric"] == "perplexity" and summary["metric_final"] < summary["metric_base"]
        assert (run / "done" / "adapter" / "adapter_model.safetensors").is_file()
        coordinator_log = (logs / "coordinator.log").read_text()
        assert "TLS disabled" not in coordinator_log and "insecure" not in coordinator_log.lower()
        for partition in (0, 1):
            log = (logs / f"node{partition}.log").read_text()
            assert "dropped a request" not in log and "warm trainer ready" in log

        # SIGTERM to the coordinator: it stops its SuperLink (and everything under it), and says so.
        os.kill(coordinator.pid, signal.SIGTERM)
        assert coordinator.wait(timeout=60) == 128 + signal.SIGTERM
        assert not _listening(control_port) and not _listening(fleet_port)
        assert "its SuperLink is stopped too" in (logs / "coordinator.log").read_text()
        leftover = subprocess.run(["pgrep", "-f", f"flower-superlink --fleet-api-address 127.0.0.1:{fleet_port}"],
                                  capture_output=True, text=True)
        assert leftover.returncode == 1, leftover.stdout

        # SIGKILL to the coordinator alone (nothing of it can clean up): the kernel tells its guard, which stops
        # the SuperLink and everything under it.
        coordinator = start_process("coordinator-2", [*CLI, "coordinator", "--certs", str(certs), "--fleet-address",
                                                      f"127.0.0.1:{fleet_port}", "--control-port", str(control_port)],
                                    logs=logs, env=env, processes=processes)
        wait_for_port(control_port, 90)
        os.kill(coordinator.pid, signal.SIGKILL)
        coordinator.wait(timeout=30)
        deadline = time.monotonic() + 30
        while (_listening(control_port) or _listening(fleet_port)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _listening(control_port) and not _listening(fleet_port)
    finally:
        stop_processes(list(processes.values()))
