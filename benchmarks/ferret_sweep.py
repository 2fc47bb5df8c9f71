"""Ferret at extreme compression: full-parameter SFT of the default model with ever fewer coefficients per round.

Sweeps (ferret-dim, ferret-block-size) from about 10^3x to 10^6x fewer bytes up than dense full-parameter FedAvg,
each point one ``fedsqueeze simulate`` run of the SFT default (same seed and rounds), beside dense LoRA FedAvg in
the same run. Writes ``ferret_sweep.json`` and ``ferret_sweep.png`` (held-out perplexity against the compression,
log scale) to ``--out`` and prints the JSON: per point the bytes up per client and round, the compression against
dense full-parameter fp32, perplexity and ROUGE-L, and the largest compression whose perplexity is within 5 % of
dense LoRA's.
Usage: python benchmarks/ferret_sweep.py [--out runs/ferret_sweep] [--rounds 2] [--reuse]
       python benchmarks/ferret_sweep.py --replot DIR/ferret_sweep.json   (the PNG again from a finished JSON)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from accuracy_vs_bytes import run_variant

# (dim, block size): each step cuts the coefficients sent by about 10x (the 135M-entry model in blocks of this size)
POINTS = ((64, 1 << 16), (64, 1 << 19), (32, 1 << 21), (16, 1 << 23), (4, 1 << 24), (1, 1 << 26))
WITHIN = 0.05  # relative perplexity gap to dense LoRA that still counts as "the same quality"


def plot(points: list[dict], reference: dict, path: Path) -> None:
    """Perplexity against compression (log x), dense LoRA as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    ax.plot([p["compression_vs_dense_full"] for p in points], [p["metric_final"] for p in points], "^-",
            label="Ferret, full parameters")
    for p in points:
        ax.annotate(f"d={p['ferret-dim']}, b=2^{p['ferret-block-size'].bit_length() - 1}",
                    (p["compression_vs_dense_full"], p["metric_final"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.axhline(reference["metric_final"], color="k", ls="--", label="dense LoRA FedAvg")
    ax.axhline(reference["metric_final"] * (1 + WITHIN), color="grey", ls=":", label=f"dense LoRA + {WITHIN:.0%}")
    ax.axhline(reference["metric_base"], color="r", ls=":", label="base model")
    ax.set_xscale("log")
    ax.set_yscale("log")  # past the point where it diverges, perplexity runs to astronomical values
    ax.set_xlabel("fewer bytes up than dense full-parameter fp32 FedAvg (x)")
    ax.set_ylabel("held-out response perplexity (log; lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    """Run the sweep and the dense LoRA reference; write the JSON and the plot."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/ferret_sweep"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs whose run config is unchanged")
    parser.add_argument("--replot", type=Path, default=None, help="redraw the PNG beside this ferret_sweep.json")
    args = parser.parse_args()
    if args.replot is not None:
        document = json.loads(args.replot.read_text())
        plot(document["points"], document["dense_lora"], args.replot.with_suffix(".png"))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    base = {"preset": "sft", "num-server-rounds": args.rounds, "seed": 0}
    reference = run_variant("lora-dense", {"codec": "dense"}, base, args.out, reuse=args.reuse)
    points = []
    for dim, block in POINTS:
        row = run_variant(f"ferret-full-d{dim}-b{block}", {"codec": "ferret", "trainable": "full", "ferret-dim": dim,
                                                           "ferret-block-size": block}, base, args.out,
                          reuse=args.reuse)
        clients = [c for r in (json.loads(line) for line in
                                (Path(row["run_dir"]) / "metrics.jsonl").read_text().splitlines())
                   for c in r["clients"] if c["bytes_up"]]
        row["bytes_up_per_client_round"] = sum(c["bytes_up"] for c in clients) / len(clients)
        row["compression_vs_dense_full"] = row["compression_up"]
        row["within_5pct_of_dense_lora"] = row["metric_final"] <= reference["metric_final"] * (1 + WITHIN)
        points.append(row)
        print(json.dumps({k: row[k] for k in ("label", "bytes_up_per_client_round", "compression_vs_dense_full",
                                              "metric_final")}), flush=True)
    good = [p for p in points if p["within_5pct_of_dense_lora"]]
    document = {"benchmark": "ferret_sweep", "preset": "sft", "rounds": args.rounds, "seed": 0,
                "dense_lora": reference, "points": points,
                "largest_compression_within_5pct_of_dense_lora": max(
                    (p["compression_vs_dense_full"] for p in good), default=None)}
    (args.out / "ferret_sweep.json").write_text(json.dumps(document, indent=2))
    plot(points, reference, args.out / "ferret_sweep.png")
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
