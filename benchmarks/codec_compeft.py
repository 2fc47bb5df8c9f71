"""ComPEFT codec on LoRA-like deltas: bytes against fp32 and the entropy bound, speed against a numpy copy.

Prints JSON. For each size (default 10M and 100M entries) it builds a delta shaped like LoRA A/B matrices of a
large model (rank 16, width 4096, heavy-tailed Laplace entries with a per-tensor scale), and for each density
encodes and decodes it ``--repeats`` times on one thread. In the same run, and interleaved with those, it times
``numpy.copy`` of an array of the same size (the memory-bandwidth floor), so speed is reported as a ratio of
medians. Beside it, in the same run, the numpy floor: the few whole-array numpy operations any exact top-k ternary
codec written with numpy must run at least once (a read pass for the std, the magnitude keys, compare and compact
the kept positions, gather their signs; on decode a fresh zeroed output and the scatter), on the one concatenated
array, so with no per-tensor work and no position coding. Usage:
python benchmarks/codec_compeft.py [--sizes 10000000 100000000] [--repeats 3]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one thread for numpy's BLAS too (np.dot), set before import
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from strategies.codecs import compeft, magnitude_select
from strategies.codecs.compeft import size as compeft_size

DENSITIES = (0.01, 0.05, 0.1, 0.2)


def lora_like_delta(entries: int, *, rank: int = 16, width: int = 4096, seed: int = 0) -> dict[str, torch.Tensor]:
    """A dict of LoRA A (rank x width) and B (width x rank) deltas with about ``entries`` entries in all."""
    rng = np.random.default_rng(seed)
    per_module = 2 * rank * width
    modules = max(1, round(entries / per_module))
    delta: dict[str, torch.Tensor] = {}
    projections = ("q_proj", "k_proj", "v_proj", "o_proj")
    for index in range(modules):
        layer, projection = divmod(index, len(projections))
        prefix = f"base_model.model.model.layers.{layer}.self_attn.{projections[projection]}"
        for part, shape in (("lora_A", (rank, width)), ("lora_B", (width, rank))):
            scale = np.float32(1e-3 * rng.uniform(0.8, 1.25))
            values = rng.laplace(size=shape).astype(np.float32) * scale
            delta[f"{prefix}.{part}.weight"] = torch.from_numpy(values)
    return delta


def _timed(function, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - started, result


def _floor_encode(flat: np.ndarray, threshold: np.uint32) -> tuple[np.ndarray, np.ndarray]:
    float(np.dot(flat, flat)), float(flat.sum())  # the std's read pass (fp32 accumulators: cheaper than the codec)
    positions = np.flatnonzero(magnitude_select.magnitude_keys(flat) >= threshold)
    return positions, np.signbit(flat[positions])


def _floor_decode(size: int, positions: np.ndarray, negative: np.ndarray) -> np.ndarray:
    dense = np.zeros(size, dtype=np.float32)
    dense[positions] = np.where(negative, np.float32(-1.0), np.float32(1.0))
    return dense


def measure(entries: int, repeats: int) -> list[dict[str, object]]:
    """Figures for one delta size at every density."""
    delta = lora_like_delta(entries)
    total = sum(t.numel() for t in delta.values())
    flat = np.concatenate([t.numpy().reshape(-1) for t in delta.values()])
    rows = []
    for density in DENSITIES:
        encode_s, decode_s, copy_s, floor_encode_s, floor_decode_s = [], [], [], [], []
        payload = b""
        keys = magnitude_select.magnitude_keys(flat)
        kept = compeft.kept_count(density, flat.size)
        threshold = np.partition(keys, keys.size - kept)[keys.size - kept]
        del keys
        for _ in range(repeats):
            seconds, _copy = _timed(np.copy, flat)
            copy_s.append(seconds)
            del _copy
            seconds, payload = _timed(compeft.encode, delta, density=density)
            encode_s.append(seconds)
            seconds, decoded = _timed(compeft.decode, payload)
            decode_s.append(seconds)
            del decoded
            seconds, (positions, negative) = _timed(_floor_encode, flat, threshold)
            floor_encode_s.append(seconds)
            seconds, _dense = _timed(_floor_decode, flat.size, positions, negative)
            floor_decode_s.append(seconds)
            del _dense, positions, negative
        report = compeft_size.size_report(payload)
        copy_median = statistics.median(copy_s)
        codec_s = statistics.median(encode_s) + statistics.median(decode_s)
        floor_s = statistics.median(floor_encode_s) + statistics.median(floor_decode_s)
        rows.append({
            "entries": total,
            "tensors": len(delta),
            "density": density,
            **report.as_dict(),
            "encode_s": statistics.median(encode_s),
            "decode_s": statistics.median(decode_s),
            "numpy_copy_s": copy_median,
            "encode_plus_decode_over_copy": codec_s / copy_median,
            "numpy_floor_encode_s": statistics.median(floor_encode_s),
            "numpy_floor_decode_s": statistics.median(floor_decode_s),
            "numpy_floor_over_copy": floor_s / copy_median,
            "encode_plus_decode_over_numpy_floor": codec_s / floor_s,
        })
    return rows


def main() -> None:
    """Run every size and density and print one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000_000, 100_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [row for size in args.sizes for row in measure(size, args.repeats)]
    at_005 = [r for r in results if r["density"] == 0.05]
    print(json.dumps({
        "benchmark": "codec_compeft",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": 1},
        "repeats": args.repeats,
        "results": results,
        "targets": {
            "max_ratio_to_entropy_bound": max(r["ratio_to_bound"] for r in results),
            "min_compression_ratio_at_density_0.05": min(r["compression_ratio"] for r in at_005) if at_005 else None,
            "max_encode_plus_decode_over_copy": max(r["encode_plus_decode_over_copy"] for r in results),
            "max_numpy_floor_over_copy": max(r["numpy_floor_over_copy"] for r in results),
            "max_encode_plus_decode_over_numpy_floor": max(r["encode_plus_decode_over_numpy_floor"] for r in results),
        },
    }, indent=2))


if __name__ == "__main__":
    main()
