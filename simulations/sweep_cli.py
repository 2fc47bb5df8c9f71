"""``fedsqueeze sweep``'s command line: parse and check the sweep (one line and exit 2 for a bad grid, before
anything runs), then run it (simulations/sweep.py). Light to import: the CLI starts without torch."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from simulations.sweep_plan import build_plan


def _cmd_sweep(args: argparse.Namespace) -> int:
    if not args.out:
        raise ValueError("sweep needs --out DIR")
    plan = build_plan(Path(args.out), grid_text=args.grid, configs=args.config, seeds_text=args.seeds,
                      run_config_text=args.run_config, protocol_name=args.protocol, target=args.target,
                      evaluate_tasks=args.evaluate_tasks, file=Path(args.file) if args.file else None)
    if plan.evaluate_tasks:
        from simulations.lm_evaluation import check_tasks

        check_tasks(list(plan.evaluate_tasks))
    from simulations.sweep import TABLE_FILE, check_existing, config_text, run_state, run_sweep

    if args.dry_run:
        check_existing(plan)
        for run in plan.runs:
            print(f"{run.name}\tseed {run.seed}\t{run_state(run)}\t{run.directory}\t{config_text(run.run_config)}")
        return 0
    # A terminated sweep stops its runs too (they resume from their checkpoints when it runs again).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    extra = ["--client-gpus", str(args.client_gpus)] if args.client_gpus else []
    extra += ["--ray-address", args.ray_address] if args.ray_address else []
    document = run_sweep(plan, parallel=args.parallel, max_parallel=args.max_parallel, simulate_args=extra,
                         say=lambda line: print(line, file=sys.stderr, flush=True))
    print((plan.out / TABLE_FILE).read_text())
    troubled = sum(bool(row["problem_runs"]) for row in document["configurations"])
    unfinished = sum(row["runs"] - row["finished"] for row in document["configurations"])
    return 1 if unfinished or (troubled and args.strict) else 0


def add_sweep_command(sub: argparse._SubParsersAction) -> None:
    """Register ``fedsqueeze sweep``."""
    sweep = sub.add_parser("sweep", help="run a grid of run-config values x seeds as simulate runs and compare them "
                                         "(mean and 95 %% interval over seeds)")
    sweep.add_argument("--out", default="", help="sweep directory: OUT/<configuration>/seed-<s>/, sweep.json, "
                                                 "sweep.md, plots/")
    sweep.add_argument("--file", default="", help="a TOML sweep file (protocol, seeds, target, [run-config], "
                                                  "[grid], [configs.NAME]; see docs/experiments.md)")
    sweep.add_argument("--protocol", default="", help="start every run from a named protocol: standard (10 "
                                                      "clients, 10 rounds, 3 seeds) or tiny (for tests)")
    sweep.add_argument("--grid", default=None, metavar="'KEY=V1,V2 ...'",
                       help='every combination of these values, e.g. "codec=dense,compeft compeft-density=0.05,0.1"')
    sweep.add_argument("--config", action="append", default=[], metavar="'NAME: KEY=VALUE ...'",
                       help="a named configuration (repeatable; crossed with --grid when both are given)")
    sweep.add_argument("--seeds", default="", help="comma-separated seeds (default: the protocol's, else 0)")
    sweep.add_argument("--run-config", default="", help="values every run shares (over the protocol's)")
    sweep.add_argument("--target", default="", help="a configuration whose mean final primary metric is the target "
                                                    "of bytes- and rounds-to-target, or a number")
    sweep.add_argument("--parallel", type=int, default=1, help="simulations at once (default 1)")
    sweep.add_argument("--max-parallel", type=int, default=0,
                       help="clients training at once in each simulation (default: simulate's)")
    sweep.add_argument("--evaluate-tasks", default="", metavar="TASK,...",
                       help="lm-eval tasks run on each finished run's adapter (fedsqueeze evaluate)")
    sweep.add_argument("--client-gpus", type=float, default=0.0, help="passed to each simulate run")
    sweep.add_argument("--ray-address", default="", help="passed to each simulate run")
    sweep.add_argument("--dry-run", action="store_true", help="check the sweep and list its runs; run nothing")
    sweep.add_argument("--strict", action="store_true",
                       help="exit 1 when any run had failed, rejected or refused clients (always when a run failed)")
    sweep.set_defaults(func=_cmd_sweep)
