"""A real two-node Ray cluster on this machine: ``fedsqueeze simulate --ray-address auto`` joins it, its clients
train on both nodes, and the cluster is stopped by PID afterwards (never ``ray stop``: that would stop every Ray
on the machine)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deployment_helpers import stop_processes

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
NODES = {"head": "fedsqueeze_head", "worker": "fedsqueeze_worker"}  # node -> its own custom resource
# Run in a fresh driver (``ray.init`` here would leave this test process joined to the cluster): waits until
# ``argv[1]`` nodes are alive, then prints the nodes and every actor the cluster has seen (dead ones included) as
# JSON. The actor table is the GCS's own (``ray._private.state``): ``ray list actors`` needs the dashboard, which
# this cluster does not run.
FACTS = """
import json, sys, time
import ray
ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[2])
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.5)
nodes = [{"id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"]} for n in ray.nodes()]
actors = [{"class": a["ActorClassName"], "node": a["Address"]["NodeID"], "state": a["State"]}
          for a in ray._private.state.actors().values()]
print(json.dumps({"nodes": nodes, "actors": actors}))
"""


def _free_port() -> int:
    """A TCP port that nothing listens on right now, on any interface (Ray binds its servers to all of them)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _cluster_env(root: Path) -> dict[str, str]:
    """The environment of every process of this cluster (both ``ray start``, the simulation, the queries).

    ``RAY_TMPDIR`` puts the cluster's whole temp dir, its address file ``ray_current_cluster`` included, under
    ``root``: ``--ray-address auto`` reads this cluster's address there (as on a real head node, with no
    ``RAY_ADDRESS``), even with other Rays running on the machine, while a bare ``ray.init()`` elsewhere, which
    reads /tmp/ray/ray_current_cluster, never attaches to it. Inherited ``RAY_*`` settings are dropped.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            "RAY_TMPDIR": str(root), "RAY_USAGE_STATS_ENABLED": "0", "FEDSQUEEZE_CLIENT_THREADS": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1"}


def _ray_start(name: str, args: list[str], *, env: dict[str, str], logs: Path) -> subprocess.Popen:
    """``ray start ARGS --block`` in its own process group (so it and every process it starts can be stopped by
    its PID): one CPU, no GPU, ``name``'s own custom resource, a free agent port, a small object store."""
    command = [str(Path(sys.executable).parent / "ray"), "start", *args, "--block", "--num-cpus", "1",
               "--num-gpus", "0", "--resources", json.dumps({NODES[name]: 1}), "--dashboard-agent-listen-port",
               str(_free_port()), "--object-store-memory", str(300 * 2**20), "--disable-usage-stats"]
    with (logs / f"ray-{name}.log").open("w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)


def _stop(processes: list[subprocess.Popen], root: Path) -> None:
    """SIGTERM each ``ray start`` process group, SIGKILL what is left after 20 s; then SIGKILL any process still
    carrying this cluster's ``RAY_TMPDIR`` (a Ray worker that left the group): all of them were started here."""
    stop_processes(processes, grace_s=20)
    for pid in _cluster_pids(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _cluster_pids(root: Path) -> list[int]:
    """PIDs of live processes whose environment holds ``RAY_TMPDIR=root``: this cluster's, nobody else's."""
    tag = f"RAY_TMPDIR={root}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if tag in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _facts(env: dict[str, str], nodes: int, timeout_s: float) -> dict:
    """The cluster's nodes and actors, from a fresh driver once ``nodes`` nodes are alive (or ``timeout_s``)."""
    done = subprocess.run([sys.executable, "-c", FACTS, str(nodes), str(timeout_s)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout_s + 120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """A head and a worker node, each one CPU and its own custom resource; yields the processes' environment and
    ``{"head": node id, "worker": node id}``. Skips only when ``ray start`` cannot start here."""
    # Ray's Unix sockets live under the temp dir, and a socket path must stay under 108 characters: pytest's
    # tmp_path is too long, so the cluster gets a short private directory of its own.
    root = Path(tempfile.mkdtemp(prefix="fsq-ray-", dir="/tmp"))
    env = _cluster_env(root)
    logs = tmp_path / "ray-logs"
    logs.mkdir()
    default_address = Path("/tmp/ray/ray_current_cluster")
    before = default_address.read_bytes() if default_address.exists() else None
    processes: list[subprocess.Popen] = []
    try:
        port = _free_port()
        processes.append(_ray_start("head", ["--head", "--port", str(port), "--include-dashboard=false",
                                             "--ray-client-server-port", str(_free_port())], env=env, logs=logs))
        address_file = root / "ray" / "ray_current_cluster"  # written once the head is up
        deadline = time.monotonic() + 120
        while not address_file.exists():
            if processes[0].poll() is not None:
                pytest.skip(f"ray start --head cannot start here: {_tail(logs / 'ray-head.log')}")
            assert time.monotonic() < deadline, f"the head did not come up: {_tail(logs / 'ray-head.log')}"
            time.sleep(0.5)
        # The address as the head recorded it: this machine's, not 127.0.0.1 (Ray resolves loopback away, also in
        # --node-ip-address, since other nodes must reach it).
        address = address_file.read_text().strip()
        assert address.endswith(f":{port}")
        processes.append(_ray_start("worker", ["--address", address], env=env, logs=logs))
        facts = _facts(env, nodes=2, timeout_s=120)
        if processes[1].poll() is not None:
            pytest.skip(f"ray start --address cannot start here: {_tail(logs / 'ray-worker.log')}")
        alive = [n for n in facts["nodes"] if n["alive"]]
        ids = {name: n["id"] for n in alive for name, resource in NODES.items() if resource in n["resources"]}
        assert len(alive) == 2 and set(ids) == set(NODES), f"nodes: {facts['nodes']}"
        yield env, ids
    finally:
        _stop(processes, root)
        leftover = _cluster_pids(root)
        shutil.rmtree(root, ignore_errors=True)
        after = default_address.read_bytes() if default_address.exists() else None
    assert not leftover, f"processes of the test cluster still running: {leftover}"
    # The machine-wide "current cluster" that a bare ray.init() attaches to is untouched (RAY_TMPDIR kept it private).
    assert after == before


def test_simulate_with_ray_address_auto_trains_on_both_nodes(
        cluster: tuple[dict[str, str], dict[str, str]], tmp_path: Path) -> None:
    env, node_ids = cluster
    out = tmp_path / "run"
    # --max-parallel does not apply when joining a cluster: one CPU per node makes Flower's pool two client actors
    # (one per node, as neither node has room for a second), and the two clients train at once, one on each.
    done = subprocess.run([sys.executable, "-m", "simulations.cli", "simulate", "--preset", "encoder", "--out",
                           str(out), "--ray-address", "auto", "--run-config",
                           "num-server-rounds=1 num-clients=2 partitioner='iid' local-steps=2 heldout=40"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stderr[-3000:]}\n{_tail(out / 'log.txt')}"

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1]
    assert rows[0]["applied"] and rows[0]["clients_ok"] == 2 and not rows[0]["problems"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["clients_failed_total"] == 0

    # The cluster's own record (the run's actors are dead by now, and the GCS still lists them): Flower's two client
    # actors, one on each node.
    actors = [a for a in _facts(env, nodes=2, timeout_s=30)["actors"] if a["class"] == "ClientAppActor"]
    assert sorted(a["node"] for a in actors) == sorted(node_ids.values()), f"actors: {actors}, nodes: {node_ids}"
