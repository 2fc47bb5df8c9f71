"""What ``fedsqueeze node`` runs: its warm trainer's private folder, and a SuperNode that keeps (re)connecting.

The trainer's Unix socket lives in a private temporary folder (0700) holding the node's pid; a node that was
SIGKILLed cannot remove it, so every node removes, on start, such folders of this user whose node is gone.

Flower's SuperNode gives up in two ways that an operator should not have to watch for: it exits at once when the
SuperLink still holds its previous session (a node restarted within the ~20 s the SuperLink takes to let a dead
node go: "Failed to activate SuperNode"), and it retries an unreachable SuperLink for as long as it is told
(``--max-wait-time``; without end by default). ``run_supernode`` starts it with the time left of the node's
reconnection budget and starts it again, with backoff, whenever it fails, until the budget is spent without a
working connection: then one line and a non-zero exit.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from simulations.processes import start_child, stop_child

TRAINER_PREFIX = "fedsqueeze-trainer-"
PID_FILE = "node.pid"
DEFAULT_RECONNECT_S = 600.0
MAX_BACKOFF_S = 30.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_trainer_folders(tmp: Path | None = None) -> list[Path]:
    """Remove this user's trainer folders whose node process is gone; the folders removed."""
    removed = []
    for folder in Path(tmp or tempfile.gettempdir()).glob(TRAINER_PREFIX + "*"):
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
                continue
            pid = int((folder / PID_FILE).read_text())
        except (OSError, ValueError):
            continue  # no pid yet (a node starting now), or not ours to judge
        if not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def make_trainer_folder() -> Path:
    """A fresh private folder for the trainer's socket, naming this node's pid (stale ones removed first)."""
    remove_stale_trainer_folders()
    folder = Path(tempfile.mkdtemp(prefix=TRAINER_PREFIX))  # 0700: only this user reaches the socket
    (folder / PID_FILE).write_text(str(os.getpid()))
    return folder


def wait_for_trainer(socket_path: Path, trainer: subprocess.Popen, timeout_s: float) -> None:
    """Block until the warm trainer accepts connections; RuntimeError if it exits or does not listen in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if trainer.poll() is not None:
            raise RuntimeError(f"the warm trainer exited with status {trainer.returncode} before it listened")
        if socket_path.exists():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as check:
                if check.connect_ex(str(socket_path)) == 0:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"the warm trainer did not listen at {socket_path} within {timeout_s:.0f} s")


def run_supernode(command_for: Callable[[float], list[str]], env: dict[str, str], *, superlink: str,
                  reconnect_s: float = DEFAULT_RECONNECT_S,
                  on_start: Callable[[subprocess.Popen], None] | None = None) -> int:
    """Run the SuperNode (``command_for(seconds)``: its command line retrying a lost SuperLink that long) until it
    stops cleanly (0), starting it again with backoff after each failure; 1 with one line once ``reconnect_s``
    pass without a working connection. A SuperNode that ran longer than ``reconnect_s`` before it failed had a
    connection: its failure starts a new budget. ``on_start`` sees each SuperNode process."""
    failing_since: float | None = None
    backoff = 1.0
    while True:
        started = time.monotonic()
        left = reconnect_s if failing_since is None else reconnect_s - (started - failing_since)
        process = start_child(command_for(max(left, 1.0)), env)
        if on_start is not None:
            on_start(process)
        try:
            status = process.wait()
        finally:
            stop_child(process)
        if status == 0:
            return 0
        now = time.monotonic()
        if failing_since is None or now - started > reconnect_s:
            failing_since, backoff = started, 1.0
        if now - failing_since >= reconnect_s:
            print(f"fedsqueeze: error: no working connection to the SuperLink at {superlink} for {reconnect_s:.0f} s "
                  f"(--reconnect-s); the SuperNode's last lines above say why", file=sys.stderr, flush=True)
            return 1
        print(f"fedsqueeze: the SuperNode stopped (status {status}): the SuperLink is unreachable or still holds "
              f"this node's previous session; starting it again in {backoff:.0f} s", file=sys.stderr, flush=True)
        time.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_S)
