"""Scale figures, printed as JSON (and saved to benchmarks/results/scale.json):

- Aggregation: the coordinator's aggregation path (reply check, decode, fold; no training) for 10, 100 and 1000
  clients of a 10M-entry update, each count in a fresh process: peak memory (RSS, and its growth over the process
  with the payloads loaded) and time. The streaming FedAvg path beside the pre-streaming one that held every
  decoded update (run where it fits in memory), and the median, which needs the stack and shows its bound.
- ComPEFT fold: per client at 10M entries and density 0.05, the coordinator's check-and-fold straight from the
  sparse ternary form beside the earlier decode-to-dense-then-fold, same payloads in one process, medians and their
  ratio, and whether the two running sums are bit-identical.
- Simulation: 200 clients of the encoder preset, 10 % sampled per round, on the CPUs given to Ray: wall time, peak
  memory of the driver and of the whole process tree, and how many Ray actors trained them.

    python benchmarks/scale.py [--quick] [--entries N] [--clients 10,100,1000] [--skip-simulation] [--fold-only]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.aggregation import RoundAggregator  # noqa: E402
from server.federation import ClientReply, acceptor, read_reply  # noqa: E402
from server.run_config import AggregationSettings, resolve  # noqa: E402
from strategies import fedavg, messages  # noqa: E402
from strategies.codecs.registry import encode_update  # noqa: E402
from strategies.downlink import digest_prefix  # noqa: E402

TENSORS = 20  # the update is cut into this many tensors, as a model's would be
DISTINCT = 4  # distinct client payloads, cycled (every client's payload is still checked and decoded)
ROUND = 1
DIGEST = "5a" * 32
MB = 1 << 20


def _layout(entries: int) -> dict[str, tuple[int, ...]]:
    size = entries // TENSORS
    return {f"layer{i:02d}.weight": (size,) for i in range(TENSORS)}


def _config(codec: str) -> dict:
    return {"preset": "encoder", "codec": codec}


def write_payloads(folder: Path, codec: str, entries: int) -> list[Path]:
    """DISTINCT encoded client updates of the layout, as files a child process reads."""
    cfg = resolve(_config(codec))
    paths = []
    for k in range(DISTINCT):
        gen = torch.Generator().manual_seed(k)
        update = {name: torch.randn(shape, generator=gen) * 1e-3 for name, shape in _layout(entries).items()}
        payload = encode_update(cfg.uplink, update, round_id=ROUND)
        path = folder / f"{codec}-{k}.bin"
        path.write_bytes(payload)
        paths.append(path)
    return paths


def _reply(payload: bytes, index: int) -> RecordDict:
    """What a client's train reply carries: the encoded update and the metrics the coordinator checks."""
    return RecordDict({
        messages.UPDATE: ConfigRecord({messages.ENCODED_UPDATE: payload}),
        messages.METRICS: MetricRecord({"num-examples": 32 + index % 7, "train-loss": 0.5, "partition-id": index,
                                        "state-digest-48": digest_prefix(DIGEST)}),
    })


def child(codec: str, mode: str, clients: int, entries: int, paths: list[str]) -> dict:
    """One aggregation run in this process: ``clients`` replies through the coordinator's check-decode-fold path."""
    torch.set_num_threads(int(os.environ.get("SCALE_THREADS", "2")))
    payloads = [Path(p).read_bytes() for p in paths]
    cfg = resolve(_config(codec))
    layout = _layout(entries)
    accept = acceptor(cfg, ROUND, layout)
    baseline = psutil.Process().memory_info().rss
    started = time.perf_counter()
    held: list[dict[str, torch.Tensor]] = []
    weights: list[float] = []
    aggregator = RoundAggregator(AggregationSettings(rule="median" if mode == "median" else "fedavg"), ROUND,
                                 cfg.uplink.impl)
    for i in range(clients):
        update, weight, _ = read_reply(_reply(payloads[i % len(payloads)], i), accept, DIGEST, ClientReply(0))
        if mode == "held":  # before streaming: every decoded update kept, dense, until the round ends
            held.append(cfg.uplink.impl.dense(update))
            weights.append(weight)
        else:
            aggregator.add((False, i, i), update, weight)
        del update
    result = fedavg.weighted_mean(held, weights) if mode == "held" else aggregator.result()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert set(result) == set(layout)
    return {"codec": codec, "mode": mode, "clients": clients, "entries": entries,
            "payload_bytes": len(payloads[0]), "aggregation_s": seconds, "s_per_client": seconds / clients,
            "baseline_rss_mb": baseline / MB, "peak_rss_mb": peak / MB, "growth_mb": (peak - baseline) / MB,
            "update_fp32_mb": entries * 4 / MB}


