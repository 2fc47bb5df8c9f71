"""A real deployment under load: one TLS SuperLink with node authentication and N ``fedsqueeze node`` processes
(SuperNode + warm trainer each) on 127.0.0.1, several rounds of instruction tuning with ComPEFT updates. The model is
a tiny causal LM the benchmark builds from a config (a two-layer Llama with SmolLM2's tokenizer, see
simulations/testing/tiny_model.py), so that 32 nodes fit on one machine: what grows with N here is the federation's own
cost (transport, the SuperLink, the coordinator's checks and aggregation), not the model's.

Per size: each round's wall time, the time from its first to its last reply, bytes both ways; the ServerApp's CPU
seconds and peak RSS, the SuperLink's peak RSS, the nodes' summed RSS; and how each grows against the smallest N.
Prints JSON and writes benchmarks/results/deployment_load.json.

With ``--link`` it measures instead the slowdown of a slow, lossy link (``--delay-ms`` each way, ``--loss-pct``):
the smallest N on loopback and through the shaped link, side by side; the link is the kernel's ``tc netem`` in a
network namespace where the kernel has it, else the TCP relay of tests/link_faults.py (which says which), written
to benchmarks/results/deployment_link.json.

    python benchmarks/deployment_load.py [--nodes 8 16 32] [--rounds 3] [--work runs/deployment_load]
    python benchmarks/deployment_load.py --link --nodes 4 [--delay-ms 50] [--loss-pct 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root: tests/ holds the process helpers

from simulations.testing.tiny_model import write_tiny_causal_lm  # noqa: E402
from tests.link_faults import LinkUnavailable, LossyRelay, netem_namespace  # noqa: E402
from tests.load_harness import measure_load  # noqa: E402

GROWTH_KEYS = ("steady_round_s", "steady_first_to_last_reply_s", "coordinator_cpu_s", "coordinator_peak_rss_mb",
               "superlink_peak_rss_mb", "nodes_peak_rss_mb")


def growth(results: list[dict]) -> list[dict]:
    """Each size's figures as ratios to the smallest size's, beside the ratio of node counts."""
    base = results[0]
    rows = []
    for result in results:
        row = {"nodes": result["nodes"], "nodes_ratio": result["nodes"] / base["nodes"]}
        for key in GROWTH_KEYS:
            if result.get(key) is not None and base.get(key):
                row[f"{key}_ratio"] = result[key] / base[key]
        rows.append(row)
    return rows


def shaped_link(stack: contextlib.ExitStack, delay_ms: float, loss_pct: float) -> tuple[str, dict, LossyRelay | None]:
    """The link to measure: netem in a namespace when the kernel allows, else the relay; (kind, link args, relay)."""
    try:
        namespace, host = stack.enter_context(netem_namespace(f"fsqb{os.getpid() % 10000}", delay_ms, loss_pct))
        return (f"netem: {delay_ms} ms each way, {loss_pct} % loss",
                dict(fleet_host="0.0.0.0", node_dial=lambda port: f"{host}:{port}",
                     node_prefix=("ip", "netns", "exec", namespace), cert_hosts=(host,)), None)
    except LinkUnavailable as exc:
        relay = LossyRelay(("127.0.0.1", 0), delay_s=delay_ms / 1000, loss_probability=loss_pct / 100)
        stack.callback(relay.stop)

        def through_relay(fleet_port: int) -> str:
            relay.target = ("127.0.0.1", fleet_port)
            return f"localhost:{relay.port or relay.start()}"
        return (f"TCP relay (netem unavailable: {exc}): {delay_ms} ms each way, {loss_pct} % of chunks held one "
                "RTO", dict(node_dial=through_relay), relay)


def link_main(args: argparse.Namespace, work: Path, model_dir: Path) -> dict:
    """Loopback and the shaped link, same N and rounds, side by side."""
    nodes = min(args.nodes)
    clean = measure_load(nodes, args.rounds, work / "loopback", model_dir)
    with contextlib.ExitStack() as stack:
        kind, link, relay = shaped_link(stack, args.delay_ms, args.loss_pct)
        shaped = measure_load(nodes, args.rounds, work / "shaped", model_dir, link=link)
        counts = {"chunks": relay.chunks, "held_as_lost": relay.losses} if relay is not None else None
    return {"setup": {"nodes": nodes, "rounds": args.rounds, "link": kind, "relay_counts": counts},
            "loopback": clean, "shaped": shaped,
            "steady_round_slowdown": shaped["steady_round_s"] / clean["steady_round_s"],
            "first_round_slowdown": shaped["first_round_s"] / clean["first_round_s"],
            "all_rounds_complete": shaped["all_clients_ok"] and len(shaped["rounds"]) == args.rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default=str(ROOT / "runs" / "deployment_load"))
    parser.add_argument("--out", default=None, help="default benchmarks/results/deployment_load.json "
                                                    "(deployment_link.json with --link)")
    parser.add_argument("--link", action="store_true", help="measure a slow, lossy link's slowdown instead")
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--loss-pct", type=float, default=2.0)
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    model_dir = write_tiny_causal_lm(work / "tiny-causal-lm")
    results_dir = ROOT / "benchmarks" / "results"
    if args.link:
        report = link_main(args, work, model_dir)
        out = Path(args.out or results_dir / "deployment_link.json")
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        return
    results = []
    for nodes in sorted(args.nodes):
        started = time.perf_counter()
        result = measure_load(nodes, args.rounds, work / f"n{nodes}", model_dir)
        result["wall_s"] = time.perf_counter() - started
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "rounds"}), file=sys.stderr, flush=True)
    report = {"setup": {"model": "tiny Llama from a config (2 layers, hidden 64) with SmolLM2's tokenizer",
                        "codec": "compeft", "rounds": args.rounds, "transport": "gRPC + TLS, node authentication",
                        "cpus": os.cpu_count(), "machine": platform.platform(),
                        "torch_threads_per_node": 1},
              "results": results, "growth": growth(results)}
    out = Path(args.out or results_dir / "deployment_load.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
