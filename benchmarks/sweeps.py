"""What the method-comparison benchmarks share: they name their configurations and hand them to ``fedsqueeze
sweep`` (simulations/sweep.py), which runs every configuration × seed on a protocol (default: the standard one),
resumes what a killed benchmark left, and reports means with 95 % intervals and every failed or rejected client."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simulations.sweep import run_sweep
from simulations.sweep_plan import build_plan


def add_sweep_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    """The options every sweep-based benchmark takes (output folder, protocol, seeds, shared run config,
    parallelism)."""
    parser.add_argument("--out", type=Path, default=Path(out), help="the sweep directory (finished runs are kept "
                                                                      "and skipped when the benchmark runs again)")
    parser.add_argument("--protocol", default="standard",
                        help="standard (default), tiny (for a quick check) or '' (none: the run config alone)")
    parser.add_argument("--seeds", default="", help="comma-separated seeds (default: the protocol's)")
    parser.add_argument("--run-config", default="", help="values every run shares, over the protocol's")
    parser.add_argument("--parallel", type=int, default=1, help="simulations at once")
    parser.add_argument("--max-parallel", type=int, default=0, help="clients training at once in each simulation")


def sweep(args: argparse.Namespace, configurations: Mapping[str, Mapping[str, object]], *,
          target: str | float | None = None) -> dict[str, Any]:
    """Run (or finish) the sweep of ``configurations`` and return its sweep.json document."""
    plan = build_plan(args.out, seeds_text=args.seeds, run_config_text=args.run_config,
                      protocol_name=args.protocol, target="" if target is None else str(target),
                      named_configs=configurations)
    return run_sweep(plan, parallel=args.parallel, max_parallel=args.max_parallel,
                     say=lambda line: print(line, file=sys.stderr, flush=True))


def rows(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The sweep's configurations by name."""
    return {row["name"]: row for row in document["configurations"]}


def mean(estimate: Mapping[str, Any] | None) -> float | None:
    """An estimate's mean (None when no run finished)."""
    return None if not estimate else estimate.get("mean")


def write(out: Path, name: str, document: Mapping[str, Any]) -> None:
    """Write the benchmark's JSON beside the sweep and print it."""
    (out / f"{name}.json").write_text(json.dumps(document, indent=2))
    print(json.dumps(document, indent=2))


def bytes_up_per_client_round(out: Path, row: Mapping[str, Any]) -> float | None:
    """Mean bytes one client sent up in one round, over every client reply of the configuration's finished runs."""
    sent = []
    for seed in row["seeds"]:
        if seed["state"] != "finished":
            continue
        for line in (out / seed["directory"] / "metrics.jsonl").read_text().splitlines():
            sent += [c["bytes_up"] for c in json.loads(line).get("clients", []) if c.get("bytes_up")]
    return sum(sent) / len(sent) if sent else None


def summary_mean(out: Path, row: Mapping[str, Any], key: str) -> float | None:
    """The mean of summary.json's ``key`` over the configuration's finished runs."""
    values = [json.loads((out / seed["directory"] / "summary.json").read_text()).get(key)
              for seed in row["seeds"] if seed["state"] == "finished"]
    numbers = [float(v) for v in values if isinstance(v, int | float)]
    return sum(numbers) / len(numbers) if numbers else None
