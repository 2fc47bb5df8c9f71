"""Child processes that live and die with the ``fedsqueeze`` command that started them.

``fedsqueeze coordinator`` runs ``flower-superlink``; ``fedsqueeze node`` runs a warm trainer and a SuperNode. Each
runs under ``simulations/tree_guard.py``, in a session of its own: the guard learns from the kernel when this
process dies, however it dies (Linux parent-death signal, which the guard asks for itself), and then stops every
process below it — Flower's SuperExec, ServerApp and per-message ClientApp processes included — so that not even a
SIGKILLed ``fedsqueeze`` leaves a SuperLink listening. SIGTERM, SIGINT and SIGHUP to this process stop every
child the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

from simulations.tree_guard import STOP_GRACE_S


def start_child(command: list[str], env: dict[str, str], watch: Callable[[str], None] | None = None
                ) -> subprocess.Popen:
    """Start ``command`` under the tree guard, in a session of its own, tied to this process's life; the command
    is printed first (``+``). With ``watch``, its output passes through this process line by line (to stdout) and
    each line is handed to ``watch`` as well."""
    print("+ " + " ".join(command), flush=True)
    guarded = [sys.executable, "-m", "simulations.tree_guard", "--parent-pid", str(os.getpid()), "--", *command]
    if watch is None:
        return subprocess.Popen(guarded, env=env, start_new_session=True)
    process = subprocess.Popen(guarded, env=env, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", bufsize=1)

    def relay() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            watch(line)

    threading.Thread(target=relay, name="fedsqueeze-child-output", daemon=True).start()
    return process


def stop_child(process: subprocess.Popen, grace_s: float = STOP_GRACE_S + 10.0) -> None:
    """SIGTERM to the guard (which stops everything below it), SIGKILL to its session after ``grace_s``; reaped.
    Signals to this process wait until it is done (a second Ctrl-C does not cut the clean-up short)."""
    with _signals_held():
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


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    signums = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    saved = {signum: signal.signal(signum, signal.SIG_IGN) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


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
