"""Quality against bytes sent, on the standard protocol with 3 seeds: dense FedAvg; ComPEFT at two densities with
and without error feedback, each with the compressed downlink at the same density; Ferret over the LoRA adapter
(shared-randomness coefficients); and a centralised run (one party holding every client's data, the federation's
optimiser steps per round, nothing sent).

A sweep (``fedsqueeze sweep``) runs every configuration × seed, resumes what a killed run of this script left in
``--out`` and reports means with 95 % intervals; this script adds the comparison: per configuration the final
primary metric (response perplexity for the SFT protocol) and every other held-out metric (ROUGE-L ...), MB sent up
and down, the compression against dense, and bytes- and rounds-to-target, the target being dense FedAvg's mean final
perplexity. Writes ``accuracy_vs_bytes.json``, ``accuracy_vs_bytes.png`` and ``accuracy_vs_bytes.md`` (the docs'
table) to ``--out`` (beside the sweep's sweep.json, sweep.md and plots/) and prints the JSON. Usage:
python benchmarks/accuracy_vs_bytes.py --out runs/accuracy_vs_bytes [--seeds 0,1,2] [--densities 0.05 0.1]
[--protocol tiny --run-config model=DIR]   (a quick check)
[--protocol "" --run-config "preset=fortunes num-server-rounds=3" --seeds 0,1,2]   (no protocol: the fortunes
classification preset)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sweeps import add_sweep_arguments, mean, rows, sweep, write

MARKERS = {"dense": "s", "ferret": "^", "compeft": "x"}  # plot marker per codec (ComPEFT with error feedback: "o")
CENTRALISED = "centralised"
TARGET = "dense"


def configurations(densities: list[float], alpha_scale: float, ferret_dim: int, ferret_block_size: int
                   ) -> dict[str, dict[str, object]]:
    """The run-config values of each configuration but the centralised one, by name."""
    out: dict[str, dict[str, object]] = {TARGET: {"codec": "dense"}}
    for density in densities:
        for feedback in (True, False):
            out[f"compeft k={density}{' +EF' if feedback else ''}"] = {
                "codec": "compeft", "compeft-density": density, "compeft-alpha-scale": alpha_scale,
                "error-feedback": feedback, "downlink-codec": "compeft", "downlink-density": density}
    out[f"ferret lora d={ferret_dim}"] = {"codec": "ferret", "ferret-dim": ferret_dim,
                                          "ferret-block-size": ferret_block_size}
    return out


def centralised(per_round: int, local_steps: int) -> dict[str, object]:
    """One party holding every client's data, taking the optimiser steps the federation's sampled clients take in a
    round (AdamW restarts each round, as on the clients). What it "sends" to itself is not communication."""
    return {"num-clients": 1, "fraction-train": 1.0, "min-train-clients": 0, "local-steps": per_round * local_steps}


def comparison(document: dict[str, Any], settings: dict[str, dict[str, object]]) -> list[dict[str, Any]]:
    """One row per configuration: its settings, the sweep's estimates, and the ratios against dense."""
    by_name = rows(document)
    dense_up = mean(by_name[TARGET]["mb_up"])
    out = []
    for name, row in by_name.items():
        sent = name != CENTRALISED
        up = mean(row["mb_up"])
        out.append({
            "label": name, **settings[name], "runs": row["runs"], "finished": row["finished"],
            "metric": row["metric"], "final": row["final"], "paired_vs_dense": row.get("paired_vs_target"),
            "mb_up": row["mb_up"] if sent else None, "mb_down": row["mb_down"] if sent else None,
            "compression_up_vs_dense": dense_up / up if sent and up and dense_up else None,
            "target_reached": row["target_reached"] if sent else None,
            "rounds_to_target": row["rounds_to_target"] if sent else None,
            "mb_up_to_target": row["mb_to_target"] if sent else None,
            "wall_s": row["wall_s"], "problem_runs": row["problem_runs"]})
    return out


