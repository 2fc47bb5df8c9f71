"""What ``fedsqueeze node`` runs: its warm trainer's private folder, and a SuperNode that keeps (re)connecting.

The trainer's Unix socket lives in a private temporary folder (0700) holding the node's pid; a node that was
SIGKILLed cannot remove it, so every node removes, on start, such folders of this user whose node is gone.

Flower's SuperNode gives up in two ways that an operator should not have to watch for: it exits at once when the
SuperLink still holds its previous session (a node restarted within the ~20 s the SuperLink takes to let a dead
node go: "Failed to activate SuperNode"; an unregistered key reads the same), and it retries an unreachable
SuperLink for as long as it is told (``--max-wait-time``; without end by default). ``run_supernode`` gives it the
node's reconnection budget, reads its output as it passes, and starts it again with backoff after a quick failure,
until the budget is spent: then one line and a non-zero exit.
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
STABLE_S = 60.0  # a SuperNode that ran this long before it failed had been working: its failure is a new one


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


class _Watch:
    """What a SuperNode's output said about how it ended."""

    GAVE_UP = "Giving up reconnection"  # Flower: its retry budget (--max-wait-time) ran out
    TLS_FAILED = "SSL/TLS handshake error detected"

    def __init__(self) -> None:
        self.gave_up = self.tls_failed = False

    def line(self, text: str) -> None:
        """Note one line of the SuperNode's output."""
        self.gave_up |= self.GAVE_UP in text
        self.tls_failed |= self.TLS_FAILED in text


def run_supernode(command_for: Callable[[float], list[str]], env: dict[str, str], *, superlink: str,
                  reconnect_s: float = DEFAULT_RECONNECT_S) -> int:
    """Run the SuperNode (``command_for(seconds)``: its command line, retrying a lost SuperLink that long) until it
    stops cleanly (0). When it fails it is started again with backoff, unless its own retries already ran out
    (Flower retried the SuperLink for ``reconnect_s``) or the TLS handshake failed, which waiting does not fix;
    quick failures (the SuperLink still holding this node's previous session, or not knowing its key) are retried
    for ``reconnect_s`` from the first of them. Each way out is one line and status 1."""
    streak_start: float | None = None
    backoff = 1.0
    while True:
        watch = _Watch()
        started = time.monotonic()
        process = start_child(command_for(reconnect_s), env, watch=watch.line)
        try:
            status = process.wait()
        finally:
            stop_child(process)
        if status == 0:
            return 0
        now = time.monotonic()
        if watch.tls_failed:
            return _give_up(f"the TLS handshake with the SuperLink at {superlink} failed (does --root-certificates "
                            "still hold the CA that signed its certificate?)")
        if watch.gave_up:
            return _give_up(f"no working connection to the SuperLink at {superlink} for {reconnect_s:.0f} s "
                            "(--reconnect-s)")
        if streak_start is None or now - started >= STABLE_S:  # it had been running: a new failure
            streak_start, backoff = started, 1.0
        left = reconnect_s - (now - streak_start)
        if left <= 0:
            return _give_up(f"the SuperLink at {superlink} kept refusing this node for {reconnect_s:.0f} s "
                            "(--reconnect-s): is its key registered there (fedsqueeze register-node)?")
        delay = min(backoff, left)
        print(f"fedsqueeze: the SuperNode stopped (status {status}): the SuperLink is unreachable, still holds this "
              f"node's previous session, or does not know its key; starting it again in {delay:.0f} s",
              file=sys.stderr, flush=True)
        time.sleep(delay)
        backoff = min(backoff * 2, MAX_BACKOFF_S)


def _give_up(reason: str) -> int:
    print(f"fedsqueeze: error: {reason}; the SuperNode's last lines above say more", file=sys.stderr, flush=True)
    return 1
