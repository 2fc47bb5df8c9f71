"""``fedsqueeze report DIR``: what a run did, read back from its output directory — finished (``summary.json``),
stopped or failed part-way (the checkpoint manifest and ``metrics.jsonl``), or resumed — and its plots drawn
again."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.checkpoint import DIRECTORY, MANIFEST
from server.outputs import plot_metrics


class ReportError(ValueError):
    """A directory that holds no readable run."""


@dataclass
class RunRecord:
    """What a run directory says: its settings, base and latest held-out metrics, and the rounds it recorded."""

    directory: Path
    state: str  # "finished" or "stopped after round N"
    settings: dict[str, Any]
    base: dict[str, float]
    latest: dict[str, float]
    rows: list[dict[str, Any]]
    planned_rounds: int | None
    wall_s: float | None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"cannot read {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is damaged: not JSON ({exc.msg} at line {exc.lineno})") from exc


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"cannot read {path}: {exc}") from exc
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path} is damaged: line {number} is not JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or not isinstance(row.get("round"), int):
            raise ReportError(f"{path} is damaged: line {number} is not a round's metrics")
        rows.append(row)
    return rows


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ReportError(f"{where} is damaged: expected an object, found {type(value).__name__}")
    return value


def read_run(directory: Path) -> RunRecord:
    """The run in ``directory``; ReportError naming the problem when there is none or its files are damaged."""
    if not directory.is_dir():
        raise ReportError(f"{directory} is not a run directory (it does not exist)" if not directory.exists()
                          else f"{directory} is not a directory")
    rows = _read_rows(directory / "metrics.jsonl")
    summary_path, manifest_path = directory / "summary.json", directory / DIRECTORY / MANIFEST
    if summary_path.exists():
        summary = _mapping(_read_json(summary_path), str(summary_path))
        metric = summary.get("metric")
        base = {k[:-5]: v for k, v in summary.items() if k.endswith("_base") and k != "metric_base"}
        latest = {k[:-6]: v for k, v in summary.items() if k.endswith("_final") and k != "metric_final"}
        if not isinstance(metric, str) or metric not in base:
            raise ReportError(f"{summary_path} is damaged: it names no metric with a base value")
        return RunRecord(directory, "finished", summary, base, latest, rows, summary.get("rounds"),
                         summary.get("wall_s"))
    if manifest_path.exists():
        manifest = _mapping(_read_json(manifest_path), str(manifest_path))
        try:
            config = _mapping(manifest["run_config"], f"{manifest_path} run_config")
            base = _mapping(manifest["base"], f"{manifest_path} base")
            latest = _mapping(manifest.get("current") or {}, f"{manifest_path} current")
            last = int(manifest["round"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportError(f"{manifest_path} is damaged: {exc!r} is missing or mistyped") from exc
        rows = rows or [r for r in manifest.get("rows", []) if isinstance(r, dict)]
        planned = config.get("num-server-rounds")
        return RunRecord(directory, f"stopped after round {last}", {"run_config": config}, base, latest or base,
                         rows, planned if isinstance(planned, int) else None, manifest.get("wall_s"))
    if (directory / "log.txt").exists() or rows:
        raise ReportError(f"{directory} holds no completed round (no summary.json, no checkpoint); "
                          f"see {directory / 'log.txt'}")
    raise ReportError(f"{directory} holds no fedsqueeze run (no summary.json, checkpoint or metrics.jsonl)")


def _mb(value: float) -> str:
    return f"{value / 1e6:.3f} MB"


def _ratio(dense: float, sent: float) -> str:
    return f"{dense / sent:.3g}x compression against dense fp32" if sent else "nothing sent"


def _setting(record: RunRecord, summary_key: str, config_key: str, default: str = "?") -> Any:
    if summary_key in record.settings:
        return record.settings[summary_key]
    return record.settings.get("run_config", {}).get(config_key, default)


def summarise(record: RunRecord) -> dict[str, Any]:
    """The report's figures as one JSON-ready mapping."""
    rows = record.rows
    metric = record.settings.get("metric") or next(iter(record.base), "?")
    up = sum(r.get("bytes_up", 0) for r in rows)
    down = sum(r.get("bytes_down", 0) for r in rows)
    dense_up = sum(c.get("dense_fp32_bytes_up", 0) for r in rows for c in r.get("clients", []))
    dense_down = sum(c.get("dense_fp32_bytes_down", 0) for r in rows for c in r.get("clients", []))
    slowest = [r["train_s_max"] for r in rows if isinstance(r.get("train_s_max"), int | float)]
    return {
        "directory": str(record.directory), "state": record.state,
        "rounds_done": len(rows), "rounds_planned": record.planned_rounds,
        "preset": _setting(record, "preset", "preset"), "model": _setting(record, "model", "model", "(preset's)"),
        "dataset": _setting(record, "dataset", "dataset", "(preset's)"), "codec": _setting(record, "codec", "codec"),
        "num_clients": _setting(record, "num_clients", "num-clients"),
        "metric": metric, "metric_base": record.base.get(metric), "metric_latest": record.latest.get(metric),
        "bytes_up": up, "bytes_down": down, "dense_fp32_bytes_up": dense_up, "dense_fp32_bytes_down": dense_down,
        "clients_failed": sum(r.get("clients_failed", 0) for r in rows),
        "updates_rejected": sum(r.get("updates_rejected", 0) for r in rows),
        "clients_refused": sum(r.get("clients_refused", 0) for r in rows),
        "rounds_skipped": sum(not r.get("applied", True) for r in rows),
        "stragglers": sum(len(r.get("stragglers", [])) for r in rows),
        "median_round_s": statistics.median(r["round_s"] for r in rows) if rows and all(
            "round_s" in r for r in rows) else None,
        "median_slowest_training_s": statistics.median(slowest) if slowest else None,
        "wall_s": record.wall_s,
    }


