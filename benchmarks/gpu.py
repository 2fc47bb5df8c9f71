"""GPU clients, CPU vs CUDA side by side: local training tokens/s, codec encode/decode time, Ferret basis identity.

Prints JSON and writes it to ``benchmarks/results/gpu.json`` (``--out`` to change). Three measurements, each on
the CPU and, when ``torch.cuda.is_available()``, on CUDA in the same run, with the CUDA/CPU ratio:

- training: tokens per second of ``train_locally`` (the client's real loop: AdamW on the LoRA adapter, batches
  of the preset's size) for the encoder preset's model (all-MiniLM-L6-v2) and, unless ``--quick``, the default
  SmolLM2-135M LoRA; CPU at precision ``auto`` (fp32 weights, bf16 autocast only where the CPU has native bf16),
  CUDA at ``bf16`` (frozen base kept in bf16, adapter fp32) and at ``fp32``. Tokens are the real (unpadded)
  tokens of the timed batches; a warm-up pass is not timed.
- codecs: median seconds to encode and to decode a ``--entries`` (10M) fp32 update of 20 tensors with compeft
  (density 0.05, global scope) and ferret (dim 64, blocks of 65536), the tensors on the measured device (compeft
  decodes on the CPU; its CUDA figure includes the copy of the result to the GPU).
- ferret_basis_bit_identical: whether CPU and CUDA draw the same buckets and signs and rebuild the same bits.

Without CUDA it still runs and reports ``"cuda": null`` with the reason. Usage:
python benchmarks/gpu.py [--quick] [--entries 10000000] [--repeats 5] [--out benchmarks/results/gpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from client.task.build import base_weight_dtype, build_task, load_splits
from client.task.loop import train_locally, training_order
from client.task.precision import resolve_precision
from client.task.task_keys import task_spec
from strategies.codecs import compeft, ferret
from strategies.random_basis import buckets_and_signs

RESULTS = Path(__file__).resolve().parent / "results" / "gpu.json"
FERRET = {"seed": 2**40 + 9, "dim": 64, "block_size": 65536}
COMPEFT_DENSITY = 0.05


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(function: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls after one untimed warm-up call (CUDA synchronised)."""
    function()
    _sync(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def cuda_info() -> tuple[dict[str, Any] | None, str]:
    """The CUDA device's description, or None and why there is none."""
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (a CPU-only build)"
        return None, f"torch.cuda.is_available() is False (torch {torch.__version__}, CUDA runtime {built})"
    properties = torch.cuda.get_device_properties(0)
    return {"device": properties.name, "capability": f"{properties.major}.{properties.minor}",
            "memory_gib": round(properties.total_memory / 2**30, 1), "bf16": torch.cuda.is_bf16_supported(),
            "torch_cuda": torch.version.cuda}, ""


def training_row(preset: str, device: str, precision: str, steps: int) -> dict[str, Any]:
    """Tokens/s of ``steps`` timed local training steps of ``preset`` on ``device`` at ``precision``."""
    spec = task_spec({"preset": preset, "device": device, "precision": precision})
    train, _ = load_splits(spec)
    task = build_task(spec, train)
    data = train.dataset
    train_locally(task, data, steps=2, batch_size=spec.batch_size, lr=spec.lr, seed=1)  # warm-up
    order = training_order(len(data), steps * spec.batch_size, 2)  # the order train_locally draws with seed 2
    encoded = [task.head.encode(texts) for texts, _ in task.batches(data, order, spec.batch_size)]
    tokens = sum(int(batch["attention_mask"].sum()) for batch in encoded)
    padded = sum(batch["input_ids"].numel() for batch in encoded)
    if task.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(task.device)
    _sync(task.device)
    started = time.perf_counter()
    result = train_locally(task, data, steps=steps, batch_size=spec.batch_size, lr=spec.lr, seed=2)
    _sync(task.device)
    seconds = time.perf_counter() - started
    row: dict[str, Any] = {
        "device": str(task.device), "precision": resolve_precision(spec.precision, task.device),
        "frozen_base_dtype": str(base_weight_dtype(spec, task.device)).removeprefix("torch."),
        "steps": result.steps, "batch_size": spec.batch_size, "max_length": spec.max_length,
        "tokens": tokens, "padded_tokens": padded, "seconds": seconds, "tokens_per_s": tokens / seconds,
        "padded_tokens_per_s": padded / seconds, "step_s": seconds / result.steps, "train_loss": result.train_loss,
    }
    if task.device.type == "cuda":
        row["peak_memory_mib"] = torch.cuda.max_memory_allocated(task.device) / 2**20
    del task
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def training(model_rows: list[tuple[str, str, int]], cuda: bool) -> list[dict[str, Any]]:
    """One entry per (preset, model, steps): the CPU row, the CUDA rows, and CUDA/CPU tokens/s ratios."""
    out = []
    for preset, model, steps in model_rows:
        started = time.perf_counter()
        entry: dict[str, Any] = {"preset": preset, "model": model, "trainable": "lora",
                                 "cpu": training_row(preset, "cpu", "auto", steps)}
        if cuda:
            entry["cuda_bf16_base"] = training_row(preset, "cuda", "bf16", steps * 4)
            entry["cuda_fp32"] = training_row(preset, "cuda", "fp32", steps * 4)
            cpu_rate = entry["cpu"]["tokens_per_s"]
            entry["cuda_bf16_vs_cpu"] = entry["cuda_bf16_base"]["tokens_per_s"] / cpu_rate
            entry["cuda_fp32_vs_cpu"] = entry["cuda_fp32"]["tokens_per_s"] / cpu_rate
            entry["bf16_base_vs_fp32_on_cuda"] = (entry["cuda_bf16_base"]["tokens_per_s"]
                                                  / entry["cuda_fp32"]["tokens_per_s"])
        else:
            entry["cuda_bf16_base"] = entry["cuda_fp32"] = None
        entry["wall_s"] = time.perf_counter() - started
        out.append(entry)
    return out


def _update(entries: int, tensors: int = 20) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    size = entries // tensors
    return {f"layers.{i}.weight": torch.randn(size, generator=generator) * 1e-3 for i in range(tensors)}


def _compeft_figures(update: dict[str, torch.Tensor], layout: dict[str, tuple[int, ...]], device: torch.device,
                     repeats: int) -> dict[str, Any]:
    """ComPEFT encode/decode medians on ``device`` (decode runs on the CPU, then copies to the device)."""
    def encode(u: dict[str, torch.Tensor] = update) -> bytes:
        return compeft.encode(u, density=COMPEFT_DENSITY)
    payload = encode()

    def decode(p: bytes = payload) -> dict[str, torch.Tensor]:
        return {n: t.to(device) for n, t in compeft.decode(p, expected_layout=layout).items()}
    figures = {"encode_s": _median_seconds(encode, device, repeats),
               "decode_s": _median_seconds(decode, device, repeats), "payload_bytes": len(payload)}
    if device.type == "cpu":  # the engine a CUDA update uses, here on the CPU
        figures["encode_torch_engine_s"] = _median_seconds(
            lambda u=update: compeft.encode(u, density=COMPEFT_DENSITY, engine="torch"), device, repeats)
    return figures


def _ferret_figures(update: dict[str, torch.Tensor], layout: dict[str, tuple[int, ...]], device: torch.device,
                    repeats: int) -> dict[str, Any]:
    """Ferret encode/decode medians on ``device`` (both run where the update is)."""
    def encode(u: dict[str, torch.Tensor] = update) -> bytes:
        return ferret.encode(u, **FERRET)
    payload = encode()

    def decode(p: bytes = payload, u: dict[str, torch.Tensor] = update) -> dict[str, torch.Tensor]:
        return ferret.decode(p, like=u)
    return {"encode_s": _median_seconds(encode, device, repeats),
            "decode_s": _median_seconds(decode, device, repeats), "payload_bytes": len(payload)}


# codec name, its options as measured, how to time it, and a note for the row.
CODEC_BENCHES = (
    ("compeft", {"density": COMPEFT_DENSITY, "scope": "global"}, _compeft_figures,
     "compeft decodes on the CPU (numpy); its CUDA decode_s includes the copy to the GPU"),
    ("ferret", {"dim": FERRET["dim"], "block_size": FERRET["block_size"]}, _ferret_figures, None),
)


def codec_rows(entries: int, repeats: int, cuda: bool) -> list[dict[str, Any]]:
    """Median encode/decode seconds of compeft and ferret on CPU and CUDA, and CUDA speed-ups."""
    update = _update(entries)
    layout = {name: tuple(t.shape) for name, t in update.items()}
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if cuda else [])
    rows = []
    for codec, options, figures, note in CODEC_BENCHES:
        row: dict[str, Any] = {"codec": codec, "entries": sum(t.numel() for t in update.values()),
                               "tensors": len(update), "repeats": repeats, "options": options}
        for device in devices:
            row[device.type] = figures({name: t.to(device) for name, t in update.items()}, layout, device, repeats)
        if cuda:
            row["encode_speedup_cuda_vs_cpu"] = row["cpu"]["encode_s"] / row["cuda"]["encode_s"]
            row["decode_speedup_cuda_vs_cpu"] = row["cpu"]["decode_s"] / row["cuda"]["decode_s"]
        else:
            row["cuda"] = None
        if note:
            row["note"] = note
        rows.append(row)
    return rows