def aggregation_rows(entries: int, counts: list[int], held_max: int, median_max: int) -> list[dict]:
    """Every (codec, mode, clients) in its own process, so each peak is that run's alone."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for codec in ("compeft", "dense"):
            paths = [str(p) for p in write_payloads(Path(folder), codec, entries)]
            for mode, limit in (("streaming", max(counts)), ("held", held_max), ("median", median_max)):
                for clients in counts:
                    if clients > limit:
                        continue
                    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(
                        {"codec": codec, "mode": mode, "clients": clients, "entries": entries, "paths": paths})],
                        capture_output=True, text=True, check=True)
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    print(json.dumps(row), file=sys.stderr)
                    rows.append(row)
    return rows


def summarise(rows: list[dict], counts: list[int]) -> dict:
    """Ratios from the rows: memory growth and time per client across client counts, held vs streaming."""
    out: dict = {}
    low, high = min(counts), max(counts)
    for codec in ("compeft", "dense"):
        by = {(r["mode"], r["clients"]): r for r in rows if r["codec"] == codec}
        stream_low, stream_high = by[("streaming", low)], by[("streaming", high)]
        out[codec] = {
            f"streaming_peak_rss_mb_{high}_over_{low}": stream_high["peak_rss_mb"] / stream_low["peak_rss_mb"],
            f"streaming_growth_mb_{low}_to_{high}": [by[("streaming", c)]["growth_mb"] for c in counts],
            f"streaming_time_{high}_over_{low}": stream_high["aggregation_s"] / stream_low["aggregation_s"],
            "streaming_s_per_client": [by[("streaming", c)]["s_per_client"] for c in counts],
            "streaming_s_per_client_median": statistics.median(by[("streaming", c)]["s_per_client"] for c in counts),
        }
        shared = [c for c in counts if ("held", c) in by]
        if shared:
            c = max(shared)
            out[codec][f"held_over_streaming_peak_rss_at_{c}"] = by[("held", c)]["peak_rss_mb"] / by[(
                "streaming", c)]["peak_rss_mb"]
    return out


def fold_comparison(entries: int, clients: int, density: float = 0.05) -> dict:
    """Per-client seconds to check and fold a ComPEFT payload: sparse (what the coordinator does) against decoding
    to dense tensors first (what it did), alternating on the same payloads; and whether the sums agree bit for bit."""
    cfg = resolve({**_config("compeft"), "compeft-density": density})
    layout = _layout(entries)
    codec = cfg.uplink.impl
    accept = acceptor(cfg, ROUND, layout)
    payloads = []
    for k in range(DISTINCT):
        gen = torch.Generator().manual_seed(k)
        update = {name: torch.randn(shape, generator=gen) * 1e-3 for name, shape in layout.items()}
        payloads.append(encode_update(cfg.uplink, update, round_id=ROUND))
    sparse_mean, dense_mean = fedavg.RunningMean(), fedavg.RunningMean()
    sparse_s, dense_s = [], []
    for i in range(clients):
        payload, weight = payloads[i % DISTINCT], float(32 + i % 7)
        started = time.perf_counter()
        sparse_mean.add(accept(payload), weight)
        sparse_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        dense_mean.add(codec.decode(payload, expected_round=ROUND, expected_layout=layout), weight)
        dense_s.append(time.perf_counter() - started)
    sparse_result, dense_result = sparse_mean.result(), dense_mean.result()
    identical = all(torch.equal(sparse_result[n], dense_result[n]) for n in layout)
    return {"entries": entries, "density": density, "clients": clients, "payload_bytes": len(payloads[0]),
            "sparse_fold_s_per_client_median": statistics.median(sparse_s),
            "decode_then_fold_s_per_client_median": statistics.median(dense_s),
            "speedup": statistics.median(dense_s) / statistics.median(sparse_s), "bit_identical": identical}


def simulation_row(clients: int, fraction: float, rounds: int, out_dir: Path) -> dict:
    """Run ``fedsqueeze simulate`` with ``clients`` clients, sampling the process tree's memory as it goes."""
    config = f"num-clients={clients} fraction-train={fraction} num-server-rounds={rounds} partitioner='iid'"
    env = {**os.environ, "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "simulations.cli", "simulate", "--preset", "encoder",
                             "--run-config", config, "--out", str(out_dir)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak_tree = peak_driver = 0
    actors: set[int] = set()
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            rss = {}
            for p in tree:
                try:
                    rss[p.pid] = p.memory_info().rss
                    if "ClientAppActor" in " ".join(p.cmdline()) or p.name().startswith("ray::ClientApp"):
                        actors.add(p.pid)
                except psutil.Error:
                    continue
            peak_tree = max(peak_tree, sum(rss.values()))
            peak_driver = max(peak_driver, rss.get(proc.pid, 0))
        except psutil.Error:
            pass
        time.sleep(0.5)
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"simulation failed ({proc.returncode}): {stderr[-2000:]}")
    summary = json.loads((out_dir / "summary.json").read_text())
    return {"clients": clients, "fraction_train": fraction, "rounds": rounds,
            "clients_per_round": max(1, round(fraction * clients)), "wall_s": time.perf_counter() - started,
            "peak_driver_rss_mb": peak_driver / MB, "peak_tree_rss_mb": peak_tree / MB,
            "ray_actors_seen": len(actors), "cpus": os.cpu_count(),
            "accuracy_base": summary["metric_base"], "accuracy_final": summary["metric_final"],
            "clients_failed_total": summary["clients_failed_total"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1M entries, 10/100 clients, a 40-client simulation")
    parser.add_argument("--entries", type=int, default=0)
    parser.add_argument("--clients", default="")
    parser.add_argument("--skip-simulation", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    parser.add_argument("--fold-only", action="store_true", help="only the ComPEFT sparse-fold comparison")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(spec["codec"], spec["mode"], spec["clients"], spec["entries"], spec["paths"])))
        return
    entries = args.entries or (1_000_000 if args.quick else 10_000_000)
    counts = [int(c) for c in args.clients.split(",")] if args.clients else ([10, 100] if args.quick else
                                                                            [10, 100, 1000])
    torch.set_num_threads(int(os.environ.get("SCALE_THREADS", "2")))
    fold = fold_comparison(entries, 20)
    if args.fold_only:
        print(json.dumps({"compeft_fold": fold}, indent=2))
        return
    rows = aggregation_rows(entries, counts, held_max=100, median_max=100 if args.quick else 50)
    report: dict = {"machine": {"cpus": os.cpu_count(), "memory_gb": psutil.virtual_memory().total / (1 << 30),
                                "torch_threads": int(os.environ.get("SCALE_THREADS", "2"))},
                    "aggregation": {"entries": entries, "tensors": TENSORS, "rows": rows,
                                    "summary": summarise(rows, counts)},
                    "compeft_fold": fold}
    if not args.skip_simulation:
        with tempfile.TemporaryDirectory() as folder:
            clients = 40 if args.quick else 200
            report["simulation"] = simulation_row(clients, 0.1, 1 if args.quick else 2, Path(folder))
    text = json.dumps(report, indent=2)
    print(text)
    if not args.quick:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
