"""Many simulated clients: Flower reuses a few Ray actors for all of them, and every sampled client trains."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psutil
import pytest

from simulations.simulate import simulate

pytestmark = pytest.mark.slow


def _client_actors(seen: set[int], stop: threading.Event) -> None:
    """Record the PIDs of Ray's ClientApp actor processes under this process until ``stop``."""
    me = psutil.Process()
    while not stop.is_set():
        for child in me.children(recursive=True):
            try:
                if child.name().startswith("ray::ClientApp") or "ClientAppActor" in " ".join(child.cmdline()):
                    seen.add(child.pid)
            except psutil.Error:
                continue
        stop.wait(0.2)


def test_sixty_clients_train_on_two_reused_actors(tmp_path: Path) -> None:
    config = {"preset": "encoder", "num-server-rounds": 2, "num-clients": 60, "fraction-train": 0.1,
              "partitioner": "iid", "local-steps": 2, "heldout": 40}  # the score is not what is tested here
    seen: set[int] = set()
    stop = threading.Event()
    watcher = threading.Thread(target=_client_actors, args=(seen, stop), daemon=True)
    watcher.start()
    try:
        summary = simulate(config, out_dir=tmp_path, max_parallel=2)
    finally:
        stop.set()
        watcher.join()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["applied"] and r["clients_sampled"] == 6 and r["clients_ok"] == 6 for r in rows)
    partitions = {c["partition_id"] for r in rows for c in r["clients"]}
    assert len(partitions) >= 7  # two rounds sampled (mostly) different clients out of 60
    assert 1 <= len(seen) <= 2, f"{len(seen)} ClientApp actor processes for 12 client turns"
    assert summary["clients_failed_total"] == 0
