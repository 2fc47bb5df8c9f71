"""Framework overhead: one simulated Flower round vs the same local training without Flower.

Prints JSON. Both sides run in this process tree on the same machine, one after the other, repeated;
the ratio uses medians. Usage: python benchmarks/round_overhead.py [--preset encoder] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from client.task.build import build_task, load_splits
from client.task.loop import train_locally
from client.task.partition import client_partition
from client.task.quiet import quiet_libraries
from server.run_config import resolve
from simulations.simulate import simulate
from strategies.codecs.registry import encode_update
from strategies.fedavg import subtract


def local_round_s(config: dict) -> float:
    """Wall time of what one client does in a round, without Flower: load, train, delta, encode."""
    cfg = resolve(config)
    started = time.perf_counter()
    train, _ = load_splits(cfg.task)
    partition = client_partition(train.dataset, 0, 1, kind=cfg.task.partitioner, alpha=cfg.task.dirichlet_alpha,
                                 seed=cfg.task.seed, by=train.partition_by)
    task = build_task(cfg.task, train)
    received = task.trainable_state()
    train_locally(task, partition, steps=cfg.task.local_steps, batch_size=cfg.task.batch_size, lr=cfg.task.lr,
                  seed=1)
    encode_update(cfg.uplink, subtract(task.trainable_state(), received), round_id=1)
    return time.perf_counter() - started


def main() -> None:
    """Measure both sides ``--repeats`` times and print medians and their ratio as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="encoder")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(1)
    config = {"preset": args.preset, "num-clients": 1, "num-server-rounds": 1}
    flower_s, local_s = [], []
    for _ in range(args.repeats):
        local_s.append(local_round_s(config))
        with tempfile.TemporaryDirectory() as out:
            simulate(config, out_dir=Path(out), max_parallel=1)
            row = json.loads((Path(out) / "metrics.jsonl").read_text().splitlines()[0])
            flower_s.append(row["round_s"])
    result = {
        "benchmark": "round_overhead",
        "preset": args.preset,
        "repeats": args.repeats,
        "flower_round_s": flower_s,
        "local_round_s": local_s,
        "flower_round_s_median": statistics.median(flower_s),
        "local_round_s_median": statistics.median(local_s),
        "overhead_ratio": statistics.median(flower_s) / statistics.median(local_s),
        "note": "flower round = send global adapter, client loads model+data, trains, encodes, server decodes "
                "and aggregates (metrics.jsonl round_s, evaluation excluded); local = the same client work "
                "in-process without Flower; 1 client, 1 torch thread each",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
