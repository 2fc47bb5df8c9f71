"""A deployment under load, measured: one TLS SuperLink with node authentication, N ``fedsqueeze node`` processes
(SuperNode + warm trainer) on 127.0.0.1, one instruction-tuning run of a tiny causal LM with ComPEFT updates. While it
runs, a sampler reads the coordinator's processes from /proc (via psutil): the ServerApp's CPU seconds and peak RSS,
the SuperLink's peak RSS, and the nodes' summed RSS. Shared by benchmarks/deployment_load.py and its CI test."""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.deployment_helpers import (
    deployment_env,
    metrics_rows,
    start_tls_federation,
    stop_processes,
    submit_and_wait,
)

SAMPLE_S = 0.25


def load_run_config(model_dir: Path, nodes: int, rounds: int, out_dir: Path, codec: str = "compeft") -> str:
    """The run every size runs: the tiny model, small data, one partition per node, ``codec`` updates."""
    return (f"preset='sft' model='{model_dir}' per-topic=40 heldout=16 max-length=64 local-steps=4 batch-size=4 "
            f"lr=0.01 eval-samples=2 max-new-tokens=4 num-clients={nodes} num-server-rounds={rounds} "
            f"partitioner='iid' codec='{codec}' seed=0 wait-for-clients-s=900.0 out-dir='{out_dir}'")


def _peak_rss(proc: psutil.Process) -> int:
    """The process's peak resident set (VmHWM) in bytes."""
    with open(f"/proc/{proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return proc.memory_info().rss


@dataclass
class ProcessSampler:
    """Samples the SuperLink, the ServerApp it starts, and the node process trees every SAMPLE_S seconds."""

    superlink: psutil.Process
    nodes: list[psutil.Process]
    serverapp_cpu_s: float = 0.0
    serverapp_peak_rss: int = 0
    superlink_peak_rss: int = 0
    nodes_rss_peak: int = 0
    nodes_pss_peak: int = 0  # proportional: shared library pages split between the processes that map them
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _serverapps(self) -> list[psutil.Process]:
        return [p for p in self.superlink.children(recursive=True)
                if any("flwr-serverapp" in part for part in p.cmdline())]

    def _sample(self) -> None:
        try:
            self.superlink_peak_rss = max(self.superlink_peak_rss, _peak_rss(self.superlink))
            for app in self._serverapps():
                times = app.cpu_times()
                self.serverapp_cpu_s = max(self.serverapp_cpu_s, times.user + times.system)
                self.serverapp_peak_rss = max(self.serverapp_peak_rss, _peak_rss(app))
            tree = [proc for node in self.nodes for proc in [node, *node.children(recursive=True)]]
            self.nodes_rss_peak = max(self.nodes_rss_peak, sum(proc.memory_info().rss for proc in tree))
            if self.samples % 4 == 0:  # PSS reads smaps: once a second is enough
                self.nodes_pss_peak = max(self.nodes_pss_peak, sum(proc.memory_full_info().pss for proc in tree))
            self.samples += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError, ProcessLookupError):
            pass  # a process ended between listing and reading: the next sample sees the rest

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def start(self) -> None:
        """Start sampling in a background thread."""
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (after one last sample)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def round_figures(row: dict) -> dict:
    """One round's load figures from its metrics row: wall time, first-to-last reply, clients, bytes."""
    replies = [c["reply_s"] for c in row["clients"] if c.get("reply_s") is not None]
    return {"round": row["round"], "round_s": row["round_s"], "clients_ok": row["clients_ok"],
            "clients_sampled": row["clients_sampled"],
            "first_reply_s": min(replies) if replies else None, "last_reply_s": max(replies) if replies else None,
            "first_to_last_reply_s": (max(replies) - min(replies)) if replies else None,
            "bytes_up": row["bytes_up"], "bytes_down": row["bytes_down"]}


def measure_load(nodes: int, rounds: int, work: Path, model_dir: Path, link: dict | None = None) -> dict:
    """Start the federation of ``nodes`` nodes in ``work``, run ``rounds`` rounds, and return the figures.
    ``link`` is passed on to start_tls_federation (a shaped link: a relay's address, a namespace's prefix)."""
    work.mkdir(parents=True, exist_ok=True)
    env = deployment_env(work)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    processes: dict[str, subprocess.Popen] = {}
    out_dir = work / "run"
    started = time.perf_counter()
    try:
        start_tls_federation(work, logs=logs, env=env, processes=processes, nodes=nodes, identities=True,
                             **(link or {}))
        sampler = ProcessSampler(psutil.Process(processes["superlink"].pid),
                                 [psutil.Process(p.pid) for name, p in processes.items() if name != "superlink"])
        sampler.start()
        submitted = time.perf_counter()
        submit_and_wait(load_run_config(model_dir, nodes, rounds, out_dir), out_dir=out_dir, logs=logs, env=env)
        run_s = time.perf_counter() - submitted
        sampler.stop()
    finally:
        stop_processes(list(processes.values()))
    rows = metrics_rows(out_dir)
    per_round = [round_figures(row) for row in rows]
    steady = [r["round_s"] for r in per_round[1:]] or [per_round[0]["round_s"]]
    spread = [r["first_to_last_reply_s"] for r in per_round[1:] if r["first_to_last_reply_s"] is not None]
    mb = 1 / 2**20
    return {"nodes": nodes, "rounds": per_round, "steady_round_s": statistics.median(steady),
            "steady_first_to_last_reply_s": statistics.median(spread) if spread else None,
            "first_round_s": per_round[0]["round_s"], "run_s": run_s,
            "setup_s": submitted - started, "all_clients_ok": all(r["clients_ok"] == nodes for r in per_round),
            "coordinator_cpu_s": sampler.serverapp_cpu_s, "coordinator_peak_rss_mb": sampler.serverapp_peak_rss * mb,
            "superlink_peak_rss_mb": sampler.superlink_peak_rss * mb, "nodes_peak_rss_mb": sampler.nodes_rss_peak * mb,
            "node_peak_rss_mb_mean": sampler.nodes_rss_peak * mb / nodes,
            "nodes_peak_pss_mb": sampler.nodes_pss_peak * mb,
            "node_peak_pss_mb_mean": sampler.nodes_pss_peak * mb / nodes, "samples": sampler.samples,
            "bytes_up_per_round": statistics.median(r["bytes_up"] for r in per_round),
            "bytes_down_per_round": statistics.median(r["bytes_down"] for r in per_round)}
