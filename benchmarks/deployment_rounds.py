"""Round times of the real deployment against the in-process simulation, same run config, side by side.

For each preset: (1) ``fedsqueeze simulate``; (2) the deployment as docs/deployment.md runs it — a TLS SuperLink
(``fedsqueeze coordinator``), two ``fedsqueeze node`` (SuperNode + warm trainer), ``fedsqueeze submit``; (3) the same
deployment with ``fedsqueeze node --cold`` (plain flower-supernode: a fresh ClientApp process loads everything for
every message). One torch thread per client everywhere. Reads each run's metrics.jsonl ``round_s`` (training,
transport and aggregation; evaluation is ``eval_s``) and prints JSON: per-round times, steady-state medians (rounds
2..N) and their ratios, first-round differences, and whether each round's quality matches the simulation's.
Usage: python benchmarks/deployment_rounds.py [--presets encoder sft] [--rounds 3] [--out runs/deployment_rounds]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/ holds the helpers
from tests.deployment_helpers import (
    deployment_env,
    start_tls_federation,
    stop_processes,
    submit_and_wait,
)

SFT_SMALL = "per-topic=60 heldout=24 eval-samples=8"  # the SFT default, smaller data so 3 modes x 3 rounds fit


def run_config(preset: str, rounds: int, out_dir: Path) -> str:
    """The run config both modes use (TOML overrides)."""
    extra = SFT_SMALL if preset == "sft" else ""
    return (f"preset='{preset}' {extra} num-clients=2 num-server-rounds={rounds} partitioner='iid' seed=0 "
            f"wait-for-clients-s=300.0 out-dir='{out_dir}'")


def rows(out_dir: Path) -> list[dict]:
    """The run's metrics.jsonl rows."""
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def simulate(preset: str, rounds: int, out_dir: Path, env: dict[str, str]) -> list[dict]:
    """The in-process simulation (its own process, two clients at once)."""
    config = run_config(preset, rounds, out_dir)
    subprocess.run([sys.executable, "-m", "simulations.cli", "simulate", "--out", str(out_dir), "--overwrite",
                    "--max-parallel", "2", "--run-config", config], check=True, env=env, stdout=subprocess.DEVNULL)
    return rows(out_dir)


def deploy(preset: str, rounds: int, work: Path, *, warm: bool) -> list[dict]:
    """A TLS SuperLink and two client nodes (warm or cold), one run submitted with flwr run."""
    work.mkdir(parents=True, exist_ok=True)
    env = deployment_env(work)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    processes: dict[str, subprocess.Popen] = {}
    try:
        start_tls_federation(work, logs=logs, env=env, processes=processes, warm=warm)
        out_dir = work / "run"
        submit_and_wait(run_config(preset, rounds, out_dir), out_dir=out_dir, logs=logs, env=env)
        return rows(out_dir)
    finally:
        stop_processes(list(processes.values()))


def summarise(sim: list[dict], modes: dict[str, list[dict]], metric: str) -> dict:
    """Per-round times, steady-state medians and ratios against the simulation, first-round differences."""
    def steady(rs: list[dict]) -> float:
        return statistics.median(r["round_s"] for r in rs[1:]) if len(rs) > 1 else rs[0]["round_s"]

    out: dict = {"simulation": {"round_s": [r["round_s"] for r in sim], "steady_round_s": steady(sim),
                                metric: [r.get(metric) for r in sim]}}
    for name, rs in modes.items():
        out[name] = {"round_s": [r["round_s"] for r in rs], "steady_round_s": steady(rs),
                     "steady_vs_simulation": steady(rs) / steady(sim),
                     "first_round_minus_simulation_s": rs[0]["round_s"] - sim[0]["round_s"],
                     "task_built": [[c.get("task_built") for c in r["clients"]] for r in rs],
                     metric: [r.get(metric) for r in rs],
                     "same_quality_as_simulation": all(
                         abs(a.get(metric, 0) - b.get(metric, 0)) <= 1e-6 * max(1.0, abs(b.get(metric, 0)))
                         for a, b in zip(rs, sim, strict=True))}
    return out


def main() -> None:
    """Run every preset in every mode, one run at a time, and print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["encoder", "sft"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/deployment_rounds"))
    parser.add_argument("--skip-cold", action="store_true", help="only the simulation and the warm deployment")
    args = parser.parse_args()
    results = {}
    for preset in args.presets:
        base = args.out / preset
        env = deployment_env(base)
        started = time.perf_counter()
        sim = simulate(preset, args.rounds, base / "simulation", env)
        modes = {"deployment_warm": deploy(preset, args.rounds, base / "warm", warm=True)}
        if not args.skip_cold:
            modes["deployment_cold"] = deploy(preset, args.rounds, base / "cold", warm=False)
        metric = "accuracy" if preset != "sft" else "perplexity"
        results[preset] = {**summarise(sim, modes, metric), "wall_s": time.perf_counter() - started}
        print(json.dumps({preset: results[preset]}), flush=True)
    document = {"benchmark": "deployment_rounds", "rounds": args.rounds, "clients": 2, "torch_threads_per_client": 1,
                "transport": "gRPC + TLS on loopback", "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deployment_rounds.json").write_text(json.dumps(document, indent=2))
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
