"""Ferret codec on the default model's layouts: bytes per client per round, and projection/rebuild speed.

Prints JSON. For the LoRA adapter and for the full parameters of the default model (SmolLM2-135M-Instruct with the
fortunes preset's LoRA), it reports payload bytes at the chosen (dim, block_size) against the dense fp32 bytes of
the same update and against dense full-parameter FedAvg. For speed it projects and rebuilds ``--speed-entries``
random entries ``--repeats`` times on one thread and, in the same run and interleaved, times one matmul of the
shape a dense random basis would need for the same blocks ((blocks x dim x block_size) @ (blocks x block_size)),
the floor of a dense projection even with its basis given for free. Usage:
python benchmarks/codec_ferret.py [--dim 64] [--block-size 65536] [--speed-entries 4000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from peft import get_peft_model_state_dict

from client.task.adapters import AdapterSettings, wrap_with_lora
from client.task.models import load_causal_lm
from client.task.presets import PRESETS
from strategies.codecs import ferret
from strategies.random_basis import BlockPlan


def default_layouts() -> dict[str, dict[str, tuple[int, ...]]]:
    """Shapes of the default model's LoRA adapter and of all its (untied) parameters."""
    preset = PRESETS["fortunes"]
    model = load_causal_lm(str(preset["model"]))
    full = {name: tuple(p.shape) for name, p in model.named_parameters()}
    lora = AdapterSettings(r=int(preset["lora-r"]), alpha=int(preset["lora-alpha"]), dropout=0.0,
                        targets=tuple(str(preset["lora-targets"]).split(",")))
    peft_model = wrap_with_lora(model, lora, seed=0)
    adapter = {name: tuple(t.shape) for name, t in get_peft_model_state_dict(peft_model).items()}
    return {"lora": adapter, "full": full}


def size_row(name: str, layout: dict[str, tuple[int, ...]], dim: int, block_size: int, dense_full_bytes: int
             ) -> dict:
    """Payload bytes per client per round for one layout (a real encode of a random update of that layout)."""
    update = {n: torch.randn(shape) * 1e-3 for n, shape in layout.items()}
    entries = sum(t.numel() for t in update.values())
    payload = ferret.encode(update, seed=1, dim=dim, block_size=block_size)
    return {"update": name, "entries": entries, "dim": dim, "block_size": block_size,
            "coefficients": BlockPlan(entries, dim, block_size).coefficients, "payload_bytes": len(payload),
            "dense_fp32_bytes": 4 * entries, "ratio_vs_dense_same_update": 4 * entries / len(payload),
            "ratio_vs_dense_full_fedavg": dense_full_bytes / len(payload)}


def _seconds(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def speed_row(entries: int, dim: int, block_size: int, repeats: int, matmul_blocks: int = 4) -> dict:
    """Project and rebuild ``entries`` entries vs a dense-basis projection of the same blocks, medians per 1M.

    The dense floor is one (dim x block_size) @ (block_size) matmul per block, with the basis already in memory
    (timed on ``matmul_blocks`` blocks and scaled), so it leaves out what generating the basis would cost.
    """
    update = {"w": torch.randn(entries)}
    basis = torch.randn(dim, block_size)
    vectors = [torch.randn(block_size) for _ in range(matmul_blocks)]
    payload = ferret.encode(update, seed=1, dim=dim, block_size=block_size)

    def dense_blocks() -> None:
        for vector in vectors:
            torch.mv(basis, vector)

    project_s, rebuild_s, matmul_s = [], [], []
    for _ in range(repeats):  # interleaved so that machine noise hits all three alike
        project_s.append(_seconds(lambda: ferret.project(update, seed=1, dim=dim, block_size=block_size)))
        rebuild_s.append(_seconds(lambda: ferret.decode(payload, like=update)))
        matmul_s.append(_seconds(dense_blocks))
    project = statistics.median(project_s) * 1e6 / entries
    rebuild = statistics.median(rebuild_s) * 1e6 / entries
    matmul = statistics.median(matmul_s) * 1e6 / (matmul_blocks * block_size)
    return {"entries": entries, "dim": dim, "block_size": block_size, "repeats": repeats,
            "project_s_per_million": project, "rebuild_s_per_million": rebuild,
            "dense_basis_matmul_s_per_million": matmul, "project_vs_matmul": project / matmul,
            "rebuild_vs_matmul": rebuild / matmul}


def main() -> None:
    """Measure and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=65536)
    parser.add_argument("--lora-dim", type=int, default=1024, help="dim for the LoRA row (its update is small)")
    parser.add_argument("--speed-entries", type=int, default=4_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layouts = default_layouts()
    dense_full = 4 * sum(torch.Size(shape).numel() for shape in layouts["full"].values())
    sizes = [size_row("full", layouts["full"], args.dim, args.block_size, dense_full),
             size_row("lora", layouts["lora"], args.lora_dim, args.block_size, dense_full)]
    speed = [speed_row(args.speed_entries, dim, args.block_size, args.repeats) for dim in (args.dim, args.lora_dim)]
    print(json.dumps({"benchmark": "codec_ferret", "machine": platform.machine(), "threads": 1,
                      "torch": torch.__version__, "sizes": sizes, "speed": speed}, indent=2))


if __name__ == "__main__":
    main()
