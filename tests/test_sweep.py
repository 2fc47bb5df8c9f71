"""``fedsqueeze sweep``: bad grids refused in one line before anything runs; a tiny-protocol sweep killed part-way
and run again skips its finished runs, resumes the killed one from its checkpoint and reports every configuration
with Student's t intervals over seeds (as scipy computes them), marking runs with rejected updates and runs that
failed; ``fedsqueeze report`` reads the sweep directory back."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scipy import stats

from simulations.cli import main
from simulations.sweep_report import interval, mean_and_half_width

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("arguments", "expected"), [
    (["--grid", "codek=dense,compeft"], "configuration 'codek=dense': unknown run-config key 'codek'"),
    (["--grid", "codec=dense,zip"], "configuration 'codec=zip': unknown codec 'zip'"),
    (["--grid", "compeft-density=0.1,2.0"], "configuration 'compeft-density=2.0': "),
    (["--grid", ""], "--grid is empty"),
    (["--grid", "codec="], "grid key 'codec' has no values"),
    ([], "the grid is empty"),
    (["--config", "a: codec=dense", "--config", "a: codec=compeft"], "configuration name 'a' is given twice"),
    (["--grid", "codec=dense,dense"], "configuration name 'codec=dense' is given twice"),
    (["--config", "a b: codec=dense", "--config", "a_b: codec=compeft"], "would share the folder 'a_b'"),
    (["--grid", "seed=1,2"], "sets 'seed', which the sweep sets for each run (--seeds)"),
    (["--grid", "codec=dense", "--seeds", "0,0"], "seed 0 is given twice"),
    (["--grid", "codec=dense", "--target", "fastest"], "target 'fastest' is neither a number nor a configuration"),
    (["--grid", "codec=dense", "--protocol", "huge"], "unknown protocol 'huge'"),
])
def test_a_bad_sweep_gets_one_line_and_exit_2_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], expected: str) -> None:
    out = tmp_path / "sweep"
    assert main(["sweep", "--out", str(out), "--protocol", "tiny", *arguments]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedsqueeze: error: ") and expected in err, err
    assert len(err.splitlines()) == 1
    assert not out.exists()  # nothing written, nothing started


def test_a_sweep_file_with_a_duplicate_configuration_or_an_unknown_key_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    duplicate = tmp_path / "duplicate.toml"
    duplicate.write_text('[configs.dense]\ncodec = "dense"\n[configs.dense]\ncodec = "compeft"\n')
    assert main(["sweep", "--out", str(tmp_path / "a"), "--file", str(duplicate)]) == 2
    assert "is not valid TOML" in capsys.readouterr().err
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('seeds = [0, 1]\n[grids]\ncodec = ["dense"]\n')
    assert main(["sweep", "--out", str(tmp_path / "b"), "--file", str(unknown)]) == 2
    assert "unknown key 'grids'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_sweep_file_and_the_command_line_combine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('protocol = "tiny"\nseeds = [3, 4]\ntarget = "dense compeft-density=0.05"\n'
                     '[run-config]\nlr = 0.005\n[grid]\ncompeft-density = [0.05, 0.1]\n'
                     '[configs.dense]\ncodec = "dense"\n'
                     '[configs.compeft]\ncodec = "compeft"\n')
    assert main(["sweep", "--out", str(tmp_path / "out"), "--file", str(sweep), "--seeds", "7", "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[:2] for line in lines] == [
        ["dense compeft-density=0.05", "seed 7"], ["dense compeft-density=0.1", "seed 7"],
        ["compeft compeft-density=0.05", "seed 7"], ["compeft compeft-density=0.1", "seed 7"]]
    assert all("lr=0.005" in line and "num-clients=4" in line for line in lines)  # file, then protocol values


@pytest.mark.parametrize("values", [[1.0, 2.0], [3.0, 3.5, 5.25], [0.1, 0.1, 0.1, 0.2, 0.4]])
def test_the_interval_is_scipys_student_t_interval(values: list[float]) -> None:
    mean = sum(values) / len(values)
    expected = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
    assert interval(values) == pytest.approx(expected, rel=1e-12)
    assert interval([2.0]) is None and interval([2.0, 2.0]) == (2.0, 2.0)


@pytest.mark.parametrize(("mean", "half", "shown"), [
    (21.69, 4.04, "21.7 ± 4.0"), (3.0751, 0.1823, "3.08 ± 0.18"), (2.14312, 0.00331, "2.1431 ± 0.0033"),
    (1113.2, 842.0, "1113 ± 842"), (185.4, 8.5e-14, "185.4 ± 0"), (0.5, 0.0, "0.5 ± 0"),
    (float("inf"), 1.0, "∞ ± 1")])
def test_a_mean_is_shown_to_the_decimal_place_of_its_interval(mean: float, half: float, shown: str) -> None:
    assert mean_and_half_width(mean, half) == shown


# Three configurations on the tiny protocol (4 clients, 2 sampled a round, 2 rounds, seeds 0 and 1): plain dense
# FedAvg; ComPEFT whose every update the coordinator rejects (max-update-bytes=1), so its runs finish with rejected
# updates and skipped rounds; and a model that does not exist, so its runs fail at once.
CONFIGS = ["dense: codec=dense", "rejected: codec=compeft compeft-density=0.2 max-update-bytes=1",
           "missing: model=/nonexistent/tiny-model"]


def _sweep_command(out: Path, model: str, parallel: int) -> list[str]:
    configs = [arg for config in CONFIGS for arg in ("--config", config)]
    return [sys.executable, "-m", "simulations.cli", "sweep", "--out", str(out), "--protocol", "tiny",
            "--run-config", f"model={model}", *configs, "--target", "dense", "--parallel", str(parallel),
            "--max-parallel", "1"]


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


@pytest.fixture(scope="module")
def resumed_sweep(tmp_path_factory: pytest.TempPathFactory, tiny_causal_lm: str) -> dict:
    """The sweep killed (SIGKILL to its process group) once the first 'rejected' run checkpointed round 1, then
    run again to the end; what each phase left behind."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    # One run at a time until the kill, so both dense runs have finished when the first 'rejected' run checkpoints;
    # the second invocation runs two at a time.
    first = subprocess.Popen(_sweep_command(out, tiny_causal_lm, 1), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True, text=True)
    manifest = out / "rejected" / "seed-0" / "checkpoint" / "checkpoint.json"
    deadline = time.monotonic() + 400
    while not manifest.exists():
        assert first.poll() is None, f"the sweep ended before it could be killed: {first.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint of the 'rejected' run in 400 s"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    finished = {seed: (out / "dense" / f"seed-{seed}" / "summary.json").stat().st_mtime_ns for seed in (0, 1)}
    killed_round = json.loads(manifest.read_text())["round"]
    assert not (out / "rejected" / "seed-0" / "summary.json").exists()
    second = subprocess.run(_sweep_command(out, tiny_causal_lm, 2), cwd=ROOT, env=_env(), capture_output=True,
                            text=True, timeout=600)
    return {"out": out, "finished": finished, "killed_round": killed_round, "second": second}


