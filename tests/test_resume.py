"""Checkpoint and resume: a coordinator killed mid-run (SIGKILL) picks up after its last complete round, and the
final adapter equals the uninterrupted run's; damaged or foreign checkpoints are refused by name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from server import checkpoint
from server.federation import resume_point
from server.outputs import MetricsLog
from server.run_config import RESUMABLE_CHANGES, resolve
from simulations.report import report
from simulations.testing.crash_resume import (
    RESUME_RUN,
    adapter_tensors,
    child_env,
    kill_after_checkpoint,
    run_config_text,
    simulate_command,
)


def _checkpoint(round_id: int) -> checkpoint.Checkpoint:
    generator = torch.Generator().manual_seed(round_id)
    return checkpoint.Checkpoint(
        round=round_id, run_config={"seed": 0, "codec": "dense"}, state={"w": torch.randn(3, 4, generator=generator)},
        version=round_id, residual={"w": torch.ones(3, 4)}, history={round_id: b"\x00payload\xff"},
        previous_update=None, sampler_state=(3, (1, 2, 3), None), dp_rounds=round_id,
        totals={"bytes_up_total": 10 * round_id}, base={"accuracy": 0.5}, current={"accuracy": 0.7},
        rows=[{"round": r} for r in range(1, round_id + 1)], wall_s=1.5)


def test_checkpoint_round_trips_and_keeps_only_the_last_round(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, _checkpoint(1))
    checkpoint.save(tmp_path, _checkpoint(2))
    loaded = checkpoint.load(tmp_path)
    assert loaded is not None and loaded.round == 2 and loaded.sampler_state == (3, (1, 2, 3), None)
    assert torch.equal(loaded.state["w"], _checkpoint(2).state["w"]) and loaded.history == {2: b"\x00payload\xff"}
    assert loaded.residual is not None and loaded.previous_update is None and loaded.rows[-1] == {"round": 2}
    assert [p.name for p in (tmp_path / "checkpoint").glob("round-*")] == ["round-000002.safetensors"]
    assert checkpoint.load(tmp_path / "elsewhere") is None


def test_a_damaged_or_foreign_checkpoint_is_refused_by_name(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, _checkpoint(1))
    tensors = tmp_path / "checkpoint" / "round-000001.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="damaged"):
        checkpoint.load(tmp_path)
    cfg = resolve({**RESUME_RUN, "resume": True})
    saved = _checkpoint(1)
    saved.run_config = {k: v for k, v in cfg.values.items() if k not in RESUMABLE_CHANGES}
    checkpoint.save(tmp_path, saved)
    assert resume_point(cfg, tmp_path) is not None
    with pytest.raises(checkpoint.CheckpointError, match="'codec' was 'compeft'"):
        resume_point(resolve({**RESUME_RUN, "resume": True, "codec": "dense"}), tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="raise num-server-rounds"):
        resume_point(resolve({**RESUME_RUN, "resume": True, "num-server-rounds": 1}), tmp_path)
    assert resume_point(resolve(RESUME_RUN), tmp_path) is None  # resume off: start afresh
    # A checkpoint written before a key existed ran with that key's default: it resumes, unless the key is now set.
    saved.run_config.pop("quantization")
    checkpoint.save(tmp_path, saved)
    assert resume_point(cfg, tmp_path) is not None
    with pytest.raises(checkpoint.CheckpointError, match="'quantization' was 'none'"):
        resume_point(resolve({**RESUME_RUN, "resume": True, "quantization": "4bit"}), tmp_path)


def test_metrics_log_restarts_from_the_checkpointed_rows(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n{"round": 2}\n{"round": 3}\n')
    log = MetricsLog(tmp_path, rows=[{"round": 1}, {"round": 2}])  # round 3 was written but never checkpointed
    log.append({"round": 3, "again": True})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"round": 1}, {"round": 2}, {"round": 3, "again": True}]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run (a simulation) both resume tests must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    done = subprocess.run(simulate_command("--out", str(out), "--run-config", run_config_text(RESUME_RUN)),
                          env=child_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _assert_same_run(reference: Path, resumed: Path) -> None:
    rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]  # no round lost or repeated
    # Error feedback: every client carried its residual into every round after its first, across the restart too.
    assert [[c["residual_carried"] for c in r["clients"]] for r in rows] == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    want, got = adapter_tensors(reference), adapter_tensors(resumed)
    assert set(want) == set(got)
    for name in want:
        assert torch.equal(want[name], got[name]), name
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["rounds"] == 3
    assert summary["metric_final"] == json.loads((reference / "summary.json").read_text())["metric_final"]


@pytest.mark.slow
def test_a_simulation_killed_mid_run_resumes_to_the_uninterrupted_adapter(tmp_path: Path, reference: Path) -> None:
    killed = tmp_path / "killed"
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(simulate_command("--out", str(killed), "--run-config", run_config_text(RESUME_RUN)),
                            env=child_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    reached = kill_after_checkpoint(proc, killed, 1, timeout_s=600)
    assert reached < RESUME_RUN["num-server-rounds"] and not (killed / "summary.json").exists()
    stopped, _ = report(killed, plots=False)  # the report reads a stopped run from its checkpoint
    assert stopped["state"] == f"stopped after round {reached}" and stopped["rounds_done"] == reached
    resumed = subprocess.run(simulate_command("--resume", str(killed)), env=child_env(), capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming after round {reached}" in resumed.stderr
    _assert_same_run(reference, killed)
    finished, _ = report(killed, plots=False)
    assert finished["state"] == "finished" and finished["rounds_done"] == RESUME_RUN["num-server-rounds"]


def _kill_serverapp() -> int:
    """SIGKILL every flwr-serverapp process (the deployed coordinator's ServerApp); returns how many."""
    import psutil

    killed = 0
    for proc in psutil.process_iter(["cmdline"]):
        if any("flwr-serverapp" in part for part in (proc.info["cmdline"] or [])):
            proc.send_signal(signal.SIGKILL)
            killed += 1
    return killed


@pytest.mark.slow
def test_a_deployed_coordinator_killed_twice_resumes_over_grpc(tmp_path: Path, reference: Path) -> None:
    """The ServerApp alone SIGKILLed after round 1 (the SuperLink lives on), then the whole coordinator machine
    after round 2 (``fedsqueeze coordinator``, its SuperLink and the ServerApp it ran, all SIGKILLed at once) and
    ``fedsqueeze coordinator`` started again on its default state: each time the nodes stay up and reconnect, the
    run is resubmitted with resume=true (the last time with ``fedsqueeze submit``, which exits 0), and the final
    adapter is the uninterrupted run's, bit for bit."""
    from server.launch import submit_command
    from tests.deployment_helpers import (
        deployment_env,
        kill_group,
        restart_process,
        start_process,
        start_tls_federation,
        stop_processes,
        wait_for_port,
    )

    env = deployment_env(tmp_path)
    processes: dict[str, subprocess.Popen] = {}
    commands: dict[str, list[str]] = {}
    out_dir = tmp_path / "run"
    run_config = run_config_text({**RESUME_RUN, "out-dir": str(out_dir), "wait-for-clients-s": 120.0})
    manifest = out_dir / checkpoint.DIRECTORY / checkpoint.MANIFEST

    def submit_until_checkpoint(name: str, config: str, round_id: int) -> None:
        submitted = start_process(name, submit_command(config), logs=tmp_path, env=env, processes=processes)
        deadline = time.monotonic() + 600
        while not (manifest.exists() and json.loads(manifest.read_text())["round"] >= round_id):
            assert time.monotonic() < deadline, (tmp_path / f"{name}.log").read_text()[-3000:]
            time.sleep(0.2)
        if submitted.poll() is None:  # `flwr run --stream` only follows the logs of the run that died
            os.killpg(submitted.pid, signal.SIGKILL)
            submitted.wait(timeout=30)

    try:
        certs = start_tls_federation(tmp_path, logs=tmp_path, env=env, processes=processes, commands=commands,
                                     coordinator_cli=True)
        submit_until_checkpoint("submit-1", run_config, 1)
        assert _kill_serverapp() >= 1 and not (out_dir / "summary.json").exists()
        first_stop = json.loads(manifest.read_text())["round"]
        assert first_stop == 1
        submit_until_checkpoint("submit-2", run_config + " resume=true", 2)
        kill_group(processes["superlink"])  # the coordinator machine loses power
        second_stop = json.loads(manifest.read_text())["round"]
        assert second_stop == 2 and not (out_dir / "summary.json").exists()
        assert (tmp_path / "node-state" / "fedsqueeze" / "coordinator" / "superlink.db").is_file()
        restart_process("superlink", commands["superlink"], logs=tmp_path, env=env, processes=processes)
        control_port = int(commands["superlink"][commands["superlink"].index("--control-port") + 1])
        wait_for_port(control_port, 90)
        resumed = subprocess.run([sys.executable, "-m", "simulations.cli", "submit", "--root-certificates",
                                  str(certs["ca"]), "--superlink", f"127.0.0.1:{control_port}", "--run-config",
                                  run_config + " resume=true", "--log", str(tmp_path / "submit-3.txt")],
                                 env=env, capture_output=True, text=True, timeout=900)
        assert resumed.returncode == 0 and resumed.stderr.strip().endswith("finished"), resumed.stderr[-3000:]
        assert f"resuming after round {second_stop}" in resumed.stderr
        _assert_same_run(reference, out_dir)
        assert "resuming after round 1" in (tmp_path / "submit-2.log").read_text()
        assert all(processes[f"supernode{i}"].poll() is None for i in (0, 1))  # the nodes never left
    finally:
        stop_processes(list(processes.values()))
