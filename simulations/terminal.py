"""The terminal belongs to the progress display.

While a command runs, everything written to the process's stdout and stderr — Flower's and Ray's log lines, the
lines Ray forwards from its workers, transformers' and Python's warnings, whatever C libraries print — goes to
``DIR/log.txt``, one timestamped line each (colour codes removed), and to the terminal too only with ``--verbose``.
The terminal keeps the progress view and fedsqueeze's own log lines (the round lines, what went wrong in plain
words). It works on file descriptors 1 and 2, so it also catches output that never passes through Python, and
child processes started meanwhile inherit the redirection.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.text import Text

from server import progress
from server.logs import strip_ansi

LOG_NAME = "log.txt"
_FD_OUT, _FD_ERR = 1, 2


def timestamped(text: str) -> str:
    """One log.txt line: local time to the millisecond, then ``text`` without colour codes."""
    return f"{datetime.now().isoformat(sep=' ', timespec='milliseconds')} {strip_ansi(text)}"


class _TerminalHandler(logging.Handler):
    """fedsqueeze's log records, printed through the progress console so a live view is not torn apart."""

    def __init__(self, console: Console, level: int) -> None:
        super().__init__(level)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, progress.ON_SCREEN, False):
            return  # the live view printed it already
        try:
            message = record.getMessage()
            prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
            self.console.print(prefix + message, markup=False, highlight=False, soft_wrap=True,
                               style="yellow" if record.levelno >= logging.WARNING else None)
        except Exception:
            self.handleError(record)


class TerminalCapture:
    """Redirect stdout and stderr to ``log_path`` for the duration of a ``with`` block; the block gets the console
    that still reaches the terminal (progress is routed there too). ``verbose`` echoes every captured line to the
    terminal as well; ``show_level`` is the lowest level of fedsqueeze's own log lines shown there."""

    def __init__(self, log_path: Path, *, verbose: bool = False, show_level: int = logging.INFO) -> None:
        self.log_path, self.verbose, self.show_level = log_path, verbose, show_level
        self.console: Console | None = None
        self._saved: dict[int, int] = {}
        self._thread: threading.Thread | None = None
        self._handler: _TerminalHandler | None = None
        self._log = None

    def __enter__(self) -> Console:
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("a", encoding="utf-8", errors="replace", buffering=1)
        except OSError as exc:
            raise ValueError(f"cannot write the run's log {self.log_path}: {exc.strerror or exc}") from exc
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = {fd: os.dup(fd) for fd in (_FD_OUT, _FD_ERR)}
        terminal = os.fdopen(os.dup(self._saved[_FD_ERR]), "w", buffering=1, encoding="utf-8", errors="replace")
        self.console = Console(file=terminal)
        read_end, write_end = os.pipe()
        for fd in (_FD_OUT, _FD_ERR):
            os.dup2(write_end, fd)
        os.close(write_end)
        self._thread = threading.Thread(target=self._pump, args=(read_end,), name="fedsqueeze-log", daemon=True)
        self._thread.start()
        if not self.verbose:  # verbose echoes fedsqueeze's own stderr lines with the rest
            self._handler = _TerminalHandler(self.console, self.show_level)
            logging.getLogger("fedsqueeze").addHandler(self._handler)
        progress.set_display(self.console)
        self._write(f"fedsqueeze: {' '.join(sys.argv)}")
        return self.console

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        progress.set_display(None)
        if self._handler is not None:
            logging.getLogger("fedsqueeze").removeHandler(self._handler)
        if error is not None:
            print(f"fedsqueeze: stopped by {type(error).__name__}: {error}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        # The pipe ends when nothing holds its write end any more; a child that outlives the run (a Ray process
        # shutting down) may hold it a little longer, and the daemon thread keeps draining it into the log.
        if self._thread is not None:
            self._thread.join(timeout=3.0)
            if not self._thread.is_alive() and self._log is not None:
                self._log.close()
        if self.console is not None:
            self.console.file.flush()

    def _write(self, text: str) -> None:
        if self._log is not None and not self._log.closed:
            self._log.write(timestamped(text) + "\n")

    def _pump(self, read_end: int) -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._line(line.decode("utf-8", errors="replace").rstrip("\r"))
            if pending:
                self._line(pending.decode("utf-8", errors="replace"))

    def _line(self, text: str) -> None:
        self._write(text)
        if self.verbose and self.console is not None:
            self.console.print(Text.from_ansi(text), soft_wrap=True)


_OWN_LINE = re.compile(r"fedsqueeze: |\bERROR\b")


@dataclass
class Streamed:
    """How a streamed command ended: its exit status and its last lines (colour codes removed)."""

    status: int
    lines: list[str]


def stream_filtered(command: list[str], env: dict[str, str], log_path: Path, *, verbose: bool = False,
                    keep: int = 400, on_start: Callable[[subprocess.Popen], None] | None = None,
                    on_line: Callable[[str], None] | None = None) -> Streamed:
    """Run ``command`` (``flwr run --stream``), every line of its output to ``log_path`` with a timestamp, and to
    the terminal only the run's own fedsqueeze lines and errors (every line with ``verbose``); its exit status and
    its last ``keep`` lines, for the caller to say how the run ended. ``on_start`` sees the process once started,
    ``on_line`` every line (colour codes removed)."""
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("a", encoding="utf-8", errors="replace", buffering=1)
    except OSError as exc:
        raise ValueError(f"cannot write the submission's log {log_path}: {exc.strerror or exc}") from exc
    tail: deque[str] = deque(maxlen=keep)
    with log, subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               encoding="utf-8", errors="replace", bufsize=1) as child:
        log.write(timestamped("fedsqueeze: " + " ".join(command)) + "\n")
        if on_start is not None:
            on_start(child)
        assert child.stdout is not None
        for line in child.stdout:
            line = line.rstrip("\n")
            log.write(timestamped(line) + "\n")
            tail.append(strip_ansi(line))
            if on_line is not None:
                on_line(tail[-1])
            if verbose or _OWN_LINE.search(tail[-1]):
                print(tail[-1], file=sys.stderr, flush=True)
        return Streamed(child.wait(), list(tail))
