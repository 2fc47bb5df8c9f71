"""What a person sees while a run goes: on a terminal one live view (round i/N, clients done of sampled, the
latest score, bytes up and down so far, elapsed and ETA) and one line per finished round; plain log lines
elsewhere (files, CI, a deployed ServerApp's log stream). The same lines always go to the log as well."""

from __future__ import annotations

import logging
import statistics
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

log = logging.getLogger("fedsqueeze")
_display: Console | None = None
ON_SCREEN = "fedsqueeze_on_screen"  # a log record's attribute: the progress view already showed this line


def set_display(console: Console | None) -> None:
    """Send progress to ``console`` (the real terminal, while the CLI sends everything else to ``log.txt``);
    None: back to stderr as it is."""
    global _display
    _display = console


def display() -> Console | None:
    """The console set by ``set_display``, if any."""
    return _display


class RoundProgress:
    """A live progress view on a terminal; plain log lines otherwise."""

    def __init__(self, total_rounds: int) -> None:
        self.console = _display or Console(stderr=True)
        self.total_rounds = total_rounds
        self._stage, self._clients, self._scored = "starting", "", ""
        self._bytes_up = self._bytes_down = 0
        self._round_started: float | None = None
        self._round_seconds: list[float] = []
        self._done = 0
        self._progress: Progress | None = None
        self._shown = {ON_SCREEN: False}
        if self.console.is_terminal:
            self._progress = Progress(TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(),
                                      TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                      TextColumn("{task.fields[eta]}"), console=self.console, transient=False,
                                      # Python's own sys.stdout/stderr stay as they are (log.txt, when captured)
                                      redirect_stdout=False, redirect_stderr=False)
            self._task = self._progress.add_task("rounds", total=total_rounds, status="starting", eta="")
            self._progress.start()
            self._shown = {ON_SCREEN: True}  # the view shows these lines; the log keeps them too

    def _refresh(self) -> None:
        if self._progress is None:
            return
        parts = [self._stage, self._clients, self._scored]
        if self._bytes_up or self._bytes_down:
            parts.append(f"{self._bytes_up / 1e6:.2f} MB up, {self._bytes_down / 1e6:.2f} MB down")
        self._progress.update(self._task, status=" · ".join(p for p in parts if p), eta=self._eta())

    def _eta(self) -> str:
        """Time left: the median round so far times the rounds left (none before a round has finished)."""
        if not self._round_seconds:
            return ""
        left = statistics.median(self._round_seconds) * (self.total_rounds - self._done)
        minutes, seconds = divmod(round(left), 60)
        return f"eta {minutes // 60}:{minutes % 60:02d}:{seconds:02d}"

    def begin_round(self, round_id: int, sampled: int) -> None:
        """A round starts: it trains on ``sampled`` clients."""
        self._round_started = time.monotonic()
        self.status(f"round {round_id}: training on {sampled} clients")

    def status(self, text: str) -> None:
        """Show what the coordinator is doing now."""
        self._stage, self._clients = text, ""
        self._refresh()
        log.info(text, extra=self._shown)

    def clients(self, done: int, sampled: int) -> None:
        """Show how many of the round's sampled clients have replied."""
        self._clients = f"{done}/{sampled} clients replied"
        self._refresh()

    def round_done(self, round_id: int, line: str, *, scored: str = "", bytes_up: int = 0, bytes_down: int = 0
                   ) -> None:
        """Advance by one round, print the round's line, and add its score and bytes to the live view."""
        self._bytes_up += bytes_up
        self._bytes_down += bytes_down
        self._done = round_id
        if self._round_started is not None:
            self._round_seconds.append(time.monotonic() - self._round_started)
            self._round_started = None
        self._scored = scored
        text = f"round {round_id}/{self.total_rounds}: {line}"
        if self._progress is not None:
            self._progress.update(self._task, completed=round_id)
            self._stage, self._clients = "", ""
            self._refresh()
            self._progress.console.print(text, markup=False, highlight=False)
        log.info(text, extra=self._shown)

    def close(self) -> None:
        """Stop the live display."""
        if self._progress is not None:
            self._progress.stop()
