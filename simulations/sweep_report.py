"""A sweep's results read back from its run directories: per configuration the mean and a 95 % confidence interval
over seeds (Student's t, as ``scipy.stats.t.interval`` gives it) of every final metric, bytes up and down, wall
time, bytes- and rounds-to-target, and every run's problems (failed, rejected or refused clients, skipped rounds,
runs that did not finish) — a configuration with any is marked, never averaged in silently. Writes ``sweep.json``,
``sweep.md`` and ``plots/`` (each metric against rounds and against cumulative bytes up, mean with the interval as a
band, one line per configuration)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.outputs import COUNTS
from simulations.report import ReportError, RunRecord, read_run, summarise

CONFIDENCE = 0.95
SWEEP_FILE = "sweep.json"
TABLE_FILE = "sweep.md"
LM_EVAL_FILE = "lm-eval.json"
PROBLEMS = ("clients_failed", "updates_rejected", "clients_refused", "rounds_skipped")


@dataclass
class RunResult:
    """What one run of the sweep gave: its state, final metrics, bytes, curve and problems."""

    name: str
    seed: int
    directory: Path
    state: str  # "finished", "stopped after round N", "failed: ...", "not finished: ..." or "not run"
    metric: str | None = None
    higher_is_better: bool = True
    final: dict[str, float] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    wall_s: float | None = None
    problems: dict[str, int] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)  # round, mb_up (cumulative) and the metrics scored
    lm_eval: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        """Whether the run completed every round (its figures count in the means)."""
        return self.state == "finished"


def interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The ``confidence`` interval of the mean of ``values`` from Student's t with n − 1 degrees of freedom (what
    ``scipy.stats.t.interval(confidence, n - 1, loc=mean, scale=sem)`` gives); None for fewer than two values, the
    mean itself when they are all equal."""
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return None  # a diverged run's infinite perplexity has no interval
    from scipy import stats

    mean = sum(values) / len(values)
    sem = float(stats.sem(values))
    if sem == 0.0:
        return mean, mean
    low, high = stats.t.interval(confidence, len(values) - 1, loc=mean, scale=sem)
    return float(low), float(high)


def estimate(values: list[float]) -> dict[str, Any]:
    """Mean, 95 % interval (None below two values), n and the values themselves."""
    if not values:
        return {"n": 0, "mean": None, "ci95": None, "values": []}
    ci = interval(values)
    return {"n": len(values), "mean": sum(values) / len(values), "ci95": list(ci) if ci else None,
            "values": values}


def _scores(record: RunRecord, keys: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in keys.items()  # NaN (nothing scored) is left out; a diverged run's inf is kept
            if k not in COUNTS and isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)}


