"""Ferret at extreme compression: full-parameter SFT of the default model with ever fewer coefficients per round.

Sweeps (ferret-dim, ferret-block-size) from about 10^3x to 10^6x fewer bytes up than dense full-parameter FedAvg,
beside dense LoRA FedAvg, as one ``fedsqueeze sweep`` on the standard protocol (every point × seed; a killed run of
this script resumes where it stopped). Writes ``ferret_sweep.json`` and ``ferret_sweep.png`` (held-out perplexity
against the compression, log scale, mean and 95 % interval over seeds) to ``--out`` and prints the JSON: per point
the bytes up per client and round, the compression against dense full-parameter fp32, perplexity and ROUGE-L, the
runs with failed or rejected clients, and the largest compression whose mean perplexity is within 5 % of dense
LoRA's. Full-parameter clients hold several copies of the model: two train at once unless --max-parallel says.
Usage: python benchmarks/ferret_sweep.py [--out runs/ferret_sweep] [--seeds 0,1,2]
       python benchmarks/ferret_sweep.py --replot DIR/ferret_sweep.json   (the PNG again from a finished JSON)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sweeps import add_sweep_arguments, bytes_up_per_client_round, mean, rows, summary_mean, sweep, write

# (dim, block size): each step cuts the coefficients sent by about 10x (the 135M-entry model in blocks of this size)
POINTS = ((64, 1 << 16), (64, 1 << 19), (32, 1 << 21), (16, 1 << 23), (4, 1 << 24), (1, 1 << 26))
WITHIN = 0.05  # relative perplexity gap to dense LoRA that still counts as "the same quality"


def plot(points: list[dict[str, Any]], reference: dict[str, Any], path: Path) -> None:
    """Perplexity against compression (log x; mean over seeds, 95 % interval as error bars), dense LoRA as a
    line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    shown = [p for p in points if p["metric_final"] is not None and p["compression_vs_dense_full"]]
    xs = [p["compression_vs_dense_full"] for p in shown]
    ys = [p["metric_final"] for p in shown]
    errors = [[p["metric_final"] - (p["ci95"] or [p["metric_final"]] * 2)[0] for p in shown],
              [(p["ci95"] or [p["metric_final"]] * 2)[1] - p["metric_final"] for p in shown]]
    ax.errorbar(xs, ys, yerr=errors, fmt="^-", capsize=3, label="Ferret, full parameters")
    for p in shown:
        ax.annotate(f"d={p['ferret-dim']}, b=2^{p['ferret-block-size'].bit_length() - 1}"
                    + (" ⚠" if p["problem_runs"] else ""),
                    (p["compression_vs_dense_full"], p["metric_final"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.axhline(reference["metric_final"], color="k", ls="--", label="dense LoRA FedAvg")
    ax.axhline(reference["metric_final"] * (1 + WITHIN), color="grey", ls=":", label=f"dense LoRA + {WITHIN:.0%}")
    ax.set_xscale("log")
    ax.set_yscale("log")  # past the point where it diverges, perplexity runs to astronomical values
    ax.set_xlabel("fewer bytes up than dense full-parameter fp32 FedAvg (x)")
    ax.set_ylabel("held-out response perplexity (log; lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    """Run (or finish) the sweep and the dense LoRA reference; write the JSON and the plot."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sweep_arguments(parser, "runs/ferret_sweep")
    parser.add_argument("--replot", type=Path, default=None, help="redraw the PNG beside this ferret_sweep.json")
    args = parser.parse_args()
    if args.replot is not None:
        document = json.loads(args.replot.read_text())
        plot(document["points"], document["dense_lora"], args.replot.with_suffix(".png"))
        return
    args.max_parallel = args.max_parallel or 2
    settings: dict[str, dict[str, object]] = {"lora-dense": {"codec": "dense"}}
    for dim, block in POINTS:
        settings[f"ferret-full-d{dim}-b{block}"] = {"codec": "ferret", "trainable": "full", "ferret-dim": dim,
                                                     "ferret-block-size": block}
    document = sweep(args, settings, target="lora-dense")
    found = rows(document)

    def figures(name: str) -> dict[str, Any]:
        row = found[name]
        metric = row["metric"]
        final = row["final"].get(metric, {}) if metric else {}
        return {"label": name, **settings[name], "runs": row["runs"], "finished": row["finished"],
                "metric": metric, "metric_final": mean(final), "ci95": final.get("ci95"), "final": row["final"],
                "bytes_up_per_client_round": bytes_up_per_client_round(args.out, row),
                "compression_vs_dense_full": summary_mean(args.out, row, "compression_up"),
                "problem_runs": row["problem_runs"]}

    reference = figures("lora-dense")
    points = [figures(name) for name in settings if name != "lora-dense"]
    for point in points:
        point["within_5pct_of_dense_lora"] = (point["metric_final"] is not None and reference["metric_final"]
                                              is not None and point["metric_final"] <= reference["metric_final"]
                                              * (1 + WITHIN))
    good = [p for p in points if p["within_5pct_of_dense_lora"]]
    args.out.mkdir(parents=True, exist_ok=True)
    if reference["metric_final"] is not None:
        plot(points, reference, args.out / "ferret_sweep.png")
    write(args.out, "ferret_sweep", {
        "benchmark": "ferret_sweep", "protocol": args.protocol, "seeds": document["plan"]["seeds"],
        "dense_lora": reference, "points": points,
        "largest_compression_within_5pct_of_dense_lora": max((p["compression_vs_dense_full"] for p in good),
                                                             default=None)})


if __name__ == "__main__":
    main()
