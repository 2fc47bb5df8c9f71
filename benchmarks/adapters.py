"""Every PEFT adapter family on the SFT default, each with the dense codec, ComPEFT 5 % with error feedback and
Ferret: trainable parameters, bytes sent up per client and round, held-out response perplexity and ROUGE-L after
the same rounds, same preset and seed.

Each adapter runs at its PEFT config class's default rank (LoRA-like families at the preset's r = 8; VeRA 256,
RandLoRA 32, MiSS 64, ShiRA 32): what a user who picks the family gets. Runs ``fedsqueeze simulate`` once per
variant (each in its own process, one after the other), writes ``adapters.json`` to ``--out`` and prints it.
Usage: python benchmarks/adapters.py --out runs/adapters [--rounds 3] [--only vera shira] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from accuracy_vs_bytes import run_variant

RANKS = {"lora": 8, "dora": 8, "loha": 8, "lokr": 8, "vera": 256, "randlora": 32, "miss": 64, "shira": 32}
CODECS: dict[str, dict[str, object]] = {
    "dense": {"codec": "dense"},
    "compeft-0.05+ef": {"codec": "compeft", "compeft-density": 0.05, "compeft-alpha-scale": 4.0,
                        "error-feedback": True},
    "ferret": {"codec": "ferret", "ferret-dim": 1024, "ferret-block-size": 65536},
}


def trainable_parameters(adapter: str, preset: str) -> int:
    """Entries a client sends for ``adapter`` (its trainable tensors), counted on the built task's layout."""
    from client.task.build import build_task, load_splits
    from client.task.task_keys import task_spec

    spec = task_spec({"preset": preset, "adapter": adapter, "lora-r": RANKS[adapter]})
    train, _ = load_splits(spec)
    return sum(math.prod(shape) for shape in build_task(spec, train).trainable_shapes().values())


def main() -> None:
    """Run every adapter x codec and write the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/adapters"))
    parser.add_argument("--preset", default="sft")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=sorted(RANKS), help="these adapters only")
    parser.add_argument("--codecs", nargs="+", choices=sorted(CODECS), default=list(CODECS))
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs whose run config is unchanged")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = {"preset": args.preset, "num-server-rounds": args.rounds, "seed": 0}
    results = []
    for adapter in args.only or RANKS:
        entries = trainable_parameters(adapter, args.preset)
        for codec in args.codecs:
            overrides = {"adapter": adapter, "lora-r": RANKS[adapter], **CODECS[codec]}
            row = run_variant(f"{adapter}-{codec}", overrides, base, args.out, reuse=args.reuse)
            rounds = [json.loads(line) for line in (Path(row["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
            sent = [c["bytes_up"] for r in rounds for c in r["clients"] if c["bytes_up"]]
            row.update({"adapter": adapter, "codec_label": codec, "trainable_parameters": entries,
                        "bytes_up_per_client_round": sum(sent) / max(1, len(sent))})
            results.append(row)
            print(json.dumps({k: row[k] for k in ("label", "trainable_parameters", "bytes_up_per_client_round",
                                                  "metric_final")}), flush=True)
    document = {"benchmark": "adapters", "preset": args.preset, "rounds": args.rounds, "seed": 0, "ranks": RANKS,
                "results": results}
    (args.out / "adapters.json").write_text(json.dumps(document, indent=2))
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
