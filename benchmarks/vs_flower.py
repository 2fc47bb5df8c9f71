"""fedsqueeze beside what users run today: the same SFT run with Flower's built-in FedAvg shipping fp32 LoRA weights
in ArrayRecords (``simulations/flower_baseline.py``, the FlowerTune LLM template's shape) and with fedsqueeze
(dense; ComPEFT 0.05 + error feedback with a ComPEFT downlink; Ferret), in simulation and in the real deployment.

Per variant and mode: bytes up and down per round, round wall time (median over rounds 2..N, and the first),
coordinator and node peak RSS (process trees sampled every 0.2 s), final held-out perplexity and ROUGE-L, and the
bytes up it took to reach Flower FedAvg's final perplexity. Deployment: a TLS SuperLink and ``--nodes`` nodes on
this machine; Flower's FedAvg on plain ``flower-supernode`` (a fresh ClientApp process per message, as users run it
today), fedsqueeze on ``fedsqueeze node`` (warm trainer). One torch thread per client everywhere.
Usage: python benchmarks/vs_flower.py [--out runs/vs_flower] [--rounds 3] [--modes simulation deployment]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.deployment_helpers import (  # noqa: E402
    deployment_env,
    start_tls_federation,
    stop_processes,
    submit_and_wait,
)

MB = 1 << 20
TASK = "preset='sft' per-topic=60 heldout=24 eval-samples=8 partitioner='iid' seed=0"
VARIANTS = {
    "flower-fedavg": None,  # Flower's own strategy and apps
    "fedsqueeze-dense": "codec='dense'",
    "fedsqueeze-compeft-0.05+ef": "codec='compeft' compeft-density=0.05 compeft-alpha-scale=4.0 error-feedback=true "
                                  "downlink-codec='compeft' downlink-density=0.05",
    "fedsqueeze-ferret": "codec='ferret' ferret-dim=1024 ferret-block-size=65536",
}


class PeakRss:
    """Samples the resident memory of process trees in a thread; ``peaks`` maps each root's label to its peak."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots
        self.peaks = dict.fromkeys(roots, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for label, pid in self.roots.items():
                try:
                    root = psutil.Process(pid)
                    tree = [root, *root.children(recursive=True)]
                except psutil.Error:
                    continue
                total = 0
                for proc in tree:
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:
                        continue
                self.peaks[label] = max(self.peaks[label], total)

    def stop(self) -> dict[str, float]:
        """Stop sampling; peaks in MB."""
        self._stop.set()
        self._thread.join()
        return {label: peak / MB for label, peak in self.peaks.items()}


def run_config(variant: str, rounds: int, clients: int, out_dir: Path) -> str:
    """The variant's run config (TOML overrides)."""
    extra = VARIANTS[variant] or ""
    return (f"{TASK} {extra} num-clients={clients} num-server-rounds={rounds} wait-for-clients-s=300.0 "
            f"out-dir='{out_dir}'")


def _simulate_command(variant: str, config: str, out_dir: Path, clients: int) -> list[str]:
    if VARIANTS[variant] is None:
        return [sys.executable, "-m", "simulations.flower_baseline", "--clients", str(clients),
                "--run-config", config]
    return [sys.executable, "-m", "simulations.cli", "simulate", "--out", str(out_dir), "--max-parallel",
            str(clients), "--run-config", config]


def simulate(variant: str, rounds: int, clients: int, out_dir: Path) -> dict:
    """One in-process simulation, its process tree's peak memory sampled."""
    env = deployment_env(out_dir.parent)
    proc = subprocess.Popen(_simulate_command(variant, run_config(variant, rounds, clients, out_dir), out_dir,
                                              clients), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    sampler = PeakRss({"tree": proc.pid})
    _, stderr = proc.communicate()
    peaks = sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} simulation failed: {stderr[-3000:]}")
    return {"peak_rss_mb": {"coordinator_and_clients": peaks["tree"]}}


def baseline_app_dir(work: Path) -> Path:
    """A copy of this app whose pyproject names Flower's FedAvg apps as its components (what ``flwr run`` ships)."""
    app = work / "flower-app"
    for package in ("client", "server", "strategies", "protos", "simulations"):
        shutil.copytree(ROOT / package, app / package, ignore=shutil.ignore_patterns("__pycache__"))
    text = (ROOT / "pyproject.toml").read_text()
    text = text.replace('serverapp = "server.app:app"', 'serverapp = "simulations.flower_baseline:server_app"')
    text = text.replace('clientapp = "client.app:app"', 'clientapp = "simulations.flower_baseline:client_app"')
    (app / "pyproject.toml").write_text(text)
    (app / "README.md").write_text("Flower FedAvg baseline for benchmarks/vs_flower.py\n")
    return app


def deploy(variant: str, rounds: int, clients: int, work: Path) -> dict:
    """A TLS SuperLink and ``clients`` nodes on this machine, one run submitted; peak memory per role."""
    work.mkdir(parents=True, exist_ok=True)
    env = deployment_env(work)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    baseline = VARIANTS[variant] is None
    processes: dict[str, subprocess.Popen] = {}
    try:
        start_tls_federation(work, logs=logs, env=env, processes=processes, nodes=clients, warm=not baseline)
        sampler = PeakRss({name: proc.pid for name, proc in processes.items()})
        out_dir = work / "run"
        submit_and_wait(run_config(variant, rounds, clients, out_dir), out_dir=out_dir, logs=logs, env=env,
                        app_dir=baseline_app_dir(work) if baseline else None)
        peaks = sampler.stop()
    finally:
        stop_processes(list(processes.values()))
    nodes = [peak for name, peak in peaks.items() if name != "superlink"]
    return {"peak_rss_mb": {"coordinator": peaks["superlink"], "node_max": max(nodes)}}


def figures(out_dir: Path, target: float | None) -> dict:
    """Bytes, times and quality from a run's metrics.jsonl and summary.json."""
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out_dir / "summary.json").read_text())
    sent, reached = 0, None
    for row in rows:
        sent += row["bytes_up"]
        if reached is None and target is not None and row.get("perplexity", float("inf")) <= target:
            reached = sent
    return {"bytes_up_per_round": statistics.median(r["bytes_up"] for r in rows),
            "bytes_down_per_round": statistics.median(r["bytes_down"] for r in rows),
            "round_s": [r["round_s"] for r in rows],
            "steady_round_s": statistics.median(r["round_s"] for r in rows[1:] or rows),
            "perplexity_final": rows[-1].get("perplexity"), "rouge_l_final": rows[-1].get("rouge_l"),
            "perplexity_base": summary.get("metric_base"), "bytes_up_to_flower_final_perplexity": reached}


def main() -> None:
    """Every variant in every mode, one run at a time; JSON to ``--out`` and stdout."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/vs_flower"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["simulation", "deployment"],
                        choices=["simulation", "deployment"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    results: dict = {}
    for mode in args.modes:
        target = None
        for variant in args.variants:  # Flower's FedAvg first: its final perplexity is the target
            work = (args.out / mode / variant).resolve()
            shutil.rmtree(work, ignore_errors=True)
            started = time.perf_counter()
            if mode == "simulation":
                extra = simulate(variant, args.rounds, args.clients, work / "run")
            else:
                extra = deploy(variant, args.rounds, args.clients, work)
            row = {**figures(work / "run", target), **extra, "wall_s": time.perf_counter() - started}
            if variant == "flower-fedavg":
                target = row["perplexity_final"]
            results.setdefault(mode, {})[variant] = row
            print(json.dumps({mode: {variant: row}}), flush=True)
    document = {"benchmark": "vs_flower", "rounds": args.rounds, "clients": args.clients, "task": TASK,
                "torch_threads_per_client": 1, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vs_flower.json").write_text(json.dumps(document, indent=2))
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
