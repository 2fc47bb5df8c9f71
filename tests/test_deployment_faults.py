"""Faults in a real deployment (TLS SuperLink with node authentication, three ``fedsqueeze node`` processes, one run
submitted with flwr run): a node killed mid-round and restarted at once, and a straggler slower than the round
deadline. The
run must lose nothing but the faulty nodes' contributions to those rounds: every round recorded and applied, the
crashed node back with its global state rebuilt, the straggler's late reply refused by round id."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from server.launch import submit_command
from tests.deployment_helpers import (
    deployment_env,
    kill_group,
    restart_process,
    start_process,
    start_tls_federation,
    stop_processes,
    tiny_sft_config,
    wait_for_log,
    wait_for_round,
    warm_trainer_pid,
)

pytestmark = pytest.mark.slow

ROUND_TIMEOUT_S = 20.0  # a healthy round of this tiny model takes a few seconds
CRASHED, STRAGGLER = 2, 1  # partitions


def _client(row: dict, node_id: int) -> dict | None:
    return next((c for c in row["clients"] if c["node_id"] == node_id), None)


def test_a_crashed_node_and_a_straggler_cost_only_their_own_updates(tmp_path: Path, tiny_causal_lm: str) -> None:
    env = deployment_env(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    processes: dict[str, subprocess.Popen] = {}
    commands: dict[str, list[str]] = {}
    out_dir = tmp_path / "run"
    run_config = tiny_sft_config(tiny_causal_lm, out_dir, clients=3, rounds=4,
                                 extra=f"codec='compeft' round-timeout-s={ROUND_TIMEOUT_S}")
    try:
        start_tls_federation(tmp_path, logs=logs, env=env, processes=processes, nodes=3, identities=True,
                             commands=commands)
        start_process("submit", submit_command(run_config), logs=logs, env=env, processes=processes)
        # Round 2: the node of partition 2 dies (SIGKILL to all its processes) holding its train message, and is
        # restarted at once, while the SuperLink still holds its session: it retries until it may rejoin.
        wait_for_round(out_dir, 1, 300, logs)
        wait_for_log(logs / f"supernode{CRASHED}.log", "Receiving: train message", 2, 60)
        kill_group(processes[f"supernode{CRASHED}"])
        restart_process(f"supernode{CRASHED}", commands[f"supernode{CRASHED}"], logs=logs, env=env,
                        processes=processes)
        wait_for_round(out_dir, 2, 120, logs)
        # Round 3: the node of partition 1 stalls (its trainer stopped) past the deadline.
        straggler = warm_trainer_pid(processes[f"supernode{STRAGGLER}"])
        os.kill(straggler, signal.SIGSTOP)
        try:
            wait_for_round(out_dir, 3, 120, logs)
        finally:
            os.kill(straggler, signal.SIGCONT)  # it finishes round 3 late, then trains round 4 in time
        wait_for_round(out_dir, 4, 120, logs)
        wait_for_log(out_dir / "summary.json", "}", 1, 60)
    finally:
        stop_processes(list(processes.values()))
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out_dir / "summary.json").read_text())
    assert [r["round"] for r in rows] == [1, 2, 3, 4] and all(r["applied"] for r in rows), rows
    assert summary["rounds"] == 4 and (out_dir / "adapter" / "adapter_model.safetensors").is_file()
    first = {c["partition_id"]: c["node_id"] for c in rows[0]["clients"]}
    assert rows[0]["clients_ok"] == 3 and sorted(first) == [0, 1, 2]
    # The crash: round 2 closed with the other two, and counted the missing node.
    crashed = _client(rows[1], first[CRASHED])
    assert rows[1]["clients_ok"] == 2 and rows[1]["clients_failed"] >= 1
    assert crashed is not None and crashed["status"] in ("failed", "no reply"), rows[1]
    # The straggler: round 3 closed at the deadline without it.
    assert _client(rows[2], first[STRAGGLER])["status"] == "no reply", rows[2]
    assert rows[2]["round_s"] >= ROUND_TIMEOUT_S and rows[2]["clients_ok"] >= 1
    # Round 4: the restarted node (its registered key keeps its node id) trained from the current global state,
    # and the straggler's round-3 reply, which came during round 4, was refused by its round id.
    restarted = (logs / f"supernode{CRASHED}-restarted.log").read_text()
    assert "still holds this node's previous session, or does not know its key; starting it again" in restarted, \
        restarted[-3000:]
    rejoined = _client(rows[3], first[CRASHED])
    assert rejoined is not None and rejoined["partition_id"] == CRASHED, rows[3]
    assert rejoined["status"] == "ok" and rejoined["in_sync"], rejoined
    assert _client(rows[3], first[STRAGGLER])["status"] == "ok" and rows[3]["clients_ok"] == 3
    assert rows[3]["late_replies_refused"] == 1, rows[3]["problems"]
    assert any(f"node {first[STRAGGLER]}: late reply for round 3 refused" in p for p in rows[3]["problems"])
    assert summary["metric_final"] < summary["metric_base"]  # perplexity: it still learnt