def table(results: list[dict[str, Any]], target: dict[str, Any]) -> str:
    """The comparison as the Markdown table the docs show: mean ± half-width of the 95 % interval over seeds; the
    paired column is each seed's primary metric minus dense's on the same seed; ⚠ marks a configuration with a run
    that failed or had failed, rejected or refused clients (listed under the table)."""
    from simulations.sweep_report import estimate_text

    metric = results[0]["metric"] or "metric"
    lines = [f"| variant | runs | final {metric} | − dense's, paired by seed | ROUGE-L | MB up | MB down | "
             "fewer bytes up than dense | runs reaching the target | rounds to target | MB up to target |",
             "|" + "---|" * 11]
    for row in results:
        final = row["final"]
        sent = row["mb_up"] is not None
        ratio = row["compression_up_vs_dense"]
        reached = "–" if row["target_reached"] is None else f"{row['target_reached']}/{row['finished']}"
        lines.append("| " + " | ".join([
            row["label"] + (" ⚠" if row["problem_runs"] else ""), f"{row['finished']}/{row['runs']}",
            estimate_text(final.get(metric)), estimate_text(row["paired_vs_dense"], 3),
            estimate_text(final.get("rouge_l"), 3),
            estimate_text(row["mb_up"]) if sent else "(not sent)", estimate_text(row["mb_down"]) if sent else "–",
            f"{ratio:,.0f}x" if ratio else "–", reached,
            estimate_text(row["rounds_to_target"], 3) if sent else "–",
            estimate_text(row["mb_up_to_target"]) if sent else "–"]) + " |")
    problems = [f"- {row['label']}: {len(row['problem_runs'])} run(s) with problems (sweep.md lists them)"
                for row in results if row["problem_runs"]]
    head = (f"Target: {target['value']:.4g} ({target['from']}). Rounds and MB to target are over the runs that "
            "reached it.")
    return "\n".join([head, "", *lines, *(["", *problems] if problems else [])]) + "\n"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Final primary metric (and ROUGE-L where the task has it) against MB sent up (log scale): the mean over seeds
    with its 95 % interval as error bars; the centralised run as a line with its interval as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sent = [row for row in results if row["label"] != CENTRALISED and row["final"]]
    central = next((row for row in results if row["label"] == CENTRALISED and row["final"]), None)
    metric = sent[0]["metric"]
    panels = [metric] + (["rouge_l"] if "rouge_l" in sent[0]["final"] else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.4), squeeze=False)
    for ax, name in zip(axes[0], panels, strict=True):
        for row in sent:
            est, up = row["final"][name], row["mb_up"]
            marker = "o" if "+EF" in row["label"] else MARKERS.get(str(row.get("codec")), "d")
            yerr = [[est["mean"] - est["ci95"][0]], [est["ci95"][1] - est["mean"]]] if est["ci95"] else None
            xerr = [[up["mean"] - up["ci95"][0]], [up["ci95"][1] - up["mean"]]] if up["ci95"] else None
            ax.errorbar(up["mean"], est["mean"], yerr=yerr, xerr=xerr, fmt=marker, capsize=3, markersize=6,
                        label=f"{row['label']} (n={est['n']})")
        if central is not None:
            est = central["final"][name]
            ax.axhline(est["mean"], color="green", linestyle="-.", label=f"centralised (n={est['n']})")
            if est["ci95"]:
                ax.axhspan(est["ci95"][0], est["ci95"][1], color="green", alpha=0.1)
        ax.set_xscale("log")
        ax.set_xlabel("MB sent up by all clients (total, log scale)")
        ax.set_ylabel(f"held-out {name} after the last round (mean, 95 % interval)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Run (or finish) the sweep and write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sweep_arguments(parser, "runs/accuracy_vs_bytes")
    parser.add_argument("--densities", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--alpha-scale", type=float, default=4.0)
    parser.add_argument("--ferret-dim", type=int, default=1024)
    parser.add_argument("--ferret-block-size", type=int, default=65536)
    parser.add_argument("--no-centralised", action="store_true", help="leave out the centralised row")
    args = parser.parse_args()
    settings = configurations(args.densities, args.alpha_scale, args.ferret_dim, args.ferret_block_size)
    if not args.no_centralised:
        from server.run_config import resolve
        from simulations.config_args import parse_run_config
        from simulations.protocols import protocol

        shared = protocol(args.protocol).run_config if args.protocol else {}
        cfg = resolve({**shared, **parse_run_config(args.run_config)})
        settings[CENTRALISED] = centralised(cfg.run.per_round, cfg.task.local_steps)
    document = sweep(args, settings, target=TARGET)
    results = comparison(document, settings)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "accuracy_vs_bytes.png")
    if document["target"]["value"] is not None:
        (args.out / "accuracy_vs_bytes.md").write_text(table(results, document["target"]))
    write(args.out, "accuracy_vs_bytes", {
        "benchmark": "accuracy_vs_bytes", "protocol": args.protocol, "seeds": document["plan"]["seeds"],
        "shared_run_config": document["plan"]["shared_run_config"], "confidence": document["confidence"],
        "interval": document["interval"], "target": document["target"], "results": results,
        "command": "python benchmarks/accuracy_vs_bytes.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k in ("protocol", "seeds") and v)})


if __name__ == "__main__":
    main()
