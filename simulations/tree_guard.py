"""``python -m simulations.tree_guard [--parent-pid PID] -- COMMAND ...``: run COMMAND and take every process it
starts down with it.

Flower's SuperLink starts a SuperExec in a process group of its own, which starts each ServerApp; its graceful stop
waits for open log streams, so a SIGTERM to the SuperLink alone can leave it, or its children, running and
listening. A SuperNode starts a process per message the same way. ``fedsqueeze coordinator`` and ``fedsqueeze node``
therefore run such commands under this guard, which:

- is told by the kernel (Linux parent-death signal) when the ``fedsqueeze`` command that started it (``PID``)
  dies, however it dies, and stops at once if that happened before it could ask;
- adopts every orphaned descendant (Linux child subreaper), so nothing escapes to init;
- whenever it stops — asked to, its parent gone, or COMMAND exited — sends SIGTERM to every process below it, waits
  ``STOP_GRACE_S``, SIGKILLs what is left, reaps them all, and exits with COMMAND's status (128 + signal when it
  was stopped).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36
STOP_GRACE_S = 10.0


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _children_of() -> dict[int, list[int]]:
    """Every live process's children, from /proc (zombies left out: they only need reaping)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(root: int) -> list[int]:
    """The live processes below ``root``, parents before their children."""
    children, found, stack = _children_of(), [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _reap() -> None:
    """Collect every child of this process that has exited (adopted orphans included)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _wait(child: subprocess.Popen) -> int:
    """The child's exit status, reaping adopted orphans meanwhile (so none lingers as a zombie)."""
    while True:
        try:
            return child.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            _reap_others(child.pid)


def _reap_others(keep: int) -> None:
    """Collect exited children other than ``keep`` (whose status ``Popen.wait`` must still read): peek at the
    next exited child without reaping it, and reap it only when it is not ``keep``."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == keep:
            return
        os.waitpid(info.si_pid, 0)


def stop_tree(grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to every process below this one, SIGKILL after ``grace_s`` to those left; all reaped."""
    _signal_all(descendants(os.getpid()), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap()
        if not descendants(os.getpid()):
            return
        time.sleep(0.1)
    _signal_all(descendants(os.getpid()), signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while descendants(os.getpid()) and time.monotonic() < deadline:
        _reap()
        time.sleep(0.05)
    _reap()


def _parse(argv: list[str]) -> tuple[int | None, list[str]]:
    parent = None
    if argv[:1] == ["--parent-pid"] and len(argv) > 1 and argv[1].isdigit():
        parent, argv = int(argv[1]), argv[2:]
    return parent, argv[1:] if argv[:1] == ["--"] else argv


def main(argv: list[str]) -> int:
    """Run the command in ``argv`` under the guard; its exit status."""
    parent, command = _parse(argv)
    if not command:
        print("usage: python -m simulations.tree_guard [--parent-pid PID] -- COMMAND ...", file=sys.stderr)
        return 2

    def stop(signum: int, _frame: object) -> None:
        raise _Stop(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        if parent is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        return 128 + signal.SIGTERM  # the command that started us died before we could ask to be told
    try:
        child = subprocess.Popen(command)
        status = _wait(child)
        status = 128 - status if status < 0 else status  # killed by a signal: the shell's convention
    except _Stop as exc:
        status = 128 + exc.signum
    except OSError as exc:
        print(f"fedsqueeze: error: cannot start {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        status = 127
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # the clean-up below is not to be cut short
        stop_tree()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
