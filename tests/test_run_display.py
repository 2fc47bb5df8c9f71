"""A run as a person sees it on a terminal: ``fedsqueeze simulate`` under a pseudo-terminal shows the live view and
one line per round, nothing from Flower, Ray or the libraries (those go to log.txt); a deliberately slow client is
named as the straggler, every client row carries its timings, and ``fedsqueeze report`` reads the run back."""

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]")
SUMMARY_LINE = re.compile(r'^\s*[{}]$|^\s*"[a-z_0-9]+": ')
DEPENDENCY_NOISE = re.compile(r"DEBUG|WARNING|INFO :|Warning:|deprecated|DEPRECATED|Traceback|\(pid=|ClientAppActor|"
                              r"flwr")


def _run_in_a_terminal(command: list[str], env: dict[str, str], timeout_s: float) -> tuple[int, str]:
    """Run ``command`` with a pseudo-terminal as its stdin, stdout and stderr; its exit status and transcript."""
    leader, follower = pty.openpty()
    child = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, cwd=ROOT, env=env,
                             start_new_session=True)
    os.close(follower)
    transcript, deadline = b"", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 1 << 16)
            except OSError:  # the terminal closed: every process holding it has gone
                break
            if not chunk:
                break
            transcript += chunk
        elif child.poll() is not None:
            break
    os.close(leader)
    try:
        status = child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        status = -9
    return status, transcript.decode("utf-8", errors="replace")


def _screen_lines(transcript: str) -> list[str]:
    """What stayed on screen, line by line: colour and cursor codes removed, each carriage-return redraw kept as
    its own line."""
    text = ANSI.sub("", transcript)
    return [part.strip() for line in text.split("\n") for part in line.split("\r") if part.strip()]


def test_a_run_in_a_terminal_shows_progress_and_rounds_only(tmp_path: Path, tiny_causal_lm: str) -> None:
    out = tmp_path / "run"
    config = (f"model='{tiny_causal_lm}' per-topic=20 heldout=16 max-length=64 local-steps=4 batch-size=4 lr=1e-2 "
              "eval-samples=4 max-new-tokens=6 num-clients=3 num-server-rounds=2")
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "40"}
    env.pop("CI", None)  # rich treats CI as a non-interactive terminal
    status, transcript = _run_in_a_terminal(
        [sys.executable, "-m", "simulations.cli", "simulate", "--out", str(out), "--run-config", config,
         "--slow-partitions", "2", "--slow-s", "8"], env, timeout_s=600)
    lines = _screen_lines(transcript)
    assert status == 0, "\n".join(lines[-40:])

    # The screen: the live view, the base model's score, one line per round, the summary; nothing else.
    noise = [line for line in lines if DEPENDENCY_NOISE.search(line)]
    assert not noise, noise[:10]
    unexpected = [line for line in lines if not (line.startswith(("round ", "base model: ", "outputs in "))
                                                 or SUMMARY_LINE.match(line))]
    assert not unexpected, unexpected[:10]
    finished = [line for line in lines if re.match(r"round \d/2: perplexity", line)]
    assert [line.split(":")[0] for line in finished] == ["round 1/2", "round 2/2"], lines
    # Round 1 includes each client's imports and model load, so only the warm round is sure to name it.
    assert "straggler: partition 2" in finished[-1] and "straggler: partition 0" not in transcript
    assert any(re.search(r"clients replied", line) for line in lines)  # the live view counted the replies

    # log.txt holds what the terminal did not show: Flower's own lines and its deprecation notice among them.
    log = (out / "log.txt").read_text()
    assert "run_simulation" in log and "fedsqueeze: round 2/2" in log

    # Every client row carries its timings; the slow partition is the round's straggler.
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["partition_id"] for s in rows[-1]["stragglers"]] == [2]
    for row in rows:
        assert 0 < row["train_share"] <= 1 and row["reply_s_max"] >= 8
        assert {s["partition_id"] for s in row["stragglers"]} <= {2}
        for client in row["clients"]:
            assert {"train_s", "encode_s", "client_s", "steps", "examples", "reply_s"} <= set(client), client
            assert client["steps"] == 4 and client["reply_s"] >= client["client_s"] >= client["train_s"] > 0
        slow = next(c for c in row["clients"] if c["partition_id"] == 2)
        assert slow["reply_s"] >= 8 > max(c["client_s"] for c in row["clients"])

    # The report reads the finished run back and draws its plots again.
    for plot in (out / "plots").glob("*.png"):
        plot.unlink()
    done = subprocess.run([sys.executable, "-m", "simulations.cli", "report", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "finished; 2 of 2 rounds" in done.stdout and "perplexity" in done.stdout
    assert f"{sum(len(r['stragglers']) for r in rows)} straggler(s)" in done.stdout
    assert (out / "plots" / "perplexity_vs_round.png").stat().st_size > 0
