"""Real deployment over gRPC with TLS: a flower-superlink, two flower-supernodes, a run submitted with flwr run."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.launch import supernode_command
from server.certs import generate_dev_certificates
from server.launch import submit_command, superlink_command, write_connection
from tests.deployment_helpers import free_port as _free_port
from tests.deployment_helpers import stop_processes as _stop
from tests.deployment_helpers import wait_for_port as _wait_for_port

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secagg"])
def test_two_supernodes_train_the_encoder_preset_over_grpc_with_tls(tmp_path: Path, secure: bool) -> None:
    certs = generate_dev_certificates(tmp_path / "certs")
    fleet_port, control_port = _free_port(), _free_port()
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "FLWR_HOME": str(tmp_path / "flwr-home"), "FEDSQUEEZE_CLIENT_THREADS": "1",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    logs = tmp_path / "logs"
    logs.mkdir()
    processes: list[subprocess.Popen] = []

    def start(name: str, command: list[str]) -> None:
        out = (logs / f"{name}.log").open("w")
        processes.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True))

    try:
        start("superlink", superlink_command(certs_dir=certs["ca"].parent, fleet_address=f"127.0.0.1:{fleet_port}",
                                             control_port=control_port))
        _wait_for_port(fleet_port, 60)
        _wait_for_port(control_port, 60)
        for partition in range(2):
            start(f"supernode{partition}", supernode_command(
                superlink=f"localhost:{fleet_port}", partition_id=partition, num_partitions=2,
                root_certificates=certs["ca"], clientappio_port=_free_port()))
        write_connection(tmp_path / "flwr-home", address=f"localhost:{control_port}", root_certificates=certs["ca"])
        out_dir = tmp_path / "run"
        rounds = 1 if secure else 2  # each secure-aggregation stage is one more Flower message exchange (~12 s)
        run_config = (f"preset='encoder' num-clients=2 num-server-rounds={rounds} partitioner='iid' "
                      f"wait-for-clients-s=120.0 out-dir='{out_dir}' secagg={'true' if secure else 'false'}")
        submitted = subprocess.run(submit_command(run_config), env=env, capture_output=True, text=True, timeout=900)
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        summary_path = out_dir / "summary.json"
        deadline = time.monotonic() + 60
        while not summary_path.exists() and time.monotonic() < deadline:
            time.sleep(1)
        assert summary_path.exists(), submitted.stdout[-3000:] + (logs / "superlink.log").read_text()[-3000:]
        summary = json.loads(summary_path.read_text())
        rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
        assert summary["rounds"] == rounds and [r["clients_ok"] for r in rows] == [2] * rounds
        if secure:
            assert len(rows[0]["secagg"]["survivors"]) == 2 and rows[0]["secagg"]["aborted"] is None
            assert all(c["bytes_up"] < 0.7 * c["dense_fp32_bytes_up"] for c in rows[0]["clients"])
        assert summary["metric_final"] > summary["metric_base"]
        assert (out_dir / "adapter" / "adapter_model.safetensors").is_file()
        superlink_log = (logs / "superlink.log").read_text()
        assert "TLS disabled" not in superlink_log and "insecure" not in superlink_log.lower()
    finally:
        _stop(processes)
    assert all(proc.poll() is not None for proc in processes)
