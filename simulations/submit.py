"""``fedsqueeze submit``: hand a run to the SuperLink with ``flwr run``, follow it to its end, and exit with its
outcome — 0 only when the run finished, otherwise non-zero with the reason on the terminal in one line.

Before Flower is asked anything, the run config is checked as the ServerApp will check it (an unknown key or a
value of the wrong type: one line, exit 2) and the Control API is probed (nothing listening, or a certificate the
given CA does not vouch for: one line, exit 1). Afterwards the run's status comes from the SuperLink itself
(``flwr ls``): ``finished:completed`` is success; anything else is reported with Flower's reason (for a ServerApp
that raised, its exception's message). Every streamed line stays in ``--log``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from server.launch import CONNECTION_NAME, submit_command, write_connection
from server.logs import strip_ansi
from server.run_config import resolve
from simulations.connection_check import probe
from simulations.terminal import stream_filtered

_RUN_ID = re.compile(r"Successfully started run (\d+)")
_BOX = str.maketrans("", "", "╭╮╰╯│─")
COMPLETED = "finished:completed"


def check_run_config(text: str) -> None:
    """The ``--run-config`` overrides parse and resolve as the ServerApp will resolve them; ValueError naming the
    first problem (an unknown key, a value of the wrong type or out of range)."""
    from flwr.common.config import parse_config_args

    keys = [key for key, _ in re.findall(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)", text)]  # Flower's own pattern
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise ValueError(f"--run-config sets {twice[0]!r} more than once")
    try:
        overrides = parse_config_args([text]) if text.strip() else {}
    except Exception as exc:  # Flower's TOML parser raises several kinds
        raise ValueError(f"--run-config is not TOML key=value pairs: {' '.join(str(exc).split())}") from None
    resolve(overrides)


@dataclass(frozen=True)
class RunStatus:
    """A run's status as the SuperLink reports it (``finished:completed``, ``finished:failed`` ...) and why."""

    status: str
    details: str


def run_status(run_id: int, env: dict[str, str]) -> RunStatus | None:
    """What the SuperLink says of run ``run_id``; None when it cannot be asked (gone, or no such run)."""
    try:
        done = subprocess.run(["flwr", "ls", CONNECTION_NAME, "--run-id", str(run_id), "--format", "json"], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        runs = json.loads(done.stdout[done.stdout.find("{"):]).get("runs") or []
    except (subprocess.TimeoutExpired, ValueError, OSError):
        return None
    if done.returncode != 0 or not runs:
        return None
    return RunStatus(str(runs[0].get("status", "")), str(runs[0].get("status-details", "")))


def refusal_reason(lines: list[str]) -> str:
    """Flower's own words for a submission it refused (the text of its error box, or its last lines)."""
    boxed = [" ".join(line.translate(_BOX).split()) for line in lines if "│" in line]
    text = " ".join(part for part in boxed if part and part != "Error")
    if not text:
        text = " ".join(" ".join(line.split()) for line in lines[-3:] if line.strip())
    return text or "flwr run gave no reason"


def outcome_line(run_id: int, status: RunStatus | None, superlink: str) -> tuple[int, str]:
    """The exit status and the line to print for a streamed run that ended with ``status``."""
    if status is None:
        return 1, (f"fedsqueeze: error: the SuperLink at {superlink} went away during run {run_id}: restart it "
                   "(fedsqueeze coordinator keeps its state) and resubmit with resume=true")
    if status.status == COMPLETED:
        return 0, f"fedsqueeze: run {run_id} finished"
    if not status.status.startswith("finished"):
        return 1, (f"fedsqueeze: error: the log stream ended while run {run_id} is {status.status}: it goes on "
                   f"without this terminal (flwr log {run_id} follows it)")
    details = " ".join(status.details.removeprefix("ServerApp failed with exception: ").split()) or "no reason given"
    return 1, f"fedsqueeze: error: run {run_id} {status.status}: {details}"


class Watchdog:
    """Ends a log stream that cannot end by itself. Flower's stream has no read timeout, so a coordinator host that
    loses power (no reset ever arrives) would hold ``submit`` forever: every ``poll_s`` the run's status is asked
    for, and the stream is stopped once the SuperLink has not answered ``misses`` times in a row, or the run has
    been finished for two polls."""

    def __init__(self, env: dict[str, str], poll_s: float = 15.0, misses: int = 4) -> None:
        self.env, self.poll_s, self.misses = env, poll_s, misses
        self.run_id: int | None = None
        self._process: subprocess.Popen | None = None
        self._found = threading.Event()
        self._done = threading.Event()

    def line(self, text: str) -> None:
        """Note the run id when ``flwr run`` prints it."""
        if self.run_id is None and (found := _RUN_ID.search(text)):
            self.run_id = int(found.group(1))
            self._found.set()

    def start(self, process: subprocess.Popen) -> None:
        """Watch ``process`` (``flwr run --stream``) from now on."""
        self._process = process
        threading.Thread(target=self._watch, name="fedsqueeze-submit-watchdog", daemon=True).start()

    def stop(self) -> None:
        """The stream ended: stop watching."""
        self._done.set()
        self._found.set()

    def _watch(self) -> None:
        self._found.wait()
        missed = finished = 0
        while not self._done.wait(self.poll_s) and self.run_id is not None:
            status = run_status(self.run_id, self.env)
            missed = missed + 1 if status is None else 0
            finished = finished + 1 if status is not None and status.status.startswith("finished") else 0
            if (missed >= self.misses or finished >= 2) and self._process is not None:
                self._process.kill()
                return


def submit(run_config: str, *, superlink: str, root_certificates: Path | None, log_path: Path, stream: bool = True,
           verbose: bool = False, env: dict[str, str] | None = None) -> int:
    """Submit this app with ``run_config`` and, with ``stream``, follow the run to its end; the exit status (see
    the module notes). ValueError for a run config that would be refused."""
    check_run_config(run_config)
    try:
        probe(superlink, root_certificates, "--superlink")
    except ConnectionError as exc:
        print(f"fedsqueeze: error: SuperLink unreachable: {exc}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="fedsqueeze-flwr-") as home:
        write_connection(Path(home), address=superlink, root_certificates=root_certificates)
        env = {**(env if env is not None else os.environ), "FLWR_HOME": home}
        command = submit_command(run_config, stream=stream)
        print(f"+ {' '.join(command)}  (Flower's lines go to {log_path})", file=sys.stderr, flush=True)
        watchdog = Watchdog(env)
        try:
            streamed = stream_filtered(command, env, log_path, verbose=verbose, on_line=watchdog.line,
                                       on_start=watchdog.start if stream else None)
        finally:
            watchdog.stop()
        if watchdog.run_id is None:
            print(f"fedsqueeze: error: the SuperLink refused the run: {refusal_reason(streamed.lines)}",
                  file=sys.stderr)
            return 1
        run_id = watchdog.run_id
        if not stream:
            print(f"fedsqueeze: run {run_id} submitted", file=sys.stderr)
            return 0
        code, line = outcome_line(run_id, run_status(run_id, env), superlink)
        print(strip_ansi(line), file=sys.stderr, flush=True)
        return code
