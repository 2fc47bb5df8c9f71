"""Server optimisers and FedProx on the non-IID SFT default: held-out response perplexity after every round for
FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad (Reddi et al. 2021) and FedProx, same preset, seed and rounds.

Runs ``fedsqueeze simulate`` once per variant (each in its own process, one after the other), reads each run's
summary.json and metrics.jsonl, writes ``server_optimizers.json`` and ``server_optimizers.png`` to ``--out`` and
prints the JSON. The adaptive optimisers' server learning rates are set for LoRA deltas of this task (their
per-entry step is about ``lr``: see docs/aggregation.md); ``--lr name=value`` overrides one. Usage:
python benchmarks/server_optimizers.py --out runs/server_optimizers [--rounds 5] [--reuse]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from accuracy_vs_bytes import run_variant

VARIANTS: dict[str, dict[str, object]] = {
    "fedavg": {},
    "fedavgm": {"server-optimizer": "fedavgm", "server-lr": 1.0, "server-momentum": 0.5},
    "fedadam": {"server-optimizer": "fedadam", "server-lr": 1e-2},
    "fedyogi": {"server-optimizer": "fedyogi", "server-lr": 1e-2},
    "fedadagrad": {"server-optimizer": "fedadagrad", "server-lr": 3e-2},
    "fedprox": {"fedprox-mu": 1.0},
}


def plot(results: list[dict], metric: str, path: Path) -> None:
    """``metric`` after each round, one line per variant, the base model at round 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for row in results:
        rounds = list(range(len(row["rounds_metric"]) + 1))
        axis.plot(rounds, [row["metric_base"], *row["rounds_metric"]], marker="o", label=row["label"])
    axis.set_xlabel("round")
    axis.set_ylabel(f"held-out {metric}")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    """Run every variant and write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/server_optimizers"))
    parser.add_argument("--preset", default="sft")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="run these variants only")
    parser.add_argument("--lr", action="append", default=[], metavar="NAME=VALUE", help="a variant's server-lr")
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs whose run config is unchanged")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = {name: dict(VARIANTS[name]) for name in (args.only or VARIANTS)}
    for item in args.lr:
        name, _, value = item.partition("=")
        chosen[name]["server-lr"] = float(value)
    base = {"preset": args.preset, "num-server-rounds": args.rounds, "seed": 0}
    results = [run_variant(name, overrides, base, args.out, reuse=args.reuse) for name, overrides in chosen.items()]
    reference = next((r for r in results if r["label"] == "fedavg"), results[0])
    for row in results:
        row["metric_final_vs_fedavg"] = row["metric_final"] / reference["metric_final"]
    metric = results[0]["metric"]
    document = {"benchmark": "server_optimizers", "preset": args.preset, "rounds": args.rounds, "seed": 0,
                "metric": metric, "results": results}
    (args.out / "server_optimizers.json").write_text(json.dumps(document, indent=2))
    plot(results, metric, args.out / "server_optimizers.png")
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
