"""End to end in Flower's simulation engine on the bundled encoder preset (real model, real data)."""

import json
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant
from peft import PeftModel

from client.task.build import build_task, load_splits
from client.task.loop import evaluate
from client.task.models import load_encoder_classifier
from server.run_config import resolve
from simulations.simulate import simulate
from simulations.testing.audit import audited_sums_are_exact

pytestmark = pytest.mark.slow
# Tests that assert nothing of what the model learns (bytes, bit-identity, secure sums, dropouts) train 2 local steps
# instead of the preset's 10, and the coordinator scores the global model on 40 held-out reviews instead of 200.
UNSCORED = {"heldout": 40, "local-steps": 2}


def test_simulation_survives_a_failing_client_and_exports_a_loadable_adapter(tmp_path: Path) -> None:
    config = {"preset": "encoder", "num-server-rounds": 2, "num-clients": 3, "partitioner": "iid"}
    summary = simulate(config, out_dir=tmp_path, max_parallel=2, fail_partitions=frozenset({2}))

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["clients_ok"] == 2 and r["clients_failed"] == 1 and r["applied"] for r in rows)
    assert any("injected failure on partition" in p for p in rows[0]["problems"])
    assert summary["clients_failed_total"] == 2
    assert summary["metric_final"] > summary["metric_base"]
    assert summary["bytes_up_total"] == sum(r["bytes_up"] for r in rows) > 0
    assert 0.98 < summary["bytes_up_total"] / summary["bytes_up_dense_equivalent"] < 1.05
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for key in ("preset", "model", "dataset", "num_clients", "rounds", "codec", "metric", "metric_base",
                "metric_final", "bytes_up_total", "bytes_up_dense_equivalent", "wall_s"):
        assert key in on_disk
    assert (tmp_path / "plots" / "accuracy_vs_round.png").stat().st_size > 0
    assert (tmp_path / "plots" / "accuracy_vs_bytes.png").stat().st_size > 0

    # The exported adapter is standard PEFT and reproduces metric_final on the held-out split.
    spec = resolve(config).task
    train, heldout = load_splits(spec)
    base = load_encoder_classifier(spec.model, len(train.label_names), spec.seed)
    task = build_task(spec, train)
    task.model = PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert evaluate(task, heldout.dataset).metrics["accuracy"] == pytest.approx(summary["metric_final"])


def test_compeft_with_error_feedback_and_compressed_downlink(tmp_path: Path) -> None:
    config = {"preset": "encoder", "num-server-rounds": 3, "num-clients": 3, "fraction-train": 0.67,
              "partitioner": "iid", "codec": "compeft", "compeft-density": 0.05, "error-feedback": True,
              "downlink-codec": "compeft", "downlink-density": 0.05}
    summary = simulate(config, out_dir=tmp_path, max_parallel=2)

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["applied"] and r["clients_ok"] == 2 and not r["problems"] for r in rows)
    clients = [c for r in rows for c in r["clients"]]
    assert all(c["status"] == "ok" and 0 < c["bytes_up"] < c["dense_fp32_bytes_up"] / 20 for c in clients)
    # Clients keep the global state: after their first round they get compressed aggregates, not the state.
    later = [c for r in rows[1:] for c in r["clients"]]
    assert any(c["bytes_down"] < c["dense_fp32_bytes_down"] / 20 for c in later)
    # The error-feedback residual survives between rounds in Flower's node state.
    assert any(c.get("residual_carried") == 1.0 for c in later)
    assert summary["bytes_up_total"] == sum(c["bytes_up"] for c in clients)
    assert summary["bytes_down_total"] == sum(c["bytes_down"] for c in clients)
    assert summary["bytes_up_dense_equivalent"] == sum(c["dense_fp32_bytes_up"] for c in clients)
    assert summary["compression_up"] > 20 and summary["compression_down"] > 1.5
    assert summary["metric_final"] > summary["metric_base"]