def ferret_basis_identical(entries: int) -> bool:
    """CPU and CUDA draw the same buckets and signs (several seeds and blocks) and rebuild the same bits."""
    cases = ((0, 0, 1, 0, 65536), (FERRET["seed"], 3, 64, 0, 65536), (2**63 + 5, 2**33 + 1, 4096, 7, 1 << 20),
             (2**64 - 1, 77, 2**20, 2**31 - (1 << 20), 2**31))
    for seed, block, directions, start, stop in cases:
        cpu = buckets_and_signs(seed, block, directions, start, stop)
        gpu = buckets_and_signs(seed, block, directions, start, stop, device="cuda")
        if not (torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[1], gpu[1].cpu())):
            return False
    update = _update(min(entries, 2_000_000))
    payload = ferret.encode(update, **FERRET)
    cpu_rebuilt = ferret.decode(payload, like=update)
    gpu_rebuilt = ferret.decode(payload, like={n: t.cuda() for n, t in update.items()})
    return all(torch.equal(cpu_rebuilt[n], gpu_rebuilt[n].cpu()) for n in update)


def main() -> None:
    """Measure and print JSON; write it to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="encoder model only, 4 training steps, 3 repeats")
    parser.add_argument("--entries", type=int, default=10_000_000, help="entries of the codec update")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per codec figure (median)")
    parser.add_argument("--out", default=str(RESULTS), help="where to write the JSON ('' = print only)")
    args = parser.parse_args()
    started = time.perf_counter()
    cuda, reason = cuda_info()
    repeats = min(args.repeats, 3) if args.quick else args.repeats
    models = [("encoder", "all-minilm-l6-v2", 4 if args.quick else 16)]
    if not args.quick:
        models.append(("fortunes", "smollm2-135m-instruct", 6))
    result: dict[str, Any] = {
        "benchmark": "gpu", "quick": args.quick, "machine": platform.machine(), "processor": platform.processor(),
        "torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "cuda": cuda,
    }
    if cuda is None:
        result["cuda_reason"] = reason
    result["training"] = training(models, cuda is not None)
    result["codecs"] = codec_rows(args.entries, repeats, cuda is not None)
    result["ferret_basis_bit_identical"] = ferret_basis_identical(args.entries) if cuda is not None else None
    result["wall_s"] = time.perf_counter() - started
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
