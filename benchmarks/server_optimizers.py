"""Server optimisers and FedProx on the standard protocol (non-IID by domain): held-out response perplexity after
every scored round for FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad (Reddi et al. 2021) and FedProx, mean and
95 % interval over the protocol's seeds.

A sweep (``fedsqueeze sweep``) runs every variant × seed and resumes what a killed run of this script left in
``--out``; this script writes ``server_optimizers.json`` and ``server_optimizers.png`` beside the sweep's tables and
prints the JSON. The adaptive optimisers' server learning rates are set for LoRA deltas of this task (their
per-entry step is about ``lr``: see docs/aggregation.md); ``--lr name=value`` overrides one. Usage:
python benchmarks/server_optimizers.py --out runs/server_optimizers [--only fedavg fedadam] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sweeps import add_sweep_arguments, mean, rows, sweep, write

from simulations.sweep_report import estimate, read_result

VARIANTS: dict[str, dict[str, object]] = {
    "fedavg": {},
    "fedavgm": {"server-optimizer": "fedavgm", "server-lr": 1.0, "server-momentum": 0.5},
    "fedadam": {"server-optimizer": "fedadam", "server-lr": 1e-2},
    "fedyogi": {"server-optimizer": "fedyogi", "server-lr": 1e-2},
    "fedadagrad": {"server-optimizer": "fedadagrad", "server-lr": 3e-2},
    "fedprox": {"fedprox-mu": 1.0},
}


def curve(out: Path, row: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    """``metric`` at each round every finished run scored (round 0: the base model), mean and 95 % interval."""
    runs = [read_result(row["name"], s["seed"], out / s["directory"]).curve for s in row["seeds"]
            if s["state"] == "finished"]
    if not runs:
        return []
    rounds = sorted(set.intersection(*({int(p["round"]) for p in c if metric in p} for c in runs)))
    return [{"round": r, **estimate([next(p[metric] for p in c if p["round"] == r) for c in runs])}
            for r in rounds]


def plot(results: list[dict[str, Any]], metric: str, path: Path) -> None:
    """``metric`` against round, one line per variant (mean over seeds, 95 % interval as a band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for row in results:
        points = row["rounds"]
        if not points:
            continue
        line = axis.plot([p["round"] for p in points], [p["mean"] for p in points], marker="o",
                         label=row["label"])[0]
        axis.fill_between([p["round"] for p in points], [(p["ci95"] or [p["mean"]] * 2)[0] for p in points],
                          [(p["ci95"] or [p["mean"]] * 2)[1] for p in points], color=line.get_color(), alpha=0.15)
    axis.set_xlabel("round")
    axis.set_ylabel(f"held-out {metric} (mean, 95 % interval)")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    """Run (or finish) every variant and write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sweep_arguments(parser, "runs/server_optimizers")
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="run these variants only")
    parser.add_argument("--lr", action="append", default=[], metavar="NAME=VALUE", help="a variant's server-lr")
    args = parser.parse_args()
    chosen = {name: dict(VARIANTS[name]) for name in (args.only or VARIANTS)}
    for item in args.lr:
        name, _, value = item.partition("=")
        if name not in chosen:
            parser.error(f"--lr {item}: '{name}' is not a variant being run ({', '.join(chosen)})")
        chosen[name]["server-lr"] = float(value)
    document = sweep(args, chosen, target="fedavg" if "fedavg" in chosen else None)
    results = []
    for name, row in rows(document).items():
        metric = row["metric"]
        final = mean(row["final"].get(metric)) if metric else None
        reference = mean(rows(document).get("fedavg", row)["final"].get(metric)) if metric else None
        results.append({"label": name, **chosen[name], "runs": row["runs"], "finished": row["finished"],
                        "metric": metric, "final": row["final"], "rounds": curve(args.out, row, metric) if metric
                        else [], "metric_final_vs_fedavg": final / reference if final and reference else None,
                        "rounds_to_target": row["rounds_to_target"], "problem_runs": row["problem_runs"]})
    metric = next((r["metric"] for r in results if r["metric"]), "metric")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, metric, args.out / "server_optimizers.png")
    write(args.out, "server_optimizers", {"benchmark": "server_optimizers", "protocol": args.protocol,
                                          "seeds": document["plan"]["seeds"], "metric": metric,
                                          "target": document["target"], "results": results})


if __name__ == "__main__":
    main()
