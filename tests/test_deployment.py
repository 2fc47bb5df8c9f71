"""Real deployment over gRPC with TLS: a flower-superlink, four client nodes (``fedsqueeze node``: a
flower-supernode and its warm trainer), a run submitted with flwr run: instruction tuning (kind=sft, a tiny causal
LM made from a config with SmolLM2's tokenizer) under secure aggregation against a lying coordinator (registered
node keys, pinned by every node: signed keys, the session, signed mask peers and the confirmation stage over gRPC),
with one node gone mid-protocol. The plain deployed run (``fedsqueeze coordinator``/``node``/``submit``) is in
tests/test_operators.py."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from client.setup_ledger import MAGIC, RECORD
from server.launch import submit_command
from simulations.testing.audit import audited_sums_are_exact
from strategies.secagg.audit import AUDIT_ENV
from tests.deployment_helpers import (
    deployment_env,
    start_process,
    start_tls_federation,
    stop_processes,
    tiny_sft_config,
    wait_for_log,
    warm_trainer_pid,
)

pytestmark = pytest.mark.slow
ONE_SETUP = len(MAGIC) + RECORD.size + 32  # a ledger holding one setup (client/setup_ledger.py)


def test_signed_secure_aggregation_over_grpc_is_exact_with_n_minus_t_dropouts(tmp_path: Path,
                                                                             tiny_causal_lm: str) -> None:
    """Four signing nodes (k = 3, t = 3: the default least threshold of a signing node) and one that stops
    answering once the secure round has begun: the three survivors confirm and unmask over gRPC, and the
    coordinator's sum equals the plain sum of their quantised updates, word for word (the test-only audit trail)."""
    env = deployment_env(tmp_path)
    env[AUDIT_ENV] = str(tmp_path / "audit")
    logs = tmp_path / "logs"
    logs.mkdir()
    processes: dict[str, subprocess.Popen] = {}
    out_dir = tmp_path / "run"
    run_config = tiny_sft_config(tiny_causal_lm, out_dir, clients=4, rounds=1, extra="round-timeout-s=20.0 secagg=true")
    stopped = None
    try:
        start_tls_federation(tmp_path, logs=logs, env=env, processes=processes, nodes=4, identities=True)
        start_process("submit", submit_command(run_config), logs=logs, env=env, processes=processes)
        # Partition 3's node has advertised its keys; it stops (its trainer frozen) before it masks its update.
        wait_for_log(logs / "supernode3.log", "Receiving: train.secagg_share message", 1, 600)
        stopped = warm_trainer_pid(processes["supernode3"])
        os.kill(stopped, signal.SIGSTOP)
        wait_for_log(out_dir / "summary.json", "}", 1, 300)
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        stop_processes(list(processes.values()))
    row = json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert row["applied"] and row["secagg"]["signed"] and row["secagg"]["aborted"] is None, row["problems"]
    assert len(row["secagg"]["survivors"]) == 3  # n - t = 1 dropout
    assert sorted(audited_sums_are_exact(tmp_path / "audit", 1)) == row["secagg"]["survivors"]
    assert all(c["bytes_up"] < 0.7 * c["dense_fp32_bytes_up"] for c in row["clients"] if c["status"] == "ok")
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["metric"] == "perplexity" and summary["metric_final"] < summary["metric_base"]
    # Every node recorded the setup in its state directory before it advertised keys.
    ledgers = sorted((tmp_path / "node-state" / "fedsqueeze").glob("node-*/secagg-setups.bin"))
    assert len(ledgers) == 4 and all(ledger.stat().st_size == ONE_SETUP for ledger in ledgers)
