"""Every PEFT adapter family, each with the dense codec, ComPEFT 5 % with error feedback and Ferret, on the
standard protocol: trainable parameters, bytes sent up per client and round, held-out response perplexity and
ROUGE-L (mean and 95 % interval over the protocol's seeds).

Each adapter runs at its PEFT config class's default rank (LoRA-like families at the preset's r = 8; VeRA 256,
RandLoRA 32, MiSS 64, ShiRA 32): what a user who picks the family gets. A sweep (``fedsqueeze sweep``) runs every
adapter × codec × seed and resumes what a killed run of this script left in ``--out``; this script writes
``adapters.json`` beside the sweep's tables and prints it.
Usage: python benchmarks/adapters.py --out runs/adapters [--only vera shira] [--codecs dense] [--seeds 0]
"""

from __future__ import annotations

import argparse
import math

from sweeps import add_sweep_arguments, bytes_up_per_client_round, rows, sweep, write

RANKS = {"lora": 8, "dora": 8, "loha": 8, "lokr": 8, "vera": 256, "randlora": 32, "miss": 64, "shira": 32}
CODECS: dict[str, dict[str, object]] = {
    "dense": {"codec": "dense"},
    "compeft-0.05+ef": {"codec": "compeft", "compeft-density": 0.05, "compeft-alpha-scale": 4.0,
                        "error-feedback": True},
    "ferret": {"codec": "ferret", "ferret-dim": 1024, "ferret-block-size": 65536},
}


def trainable_parameters(adapter: str, shared: dict[str, object]) -> int:
    """Entries a client sends for ``adapter`` (its trainable tensors) on the sweep's task (``shared``: the run
    config every run shares), counted on the built task's layout."""
    from client.task.build import build_task, load_splits
    from client.task.task_keys import task_spec

    spec = task_spec({**shared, "adapter": adapter, "lora-r": RANKS[adapter]})
    train, _ = load_splits(spec)
    return sum(math.prod(shape) for shape in build_task(spec, train).trainable_shapes().values())


def main() -> None:
    """Run (or finish) every adapter x codec and write the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sweep_arguments(parser, "runs/adapters")
    parser.add_argument("--only", nargs="+", choices=sorted(RANKS), help="these adapters only")
    parser.add_argument("--codecs", nargs="+", choices=sorted(CODECS), default=list(CODECS))
    args = parser.parse_args()
    adapters = args.only or list(RANKS)
    settings = {f"{adapter}-{codec}": {"adapter": adapter, "lora-r": RANKS[adapter], **CODECS[codec]}
                for adapter in adapters for codec in args.codecs}
    document = sweep(args, settings)
    entries = {adapter: trainable_parameters(adapter, document["plan"]["shared_run_config"]) for adapter in adapters}
    results = []
    for name, row in rows(document).items():
        adapter = str(settings[name]["adapter"])
        results.append({"label": name, **settings[name], "codec_label": name.removeprefix(f"{adapter}-"),
                        "trainable_parameters": entries[adapter],
                        "bytes_up_per_client_round": bytes_up_per_client_round(args.out, row),
                        "runs": row["runs"], "finished": row["finished"], "metric": row["metric"],
                        "final": row["final"], "mb_up": row["mb_up"], "wall_s": row["wall_s"],
                        "problem_runs": row["problem_runs"]})
    write(args.out, "adapters", {"benchmark": "adapters", "protocol": args.protocol,
                                 "seeds": document["plan"]["seeds"], "ranks": RANKS,
                                 "confidence": document["confidence"], "results": results})


if __name__ == "__main__":
    main()