@pytest.mark.slow
def test_a_killed_sweep_run_again_skips_finished_runs_and_resumes_the_killed_one(resumed_sweep: dict) -> None:
    out, second = resumed_sweep["out"], resumed_sweep["second"]
    assert "6 runs; 2 already finished, 4 to run" in second.stderr, second.stderr
    assert "starting dense" not in second.stderr
    for seed, mtime in resumed_sweep["finished"].items():  # untouched
        assert (out / "dense" / f"seed-{seed}" / "summary.json").stat().st_mtime_ns == mtime
    assert "resuming rejected seed 0" in second.stderr
    log = (out / "rejected" / "seed-0" / "log.txt").read_text()
    assert f"resuming after round {resumed_sweep['killed_round']} of 2" in log
    rows = [json.loads(line) for line in (out / "rejected" / "seed-0" / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [1, 2]


@pytest.mark.slow
def test_the_sweep_reports_means_and_scipy_intervals_and_marks_rejected_and_failed_runs(
        resumed_sweep: dict, capsys: pytest.CaptureFixture[str]) -> None:
    out, second = resumed_sweep["out"], resumed_sweep["second"]
    assert second.returncode == 1, second.stderr  # two runs failed
    document = json.loads((out / "sweep.json").read_text())
    rows = {row["name"]: row for row in document["configurations"]}
    assert list(rows) == ["dense", "rejected", "missing"]
    dense = rows["dense"]
    assert dense["finished"] == 2 and not dense["problem_runs"] and dense["metric"] == "perplexity"
    for name, estimate in dense["final"].items():  # every final metric: the mean and scipy's t interval
        values = [json.loads((out / "dense" / f"seed-{s}" / "summary.json").read_text())[f"{name}_final"]
                  for s in (0, 1)]
        assert estimate["values"] == values and estimate["mean"] == pytest.approx(sum(values) / 2)
        if values[0] != values[1]:
            expected = stats.t.interval(0.95, 1, loc=sum(values) / 2, scale=stats.sem(values))
            assert estimate["ci95"] == pytest.approx(list(expected), rel=1e-9)
    assert len(set(dense["final"]["perplexity"]["values"])) == 2  # the seeds differ
    assert document["target"]["value"] == pytest.approx(dense["final"]["perplexity"]["mean"])
    assert dense["target_reached"] >= 1 and all(1 <= r <= 2 for r in dense["rounds_to_target"]["values"])
    rejected = rows["rejected"]
    assert rejected["finished"] == 2
    assert [run["seed"] for run in rejected["problem_runs"]] == [0, 1]
    assert all(run["updates_rejected"] == 4 and run["rounds_skipped"] == 2 for run in rejected["problem_runs"])
    paired = rows["rejected"]["paired_vs_target"]  # each seed's perplexity minus dense's on the same seed
    seeds = {name: {s["seed"]: s["final"]["perplexity"] for s in rows[name]["seeds"]} for name in ("dense", "rejected")}
    assert paired["values"] == pytest.approx([seeds["rejected"][s] - seeds["dense"][s] for s in (0, 1)])
    assert dense["paired_vs_target"]["values"] == [0.0, 0.0]
    missing = rows["missing"]
    assert missing["finished"] == 0 and missing["final"] == {}
    assert all(run["state"].startswith("failed: exit 2: fedsqueeze: error:") and "/nonexistent/tiny-model"
               in run["state"] for run in missing["problem_runs"])
    table = (out / "sweep.md").read_text()
    assert "| dense | 2/2 |" in table and "| rejected ⚠ | 2/2 |" in table and "| missing ⚠ | 0/2 |" in table
    assert "- rejected: seed 0: 4 updates rejected, 2 rounds skipped" in table
    perplexity = dense["final"]["perplexity"]
    half = (perplexity["ci95"][1] - perplexity["ci95"][0]) / 2
    assert mean_and_half_width(perplexity["mean"], half) in table
    assert {p.name for p in (out / "plots").glob("*.png")} >= {"perplexity.png", "nll.png"}
    # fedsqueeze report reads the sweep directory back (a finished sweep: the same table)
    assert main(["report", str(out), "--no-plots"]) == 0
    assert capsys.readouterr().out.strip() == table.strip()
    assert math.isfinite(document["configurations"][0]["mb_up"]["mean"])