def render(figures: dict[str, Any]) -> str:
    """The report as lines of plain text."""
    def number(value: Any, digits: int = 4) -> str:
        return f"{value:.{digits}g}" if isinstance(value, int | float) and math.isfinite(value) else "?"

    planned = figures["rounds_planned"]
    lines = [
        f"run        {figures['directory']} ({figures['state']}; {figures['rounds_done']} of "
        f"{planned if planned is not None else '?'} rounds recorded)",
        f"task       preset {figures['preset']}, model {figures['model']}, data {figures['dataset']}, "
        f"{figures['num_clients']} clients",
        f"codec      {figures['codec']}",
        f"{figures['metric']:<10} {number(figures['metric_base'])} (base) -> {number(figures['metric_latest'])}"
        + (" (final)" if figures["state"] == "finished" else " (latest)"),
        f"bytes      up {_mb(figures['bytes_up'])} ({_ratio(figures['dense_fp32_bytes_up'], figures['bytes_up'])}), "
        f"down {_mb(figures['bytes_down'])} ({_ratio(figures['dense_fp32_bytes_down'], figures['bytes_down'])})",
        f"problems   {figures['clients_failed']} client failure(s), {figures['updates_rejected']} rejected "
        f"update(s), {figures['clients_refused']} refusal(s) by a node's privacy floor, "
        f"{figures['rounds_skipped']} round(s) skipped, {figures['stragglers']} straggler(s)",
        f"time       {number(figures['wall_s'], 4)} s in all; median round {number(figures['median_round_s'], 3)} s, "
        f"median slowest training {number(figures['median_slowest_training_s'], 3)} s",
    ]
    return "\n".join(lines)


def report(directory: Path, *, plots: bool = True) -> tuple[dict[str, Any], list[Path]]:
    """Read the run in ``directory``, draw its plots again (into ``directory/plots``), return figures and plots."""
    record = read_run(directory)
    figures = summarise(record)
    drawn: list[Path] = []
    if plots and record.rows:
        metric = figures["metric"]
        names = [metric, *(k for k in record.base if k != metric)]
        try:
            drawn = plot_metrics(record.rows, names, record.base, directory)
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportError(f"{directory / 'metrics.jsonl'} is damaged: cannot plot it ({exc!r})") from exc
        except OSError as exc:
            raise ReportError(f"cannot write plots under {directory / 'plots'}: {exc.strerror or exc}") from exc
    return figures, drawn