def read_result(name: str, seed: int, directory: Path) -> RunResult:
    """The run in ``directory`` as the sweep counts it (a missing or unreadable run is "not run" or "failed")."""
    failure = directory / "sweep-failure.txt"
    try:
        record = read_run(directory)
    except ReportError:
        if failure.exists():
            return RunResult(name, seed, directory, f"failed: {failure.read_text().strip()}")
        started = (directory / "log.txt").exists()
        return RunResult(name, seed, directory, "not finished: no round completed yet" if started else "not run")
    figures = summarise(record)
    state = record.state
    if state != "finished" and failure.exists():
        state = f"failed after {len(record.rows)} round(s): {failure.read_text().strip()}"
    metric = figures["metric"]
    base = _scores(record, record.base)
    curve: list[dict[str, float]] = [{"round": 0, "mb_up": 0.0, **base}]
    total = 0
    for row in record.rows:
        total += row.get("bytes_up", 0)
        scored = _scores(record, {k: v for k, v in row.items() if k in base})
        if scored:
            curve.append({"round": row["round"], "mb_up": total / 1e6, **scored})
    lm_eval = None
    if (directory / LM_EVAL_FILE).exists():
        try:
            lm_eval = json.loads((directory / LM_EVAL_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            lm_eval = {"error": f"{directory / LM_EVAL_FILE} is damaged"}
    return RunResult(name, seed, directory, state, metric, bool(record.settings.get("higher_is_better", True)),
                     _scores(record, record.latest), figures["bytes_up"], figures["bytes_down"], record.wall_s,
                     {k: int(figures[k]) for k in PROBLEMS if figures.get(k)}, curve, lm_eval)


def to_target(result: RunResult, target: float) -> tuple[int, float] | None:
    """(rounds, MB sent up) until the first scored round whose primary metric is at least as good as ``target``;
    None when no round reached it."""
    for point in result.curve[1:]:
        value = point.get(result.metric or "")
        if value is not None and (value >= target if result.higher_is_better else value <= target):
            return int(point["round"]), point["mb_up"]
    return None


def _lm_eval_scores(result: RunResult) -> dict[str, float]:
    scores: dict[str, float] = {}
    for side in ("base", "adapter"):
        for task, metrics in ((result.lm_eval or {}).get(side) or {}).items():
            for name, value in metrics.items():
                if isinstance(value, int | float) and not name.endswith("_stderr"):
                    scores[f"lm-eval {side} {task} {name}"] = float(value)
    return scores


def summarise_configuration(name: str, results: list[RunResult], target: float | None, out: Path
                            ) -> dict[str, Any]:
    """One configuration's row: estimates over its finished runs, and every run's state and problems (run
    directories relative to ``out``)."""
    done = [r for r in results if r.finished]
    metric = next((r.metric for r in done if r.metric), None)
    names = sorted({k for r in done for k in r.final})
    reached = [hit for r in done if target is not None and (hit := to_target(r, target)) is not None]
    problem_runs = [{"seed": r.seed, "state": r.state, **r.problems} for r in results
                    if r.problems or not r.finished]
    lm_names = sorted({k for r in done for k in _lm_eval_scores(r)})
    return {
        "name": name, "runs": len(results), "finished": len(done), "metric": metric,
        "higher_is_better": done[0].higher_is_better if done else None,
        "final": {k: estimate([r.final[k] for r in done if k in r.final]) for k in names},
        "mb_up": estimate([r.bytes_up / 1e6 for r in done]),
        "mb_down": estimate([r.bytes_down / 1e6 for r in done]),
        "wall_s": estimate([r.wall_s for r in done if r.wall_s is not None]),
        "target_reached": len(reached) if target is not None else None,
        "rounds_to_target": estimate([float(rounds) for rounds, _ in reached]),
        "mb_to_target": estimate([mb for _, mb in reached]),
        "lm_eval": {k: estimate([s[k] for r in done if k in (s := _lm_eval_scores(r))]) for k in lm_names},
        "problem_runs": problem_runs,
        "seeds": [{"seed": r.seed, "state": r.state, "directory": str(r.directory.relative_to(out)),
                   "final": r.final,
                   "mb_up": r.bytes_up / 1e6, "wall_s": r.wall_s, "problems": r.problems} for r in results],
    }


def target_value(target: str | float | None, rows: dict[str, dict[str, Any]]) -> tuple[float | None, str]:
    """The target's value and where it comes from: a number as given, or a configuration's mean final primary
    metric (None while that configuration has no finished run)."""
    if target is None:
        return None, "none"
    if isinstance(target, float):
        return target, "given"
    row = rows.get(target)
    if row is None or not row["metric"] or row["final"].get(row["metric"], {}).get("mean") is None:
        return None, f"configuration '{target}' has no finished run yet"
    return float(row["final"][row["metric"]]["mean"]), f"mean final {row['metric']} of '{target}'"


def paired_difference(results: list[RunResult], reference: list[RunResult]) -> dict[str, Any]:
    """The primary metric's difference to the reference configuration, seed by seed (both runs finished), with
    its Student's t interval: a paired comparison, far tighter than two separate intervals when seeds move both
    (each seed draws its own held-out words)."""
    theirs = {r.seed: r for r in reference if r.finished}
    pairs = [(r.final[r.metric], theirs[r.seed].final[r.metric]) for r in results
             if r.finished and r.metric and r.seed in theirs and r.metric in r.final
             and r.metric in theirs[r.seed].final]
    return estimate([mine - other for mine, other in pairs])


def collect(out: Path, plan_record: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every configuration's row (in the plan's order), the target and the plan, as written to sweep.json (run
    directories are relative to ``out``)."""
    by_name: dict[str, list[RunResult]] = {}
    for run in runs:
        by_name.setdefault(run["name"], []).append(read_result(run["name"], run["seed"], out / run["directory"]))
    untargeted = {name: summarise_configuration(name, results, None, out) for name, results in by_name.items()}
    value, source = target_value(plan_record.get("target"), untargeted)
    rows = {name: summarise_configuration(name, results, value, out) for name, results in by_name.items()}
    reference = plan_record.get("target")
    if isinstance(reference, str) and reference in by_name:
        for name, row in rows.items():
            row["paired_vs_target"] = paired_difference(by_name[name], by_name[reference])
    return {"plan": plan_record, "confidence": CONFIDENCE, "interval": "Student's t over seeds (scipy.stats.t)",
            "target": {"value": value, "from": source, "metric": next(
                (r["metric"] for r in rows.values() if r["metric"]), None)},
            "configurations": list(rows.values()), "runs": runs}


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.{digits}g}" if math.isfinite(value) else ("∞" if value > 0 else "-∞")


def mean_and_half_width(mean: float, half: float, digits: int = 4) -> str:
    """``mean ± half`` as results are reported: the half-width to two significant digits and the mean to the same
    decimal place (``21.7 ± 4.0``, ``2.1430 ± 0.0033``); a half-width that is rounding noise next to the mean (the
    same value on every seed) is ``± 0``; very large or small numbers fall back to ``digits`` significant digits."""
    if not (math.isfinite(mean) and math.isfinite(half)):
        return f"{_number(mean, digits)} ± {_number(half, 2)}"
    if half <= 1e-9 * abs(mean):
        return f"{_number(mean, digits)} ± 0"
    decimals = max(0, 1 - math.floor(math.log10(half)))
    if decimals > 6 or abs(mean) >= 1e7:
        return f"{_number(mean, digits)} ± {_number(half, 2)}"
    return f"{mean:.{decimals}f} ± {half:.{decimals}f}"


def estimate_text(estimate_: dict[str, Any] | None, digits: int = 4) -> str:
    """An estimate (``estimate``) as a table cell: mean ± half-width of its interval, ``mean (n=1)`` for a single
    run, ``–`` for none."""
    if not estimate_ or estimate_.get("mean") is None:
        return "–"
    mean, ci = estimate_["mean"], estimate_.get("ci95")
    if not ci:
        return f"{_number(mean, digits)} (n={estimate_['n']})"
    return mean_and_half_width(mean, (ci[1] - ci[0]) / 2, digits)


def _problem_text(run: dict[str, Any]) -> str:
    parts = [f"{run[k]} {k.replace('_', ' ')}" for k in PROBLEMS if run.get(k)]
    if run["state"] != "finished":
        parts.insert(0, run["state"])
    return f"seed {run['seed']}: " + ", ".join(parts)


def render_markdown(document: dict[str, Any]) -> str:
    """sweep.md: one table row per configuration (mean ± half-width of the 95 % interval over seeds), then every
    run with problems, listed by configuration."""
    rows = document["configurations"]
    metric = document["target"]["metric"] or "metric"
    others = sorted({k for r in rows for k in r["final"]} - {metric})
    target = document["target"]
    lines = [f"# Sweep: {len(rows)} configuration(s) × seeds {document['plan']['seeds']}"
             + (f", protocol `{document['plan']['protocol']}`" if document["plan"].get("protocol") else ""), "",
             f"Mean ± half-width of the {int(CONFIDENCE * 100)} % confidence interval over seeds (Student's t). "
             f"Target: {_number(target['value'])} ({target['from']})"
             + (f"; the paired column is each seed's {metric} minus the target configuration's on the same seed "
                "(same held-out words), mean and interval over seeds" if any("paired_vs_target" in r for r in rows)
                else "") + ". ⚠ marks a configuration with a run that "
             "failed, did not finish, or had failed, rejected or refused clients (listed below); its means are over "
             "its finished runs only.", ""]
    paired = any("paired_vs_target" in r for r in rows)
    header = ["configuration", "runs", f"final {metric}",
              *([f"{metric} − target's, paired by seed"] if paired else []), *others, "MB up", "MB down",
              "rounds to target", "MB up to target", "wall s"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        marker = " ⚠" if row["problem_runs"] else ""
        reached = ("–" if row["target_reached"] is None else
                   f"{estimate_text(row['rounds_to_target'], 3)} ({row['target_reached']}/{row['finished']})")
        cells = [f"{row['name']}{marker}", f"{row['finished']}/{row['runs']}",
                 estimate_text(row["final"].get(metric, {})),
                 *([estimate_text(row.get("paired_vs_target", {}), 3)] if paired else []),
                 *(estimate_text(row["final"].get(k, {})) for k in others),
                 estimate_text(row["mb_up"]), estimate_text(row["mb_down"]), reached,
                 estimate_text(row["mb_to_target"]),
                 estimate_text(row["wall_s"], 3)]
        lines.append("| " + " | ".join(cells) + " |")
    lm_names = sorted({k for r in rows for k in r["lm_eval"]})
    if lm_names:
        lines += ["", "lm-eval scores of each run's final adapter (and of the base model alone):", "",
                  "| configuration | " + " | ".join(lm_names) + " |", "|" + "---|" * (len(lm_names) + 1)]
        lines += ["| " + row["name"] + " | " + " | ".join(estimate_text(row["lm_eval"].get(k, {})) for k in lm_names)
                  + " |" for row in rows]
    troubled = [r for r in rows if r["problem_runs"]]
    if troubled:
        lines += ["", "Runs with problems:", ""]
        lines += [f"- {row['name']}: " + "; ".join(_problem_text(run) for run in row["problem_runs"])
                  for row in troubled]
    return "\n".join(lines) + "\n"


def plot_sweep(document: dict[str, Any], out: Path) -> list[Path]:
    """For each metric scored during the runs: against rounds and against cumulative MB sent up, the mean over
    each configuration's finished runs with its 95 % interval as a band, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[list[dict[str, float]]]] = {}
    for row in document["configurations"]:
        curves[row["name"]] = [read_result(row["name"], s["seed"], out / s["directory"]).curve
                               for s in row["seeds"] if s["state"] == "finished"]
    metrics = sorted({k for runs in curves.values() for curve in runs for point in curve for k in point}
                     - {"round", "mb_up"})
    (out / "plots").mkdir(parents=True, exist_ok=True)
    paths = []
    for metric in metrics:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for name, runs in curves.items():
            rounds = sorted(set.intersection(*(
                {int(p["round"]) for p in c if metric in p} for c in runs)) if runs else set())
            if not rounds:
                continue
            at = [{int(p["round"]): p for p in c} for c in runs]
            means, lows, highs, mbs = [], [], [], []
            for r in rounds:
                values = [c[r][metric] for c in at]
                stats = estimate(values)
                means.append(stats["mean"])
                low, high = stats["ci95"] or (stats["mean"], stats["mean"])
                lows.append(low)
                highs.append(high)
                mbs.append(sum(c[r]["mb_up"] for c in at) / len(at))
            for ax, xs in ((axes[0], rounds), (axes[1], mbs)):
                line = ax.plot(xs, means, marker="o", markersize=3, label=f"{name} (n={len(runs)})")[0]
                ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.2)
        axes[0].set_xlabel("round")
        axes[1].set_xlabel("MB sent up by all clients (cumulative; log scale above the smallest)")
        positive = [x for line in axes[1].get_lines() for x in line.get_xdata() if x > 0]
        if positive:  # codecs differ by orders of magnitude in bytes; round 0 sits at 0
            axes[1].set_xscale("symlog", linthresh=min(positive))
        for ax in axes:
            ax.set_ylabel(f"held-out {metric}")
            ax.grid(alpha=0.3)
        axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
        fig.suptitle(f"{metric}: mean over seeds, band = {int(CONFIDENCE * 100)} % interval", fontsize=10)
        fig.tight_layout()
        path = out / "plots" / f"{metric}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def write_results(out: Path, plan_record: dict[str, Any], runs: list[dict[str, Any]], *, plots: bool = True
                  ) -> tuple[dict[str, Any], list[Path]]:
    """Collect the runs, write sweep.json and sweep.md (and the plots) into ``out``; returns the document and the
    plots drawn."""
    document = collect(out, plan_record, runs)
    (out / SWEEP_FILE).write_text(json.dumps(document, indent=2))
    (out / TABLE_FILE).write_text(render_markdown(document))
    return document, plot_sweep(document, out) if plots else []


def is_sweep(directory: Path) -> bool:
    """Whether ``directory`` holds a sweep (its sweep.json)."""
    return (directory / SWEEP_FILE).is_file()


def report_sweep(directory: Path, *, plots: bool = True) -> tuple[dict[str, Any], list[Path]]:
    """Re-read the sweep in ``directory`` from its runs (finished, stopped or not yet run), rewrite its tables and
    plots; ReportError when sweep.json is damaged."""
    try:
        previous = json.loads((directory / SWEEP_FILE).read_text())
        plan, runs = previous["plan"], previous["runs"]
        if not isinstance(plan, dict) or not isinstance(runs, list):
            raise TypeError("plan or runs mistyped")
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ReportError(f"{directory / SWEEP_FILE} is damaged: {exc}") from exc
    return write_results(directory, plan, runs, plots=plots)
