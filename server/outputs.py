"""What a run leaves in its --out directory: metrics.jsonl, summary.json, adapter/ and plots/."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file and rename it into place, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(handle, "w") as out:
        json.dump(payload, out, indent=2, sort_keys=True)
        out.write("\n")
    os.replace(tmp, path)


# What a finished, stopped or resumable run leaves: a directory holding one of these is another run's.
NODE_STATE = "node-state"  # a simulation's clients keep their error-feedback residuals here (across resumes)
RUN_OUTPUTS = ("metrics.jsonl", "summary.json", "checkpoint", "samples.jsonl", "adapter", "model", NODE_STATE)
# The run's layout: what it writes as folders and as files (a name taken by the other kind fails only when written).
OUTPUT_FOLDERS = ("checkpoint", "adapter", "model", "plots", NODE_STATE)
OUTPUT_FILES = ("metrics.jsonl", "summary.json", "samples.jsonl", "log.txt")


class OutputDirError(ValueError):
    """An output directory a run cannot use, or must not write over; the message says which and why."""


def check_out_dir(out_dir: Path, *, resume: bool = False, overwrite: bool = False, deployed: bool = False) -> None:
    """Refuse ``out_dir`` before anything is written: a path that is or runs through a file, a place this process
    cannot write, or a directory holding an earlier run's outputs (``RUN_OUTPUTS``) unless the run resumes it or
    ``overwrite`` says to replace it (asking for both is refused too). Raises OutputDirError, naming the CLI's
    flags (or, for a ``deployed`` run, its run-config keys) as the ways out."""
    ways_out = ("resume=true", "overwrite=true", "out-dir") if deployed else (
        f"--resume {out_dir}", "--overwrite", "--out")
    if resume and overwrite:
        raise OutputDirError(f"{ways_out[1]} replaces a run and {ways_out[0]} continues it: choose one")
    target = out_dir.expanduser().absolute()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == target else f"runs through the file {existing}"
        raise OutputDirError(f"output directory '{out_dir}' {where}, not a directory")
    try:  # a real write: permission bits alone miss read-only mounts, and root passes them all
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        raise OutputDirError(f"output directory '{out_dir}' cannot be written ({existing}: "
                             f"{exc.strerror or exc})") from None
    for name in OUTPUT_FOLDERS:
        if (target / name).exists() and not (target / name).is_dir():
            raise OutputDirError(f"output directory '{out_dir}' holds a file '{name}' where the run writes its "
                                 f"{name}/ folder: move it away, or choose a new {ways_out[2]}")
    for name in OUTPUT_FILES:
        if (target / name).is_dir():
            raise OutputDirError(f"output directory '{out_dir}' holds a folder '{name}' where the run writes its "
                                 f"{name} file: move it away, or choose a new {ways_out[2]}")
    earlier = [name for name in RUN_OUTPUTS if (target / name).exists()]
    if earlier and not (resume or overwrite):
        raise OutputDirError(f"output directory '{out_dir}' already holds a run ({', '.join(earlier)}): continue "
                             f"it with {ways_out[0]}, replace it with {ways_out[1]}, or choose a new {ways_out[2]}")


class MetricsLog:
    """Appends one JSON line per round to ``metrics.jsonl`` and keeps the rows in memory."""

    def __init__(self, out_dir: Path, rows: list[dict[str, Any]] | None = None) -> None:
        """Start ``metrics.jsonl`` afresh, or with ``rows`` (a resumed run's rounds so far: any row written after
        the last checkpoint belongs to a round that is run again, and is dropped)."""
        self.path = out_dir / "metrics.jsonl"
        out_dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = list(rows or [])
        self.path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in self.rows))

    def append(self, row: dict[str, Any]) -> None:
        """Record one round's metrics and flush it to disk at once."""
        self.rows.append(row)
        with self.path.open("a") as out:
            out.write(json.dumps(row, sort_keys=True) + "\n")


COUNTS = ("examples", "response_tokens")  # held-out sizes, not scores: not plotted


def plot_metrics(rows: list[dict[str, Any]], metrics: list[str], base: dict[str, float], out_dir: Path
                 ) -> list[Path]:
    """PNG plots of each held-out metric in ``metrics`` against round and against cumulative bytes sent up
    (``<metric>_vs_round.png``, ``<metric>_vs_bytes.png``), from the rounds that were evaluated; returns the
    paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    cumulative_mb, total = {0: 0.0}, 0.0
    for row in rows:
        total += row["bytes_up"]
        cumulative_mb[row["round"]] = total / 1e6
    paths = []
    for metric in (m for m in metrics if m not in COUNTS and m in base):
        scored = [(0, base[metric])] + [(row["round"], row[metric]) for row in rows if metric in row]
        rounds = [r for r, _ in scored]
        values = [v for _, v in scored]
        for name, xs, label in (("round", rounds, "round"),
                                ("bytes", [cumulative_mb[r] for r in rounds], "MB sent by clients (cumulative)")):
            fig, ax = plt.subplots(figsize=(5, 3.5))
            ax.plot(xs, values, marker="o")
            ax.set_xlabel(label)
            ax.set_ylabel(f"held-out {metric}")
            ax.grid(alpha=0.3)
            fig.tight_layout()
            path = plots_dir / f"{metric}_vs_{name}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            paths.append(path)
    return paths
