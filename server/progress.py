"""Progress on the terminal while a run goes: round i/N, clients done, loss, bytes."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

log = logging.getLogger("fedsqueeze")


class RoundProgress:
    """A rich progress bar on a terminal; plain log lines otherwise (files, CI, flwr log streams)."""

    def __init__(self, total_rounds: int) -> None:
        self.console = Console(stderr=True)
        self.total_rounds = total_rounds
        self._progress: Progress | None = None
        if self.console.is_terminal:
            self._progress = Progress(TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(),
                                      TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                      console=self.console, transient=False)
            self._task = self._progress.add_task("rounds", total=total_rounds, status="starting")
            self._progress.start()

    def status(self, text: str) -> None:
        """Show what the coordinator is doing now."""
        if self._progress is not None:
            self._progress.update(self._task, status=text)
        else:
            log.info(text)

    def round_done(self, round_id: int, line: str) -> None:
        """Advance the bar by one round and print the round's summary line."""
        if self._progress is not None:
            self._progress.update(self._task, completed=round_id, status=line)
            self._progress.console.print(f"round {round_id}/{self.total_rounds}: {line}")
        else:
            log.info("round %d/%d: %s", round_id, self.total_rounds, line)

    def close(self) -> None:
        """Stop the live display."""
        if self._progress is not None:
            self._progress.stop()
