"""Quality against bytes sent: dense vs ComPEFT at several densities (with and without error feedback) vs Ferret
(shared-randomness coefficients, over full parameters and over the LoRA adapter), beside a centralised run (the
clients' data pooled on one party, the same total optimiser steps, nothing sent).

Runs ``fedsqueeze simulate`` once per variant with the same preset, seed and rounds (one after the other, each in
its own process), reads each run's summary.json and metrics.jsonl, and writes ``accuracy_vs_bytes.json`` and
``accuracy_vs_bytes.png`` to ``--out``; prints the JSON. Each row has the task's primary metric (response
perplexity for the default SFT preset, accuracy for the classification presets), every other held-out metric of
the final model (ROUGE-L ...), MB sent up, and ``bytes_to_target``: the bytes sent up until the first round whose
global model reached dense FedAvg's final primary metric (None when it never did). Usage:
python benchmarks/accuracy_vs_bytes.py --out runs/accuracy_vs_bytes [--preset sft] [--densities 0.05 0.1 0.2]
[--no-ferret] [--no-centralised] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MARKERS = {"dense": "s", "ferret": "^", "compeft": "x"}  # plot marker per codec (ComPEFT with error feedback: "o")


def variants(densities: list[float], alpha_scale: float, ferret: dict[str, object] | None = None
             ) -> list[tuple[str, dict[str, object]]]:
    """(label, run-config overrides) for dense, every ComPEFT density with and without error feedback, and (when
    ``ferret`` gives its options) Ferret over full parameters and over the LoRA adapter."""
    out: list[tuple[str, dict[str, object]]] = [("dense", {"codec": "dense"})]
    for density in densities:
        for feedback in (True, False):
            label = f"compeft k={density}{' +EF' if feedback else ''}"
            out.append((label, {"codec": "compeft", "compeft-density": density, "compeft-alpha-scale": alpha_scale,
                                "error-feedback": feedback}))
    if ferret is not None:
        out.append((f"ferret full d={ferret['full-dim']}", {
            "codec": "ferret", "trainable": "full", "ferret-dim": ferret["full-dim"],
            "ferret-block-size": ferret["block-size"],
            **({"lr": ferret["full-lr"]} if ferret.get("full-lr") else {})}))
        out.append((f"ferret lora d={ferret['lora-dim']}", {
            "codec": "ferret", "ferret-dim": ferret["lora-dim"], "ferret-block-size": ferret["block-size"]}))
    return out


def centralised(num_clients: int, local_steps: int) -> tuple[str, dict[str, object]]:
    """The centralised reference: one party holding every client's data, ``num_clients`` times the local steps per
    round (the federation's total optimiser steps; AdamW restarts each round, as on the clients). What it
    "sends" to itself is not communication, so it gets no byte figures."""
    return ("centralised", {"num-clients": 1, "min-train-clients": 0, "local-steps": num_clients * local_steps})


def reached(rows: list[dict], metric: str, target: float, higher_is_better: bool) -> int | None:
    """Bytes sent up until the first evaluated round whose ``metric`` is at least as good as ``target``."""
    sent = 0
    for row in rows:
        sent += row["bytes_up"]
        if metric in row and (row[metric] >= target if higher_is_better else row[metric] <= target):
            return sent
    return None


def _run_config(values: dict[str, object]) -> str:
    return " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items())


def run_variant(label: str, overrides: dict[str, object], base: dict[str, object], out_dir: Path,
                reuse: bool = False) -> dict:
    """One simulation (or, with ``reuse``, an earlier finished one with the same run config); returns the figures
    the comparison needs."""
    run_dir = out_dir / label.replace(" ", "_").replace("=", "").replace("+", "")
    run_config = _run_config({**base, **overrides})
    marker = run_dir / "run_config.txt"
    if not (reuse and marker.exists() and marker.read_text() == run_config and (run_dir / "summary.json").exists()):
        # Full-parameter clients hold several copies of the model: two at a time fit 24 GB, three do not.
        parallel = ["--max-parallel", "2"] if overrides.get("trainable") == "full" else []
        command = [sys.executable, "-m", "simulations.cli", "simulate", "--out", str(run_dir), "--overwrite",
                   *parallel, "--run-config", run_config]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        marker.write_text(run_config)
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    finals = {k.removesuffix("_final"): v for k, v in summary.items()
              if k.endswith("_final") and not k.startswith(("metric", "examples", "response_tokens"))}
    return {"label": label, **overrides, "metric": summary["metric"], "metric_base": summary["metric_base"],
            "metric_final": summary["metric_final"], "higher_is_better": summary.get("higher_is_better", True),
            "final": finals, "rounds_metric": [r.get(summary["metric"]) for r in rows],
            "rounds_bytes_up": [r["bytes_up"] for r in rows], "bytes_up_total": summary["bytes_up_total"],
            "bytes_up_dense_equivalent": summary["bytes_up_dense_equivalent"],
            "compression_up": summary["compression_up"], "wall_s": summary["wall_s"], "run_dir": str(run_dir)}


def plot(results: list[dict], path: Path) -> None:
    """Final primary metric (and, where the task has it, ROUGE-L) against total bytes up (log scale), one marker
    per variant named in the legend; the base model and the centralised run as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    central = next((row for row in results if row["label"] == "centralised"), None)
    sent = [row for row in results if row["label"] != "centralised"]
    panels = [(sent[0]["metric"], "metric_base", "metric_final")]
    if "rouge_l" in sent[0]["final"]:
        panels.append(("rouge_l", None, None))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.4), squeeze=False)
    full = next((row for row in sent if row.get("trainable") == "full"), None)
    for ax, (name, base_key, final_key) in zip(axes[0], panels, strict=True):
        def value(row: dict, name: str = name, final_key: str | None = final_key) -> float:
            return row[final_key] if final_key else row["final"][name]

        for row in sent:
            marker = MARKERS[str(row.get("codec"))] if "+EF" not in row["label"] else "o"
            ax.scatter(row["bytes_up_total"] / 1e6, value(row), marker=marker, s=55, label=row["label"])
        if base_key:
            ax.set_title(f"base model: {sent[0][base_key]:.4g}", fontsize=9)
        if central is not None:
            ax.axhline(value(central), color="green", linestyle="-.", label="centralised (data pooled)")
        if full is not None:
            ax.axvline(full["bytes_up_dense_equivalent"] / 1e6, color="grey", linestyle="--",
                       label="dense full-parameter FedAvg would send")
        ax.set_xscale("log")
        ax.set_xlabel("MB sent up by all clients (total, log scale)")
        ax.set_ylabel(f"held-out {name} after the last round")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Run every variant and write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/accuracy_vs_bytes"))
    parser.add_argument("--preset", default="sft")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--densities", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--alpha-scale", type=float, default=4.0)
    parser.add_argument("--no-ferret", action="store_true", help="leave out the two Ferret rows")
    parser.add_argument("--ferret-full-dim", type=int, default=64)
    parser.add_argument("--ferret-lora-dim", type=int, default=1024)
    parser.add_argument("--ferret-block-size", type=int, default=65536)
    parser.add_argument("--ferret-full-lr", type=float, default=None,
                        help="lr for the full-parameter row (default: the preset's full-lr)")
    parser.add_argument("--no-centralised", action="store_true", help="leave out the centralised row")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse finished runs in --out whose run config is unchanged (add rows without rerunning)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = {"preset": args.preset, "num-server-rounds": args.rounds, "seed": 0}
    ferret = None if args.no_ferret else {"full-dim": args.ferret_full_dim, "lora-dim": args.ferret_lora_dim,
                                          "block-size": args.ferret_block_size, "full-lr": args.ferret_full_lr}
    chosen = variants(args.densities, args.alpha_scale, ferret)
    if not args.no_centralised:
        from server.run_config import resolve

        cfg = resolve(base)
        chosen.append(centralised(cfg.num_clients, cfg.task.local_steps))
    results = [run_variant(label, overrides, base, args.out, reuse=args.reuse) for label, overrides in chosen]
    dense = results[0]
    full = next((row for row in results if row.get("trainable") == "full"), None)
    target = dense["metric_final"]
    for row in results:
        row["metric_gap_vs_dense"] = row["metric_final"] - dense["metric_final"]
        if row["label"] == "centralised":
            row["mb_up"] = None  # nothing is communicated
            continue
        row["mb_up"] = row["bytes_up_total"] / 1e6
        rows = [{"bytes_up": b, **({row["metric"]: m} if m is not None else {})}
                for b, m in zip(row["rounds_bytes_up"], row["rounds_metric"], strict=True)]
        row["bytes_to_target"] = reached(rows, row["metric"], target, row["higher_is_better"])
        row["bytes_up_ratio_vs_dense"] = dense["bytes_up_total"] / row["bytes_up_total"]
        if full is not None:  # dense full-parameter FedAvg would send the full run's dense fp32 equivalent
            row["bytes_up_ratio_vs_dense_full_fedavg"] = full["bytes_up_dense_equivalent"] / row["bytes_up_total"]
    document = {"benchmark": "accuracy_vs_bytes", "preset": args.preset, "rounds": args.rounds, "seed": 0,
                "target": {"metric": dense["metric"], "value": target, "from": "dense FedAvg's final round"},
                "alpha_scale": args.alpha_scale, "ferret": ferret, "results": results}
    (args.out / "accuracy_vs_bytes.json").write_text(json.dumps(document, indent=2))
    plot(results, args.out / "accuracy_vs_bytes.png")
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
