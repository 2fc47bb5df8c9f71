"""Child processes that live and die with the ``fedsqueeze`` command that started them.

``fedsqueeze coordinator`` runs ``flower-superlink``; ``fedsqueeze node`` runs a warm trainer and a SuperNode. Each
runs under ``simulations/tree_guard.py``, in a session of its own: the guard learns from the kernel when this
process dies, however it dies (Linux parent-death signal), and then stops every process below it — Flower's
SuperExec, ServerApp and per-message ClientApp processes included — so that not even a SIGKILLed ``fedsqueeze``
leaves a SuperLink listening. SIGTERM, SIGINT and SIGHUP to this process stop every child the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

from simulations.tree_guard import STOP_GRACE_S

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux), and at once if it already has."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def start_child(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start ``command`` under the tree guard, in a session of its own, tied to this process's life; the command
    is printed first (``+``)."""
    print("+ " + " ".join(command), flush=True)
    parent = os.getpid()
    guarded = [sys.executable, "-m", "simulations.tree_guard", "--", *command]
    return subprocess.Popen(guarded, env=env, start_new_session=True,
                            preexec_fn=lambda: _die_with_parent(parent))


def stop_child(process: subprocess.Popen, grace_s: float = STOP_GRACE_S + 5.0) -> None:
    """SIGTERM to the guard (which stops everything below it), SIGKILL to its session after ``grace_s``; reaped."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):  # whatever of the session is left
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class Stopped(Exception):
    """This command received SIGTERM, SIGINT or SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM, SIGINT and SIGHUP into ``Stopped`` inside the block (so ``finally`` clauses stop children)."""
    def stop(signum: int, _frame: object) -> None:
        raise Stopped(signum)

    saved = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
