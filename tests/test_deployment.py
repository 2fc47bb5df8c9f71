"""Real deployment over gRPC with TLS: a flower-superlink, two client nodes (``fedsqueeze node``: a flower-supernode
and its warm trainer), a run submitted with flwr run: the encoder classification preset in plain FedAvg, and
instruction tuning (kind=sft, a tiny causal LM made from a config with SmolLM2's tokenizer) under secure
aggregation against a lying coordinator (registered node keys, pinned by every node: signed keys, signed mask peers
and the confirmation stage over gRPC)."""

import json
import subprocess
from pathlib import Path

import pytest

from tests.deployment_helpers import deployment_env, start_tls_federation, stop_processes, submit_and_wait

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secagg"])
def test_two_supernodes_train_over_grpc_with_tls(tmp_path: Path, secure: bool, tiny_causal_lm: str) -> None:
    env = deployment_env(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    processes: dict[str, subprocess.Popen] = {}
    try:
        start_tls_federation(tmp_path, logs=logs, env=env, processes=processes, identities=secure)
        out_dir = tmp_path / "run"
        rounds = 1 if secure else 2  # each secure-aggregation stage is one more Flower message exchange (~12 s)
        task = (f"preset='sft' model='{tiny_causal_lm}' per-topic=20 heldout=16 max-length=64 local-steps=4 "
                "batch-size=4 lr=0.01 eval-samples=2 max-new-tokens=4" if secure else "preset='encoder'")
        run_config = (f"{task} num-clients=2 num-server-rounds={rounds} partitioner='iid' "
                      f"wait-for-clients-s=120.0 out-dir='{out_dir}' secagg={'true' if secure else 'false'}")
        submit_and_wait(run_config, out_dir=out_dir, logs=logs, env=env)
        summary = json.loads((out_dir / "summary.json").read_text())
        rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
        assert summary["rounds"] == rounds and [r["clients_ok"] for r in rows] == [2] * rounds
        # The warm trainer built each node's task on its first message and reused it afterwards.
        assert [[c["task_built"] for c in r["clients"]] for r in rows] == [[1.0, 1.0]] + [[0.0, 0.0]] * (rounds - 1)
        if secure:
            assert len(rows[0]["secagg"]["survivors"]) == 2 and rows[0]["secagg"]["aborted"] is None
            assert rows[0]["secagg"]["signed"]  # signed keys, signed mask peers and confirmations, over gRPC
            assert all(c["bytes_up"] < 0.7 * c["dense_fp32_bytes_up"] for c in rows[0]["clients"])
        improved = (summary["metric_final"] > summary["metric_base"] if summary["higher_is_better"]
                    else summary["metric_final"] < summary["metric_base"])
        assert improved and summary["metric"] == ("perplexity" if secure else "accuracy")
        assert (out_dir / "adapter" / "adapter_model.safetensors").is_file()
        superlink_log = (logs / "superlink.log").read_text()
        assert "TLS disabled" not in superlink_log and "insecure" not in superlink_log.lower()
    finally:
        stop_processes(list(processes.values()))
    assert all(proc.poll() is not None for proc in processes.values())