@pytest.mark.parametrize("trainable", ["full", "lora"])
def test_ferret_keeps_every_client_bit_identical_to_the_global_model(tmp_path: Path, trainable: str) -> None:
    config = {"preset": "encoder", "num-server-rounds": 3, "num-clients": 3, "fraction-train": 0.67,
              "partitioner": "iid", "codec": "ferret", "trainable": trainable,
              "ferret-dim": 256, "ferret-block-size": 16384, **UNSCORED}
    summary = simulate(config, out_dir=tmp_path, max_parallel=2)

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["applied"] and r["clients_ok"] == 2 and not r["problems"] for r in rows)
    clients = [c for r in rows for c in r["clients"]]
    # Every client trained from exactly the coordinator's global state (48-bit digest prefix reported and checked).
    assert all(c["status"] == "ok" and c["in_sync"] for c in clients)
    assert all(0 < c["bytes_up"] < c["dense_fp32_bytes_up"] / 40 for c in clients)  # 64 entries per coefficient
    if trainable == "full":
        # Nobody downloads the model: newcomers rebuild from the pretrained weights plus the coefficients so far.
        assert all(c["bytes_down"] < c["dense_fp32_bytes_down"] / 20 for c in clients)
        assert (tmp_path / "model" / "model.safetensors").stat().st_size > 4 * 20_000_000
    else:
        assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert summary["codec"] == "ferret" and summary["compression_up"] > 40


@pytest.mark.parametrize(("codec", "extra", "fail_at"), [
    ("ferret", {"ferret-dim": 256, "ferret-block-size": 16384}, "train.secagg_unmask"),
    ("compeft", {"compeft-support": "shared", "compeft-density": 0.1, "dp-noise-multiplier": 0.5, "dp-clip": 0.5},
     "train"),
])
def test_secure_aggregation_of_ferret_and_compeft_with_dropouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                codec: str, extra: dict, fail_at: str) -> None:
    audit = tmp_path / "audit"
    monkeypatch.setenv("FEDSQUEEZE_SECAGG_AUDIT_DIR", str(audit))
    config = {"preset": "encoder", "num-server-rounds": 1, "num-clients": 5, "partitioner": "iid", "secagg": True,
              "codec": codec, **extra, **UNSCORED}
    summary = simulate(config, out_dir=tmp_path / "run", max_parallel=2, fail_partitions=frozenset({0}),
                       fail_at=fail_at)

    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["applied"] and row["secagg"]["aborted"] is None
    # A dropout during unmasking still counts its masked input; one before key agreement is simply absent.
    assert len(row["secagg"]["survivors"]) == (5 if fail_at == "train.secagg_unmask" else 4)
    assert sorted(audited_sums_are_exact(audit, 1)) == row["secagg"]["survivors"]
    if "dp-noise-multiplier" in extra:  # epsilon for the noise 4 survivors of 5 sampled actually summed
        honest = RDPAccountant()
        honest.step(noise_multiplier=0.5 * (4 / 5) ** 0.5, sample_rate=1.0)
        assert row["dp_epsilon"] == summary["dp_epsilon"] == pytest.approx(honest.get_epsilon(delta=1e-5))


def test_one_dropout_too_many_skips_the_round_and_keeps_the_global_model(tmp_path: Path) -> None:
    config = {"preset": "encoder", "num-server-rounds": 1, "num-clients": 3, "partitioner": "iid", "secagg": True,
              **UNSCORED}
    summary = simulate(config, out_dir=tmp_path, max_parallel=2, fail_partitions=frozenset({0, 1}),
                       fail_at="train.secagg_mask")  # threshold 2 of 3: one dropout is fine, two are not

    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert not row["applied"] and row["state_version"] == 0 and summary["rounds_skipped"] == 1
    assert "aborted at masked input collection" in row["secagg"]["aborted"]
    assert any("threshold is 2" in p for p in row["problems"])
    assert summary["metric_final"] == summary["metric_base"]
