"""What a person sees: the terminal keeps fedsqueeze's own lines while everything else goes to log.txt; timings
name a straggler; ``fedsqueeze report`` reads a run back or says in one line why it cannot."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server.timings import round_timings, stragglers

ROOT = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ")

NOISY = """
import logging, os, subprocess, sys, warnings
from pathlib import Path
from server.logs import configure_logging
from simulations.terminal import TerminalCapture

configure_logging()
with TerminalCapture(Path(sys.argv[1]) / "log.txt", verbose=sys.argv[2] == "1"):
    print("python stdout line")
    logging.getLogger("flwr").warning("a dependency warning")
    warnings.warn("a dependency FutureWarning", FutureWarning)
    os.write(2, b"\\x1b[32mcoloured fd 2 line\\x1b[0m\\n")
    subprocess.run(["sh", "-c", "echo child process line"], check=True)
    logging.getLogger("fedsqueeze").info("our own line")
    logging.getLogger("fedsqueeze").warning("something that matters")
print("summary on stdout")
"""
CAPTURED = ("python stdout line", "a dependency warning", "FutureWarning", "coloured fd 2 line", "child process line")


def _noisy(tmp_path: Path, verbose: bool) -> tuple[str, str, str]:
    done = subprocess.run([sys.executable, "-c", NOISY, str(tmp_path), "1" if verbose else "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr, (tmp_path / "log.txt").read_text()


def test_the_terminal_keeps_our_lines_and_the_log_keeps_everything(tmp_path: Path) -> None:
    stdout, stderr, log = _noisy(tmp_path, verbose=False)
    assert stdout == "summary on stdout\n"
    assert stderr.splitlines() == ["our own line", "warning: something that matters"]
    lines = log.splitlines()
    assert all(STAMP.match(line) for line in lines)
    for text in (*CAPTURED, "INFO fedsqueeze: our own line", "WARNING fedsqueeze: something that matters"):
        assert any(text in line for line in lines), text
    assert "\x1b" not in log


def test_verbose_shows_the_captured_lines_too(tmp_path: Path) -> None:
    _, stderr, log = _noisy(tmp_path, verbose=True)
    for text in CAPTURED:
        assert text in stderr and text in log
    assert stderr.count("our own line") == 1  # not twice: once through the log line it writes


def test_a_submission_stream_shows_only_the_runs_own_lines(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from simulations.terminal import stream_filtered

    script = ("print('\\x1b[33mINFO\\x1b[0m :      Starting Flower ServerApp'); "
              "print('08:00:01 INFO fedsqueeze: round 1/2: perplexity 20.1'); "
              "print('ERROR :      the run failed'); raise SystemExit(3)")
    streamed = stream_filtered([sys.executable, "-c", script], {"PATH": "/usr/bin:/bin"}, tmp_path / "s" / "log.txt")
    assert streamed.status == 3 and streamed.lines[0] == "INFO :      Starting Flower ServerApp"
    log = (tmp_path / "s" / "log.txt").read_text()
    assert "Starting Flower ServerApp" in log and "round 1/2" in log and "\x1b" not in log
    shown = capsys.readouterr().err.splitlines()
    assert shown == ["08:00:01 INFO fedsqueeze: round 1/2: perplexity 20.1", "ERROR :      the run failed"]


def test_a_straggler_is_named_against_the_others_median() -> None:
    assert stragglers({"a": 10.0, "b": 1.0}) == [("a", 1.0)]
    assert stragglers({"a": 1.0, "b": 1.5, "c": 1.2}) == []
    assert stragglers({"a": 3.0}) == []
    clients = [{"node_id": 7, "partition_id": 0, "reply_s": 2.0, "train_s": 1.5},
               {"node_id": 8, "partition_id": 1, "reply_s": 2.2, "train_s": 1.6},
               {"node_id": 9, "partition_id": 2, "reply_s": 9.0, "train_s": 1.4},
               {"node_id": 10, "partition_id": 3}]  # no reply: not timed
    timings = round_timings(clients, round_s=10.0)
    assert timings["stragglers"] == [{"partition_id": 2, "node_id": 9, "reply_s": 9.0, "others_median_s": 2.1}]
    assert timings["train_s_max"] == 1.6 and timings["train_share"] == pytest.approx(0.16)
    assert timings["reply_s_max"] == 9.0


@pytest.mark.parametrize("damage", ["missing", "file", "empty", "metrics", "summary", "summary-list", "manifest"])
def test_report_on_a_missing_or_damaged_run_names_the_problem(tmp_path: Path, damage: str) -> None:
    from simulations.report import ReportError, report

    run = tmp_path / "run"
    if damage == "file":
        run.write_text("not a directory")
    elif damage != "missing":
        run.mkdir()
    if damage == "metrics":
        (run / "metrics.jsonl").write_text('{"round": 1, "bytes_up": 3}\n{"round": 2, "bytes')
    elif damage == "summary":
        (run / "summary.json").write_text('{"metric": "perplexity", ')
    elif damage == "summary-list":
        (run / "summary.json").write_text("[1, 2]")
    elif damage == "manifest":
        (run / "checkpoint").mkdir()
        (run / "checkpoint" / "checkpoint.json").write_text(json.dumps({"round": 2, "base": {}}))
    with pytest.raises(ReportError) as raised:
        report(run)
    assert str(run) in str(raised.value) and "\n" not in str(raised.value)


def test_the_report_command_fails_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "simulations.cli", "report", str(tmp_path / "nowhere")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"fedsqueeze: error: {tmp_path / 'nowhere'} is not a run directory (it does "
                                        "not exist)"]
