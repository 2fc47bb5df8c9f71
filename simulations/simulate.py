"""``fedsqueeze simulate``: run the ServerApp and ClientApp in-process with Flower's simulation engine."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from client.app import app as client_app
from client.privacy_floor import FLOOR_ENV, PrivacyFloor
from client.secure import IDENTITIES_ENV
from client.state_dir import STATE_DIR_ENV
from client.task.build import load_splits
from client.task.model_sources import resolve_model
from client.task.partition import client_partition
from client.task.quiet import quiet_libraries
from server import checkpoint
from server.app import model_hooks
from server.federation import resume_point, run_federation
from server.outputs import NODE_STATE, check_out_dir
from server.run_config import RunConfig, resolve
from simulations.faults import client_app_with_byzantine, client_app_with_delay, client_app_with_failures

log = logging.getLogger("fedsqueeze")


def preflight(cfg: RunConfig) -> None:
    """Fail fast, before Ray starts, on a missing model or data set, or data the partitioner cannot split (errors
    name the problem)."""
    resolve_model(cfg.task.model)
    train, _ = load_splits(cfg.task)
    if len(train.dataset) < cfg.num_clients:
        raise ValueError(f"{len(train.dataset)} training examples cannot be split across {cfg.num_clients} clients")
    # The partitioner's own checks (a category column to split by, enough domains for the clients).
    client_partition(train.dataset, 0, cfg.num_clients, kind=cfg.task.partitioner, alpha=cfg.task.dirichlet_alpha,
                     seed=cfg.task.seed, by=train.partition_by)


def check_partitions(num_clients: int, **chosen: frozenset[int]) -> None:
    """Refuse more than one kind of injected partition (``failing``, ``byzantine``, ``slow``), or an id that is not
    one of the run's partitions 0..num_clients-1 (the message names the command-line flag)."""
    if sum(map(bool, chosen.values())) > 1:
        raise ValueError("choose one of failing, Byzantine or slow partitions")
    flags = {"failing": "--fail-partitions", "byzantine": "--byzantine-partitions", "slow": "--slow-partitions"}
    for kind, ids in chosen.items():
        outside = sorted(i for i in ids if not 0 <= i < num_clients)
        if outside:
            raise ValueError(f"{flags[kind]}: {outside[0]} is not a partition id of this run's {num_clients} "
                             f"clients (0..{num_clients - 1})")


def backend_config(*, parallel: int, client_gpus: float = 0.0, ray_address: str = "") -> dict[str, Any]:
    """The simulation engine's Ray backend config: one CPU and ``client_gpus`` of a GPU per client.

    A local Ray gets ``parallel`` CPUs (so that many clients train at once) and finds the GPUs itself; with
    ``ray_address`` (``auto`` on a node of a running cluster, or ``HOST:6379``) the run joins that cluster and uses
    its CPUs and GPUs instead (Ray refuses CPU/GPU counts when joining). Raises ValueError for a negative or
    non-finite GPU fraction, or a fraction above 1 that is not a whole number of GPUs (Ray's own rule).
    """
    if not (math.isfinite(client_gpus) and client_gpus >= 0):
        raise ValueError(f"client GPUs must be a finite number >= 0, got {client_gpus}")
    if client_gpus > 1 and not float(client_gpus).is_integer():
        raise ValueError(f"client GPUs above 1 must be a whole number, got {client_gpus}")
    if parallel < 1:
        raise ValueError(f"parallel clients must be at least 1, got {parallel}")
    init_args: dict[str, Any] = ({"address": ray_address} if ray_address
                                 else {"num_cpus": parallel, "include_dashboard": False})
    # Ray's local workers inherit this process's environment (FEDSQUEEZE_CLIENT_THREADS included).
    return {"client_resources": {"num_cpus": 1, "num_gpus": float(client_gpus)}, "init_args": init_args}


def with_gpu_device(user_config: dict[str, Any], client_gpus: float) -> dict[str, Any]:
    """``user_config`` with ``device=cuda`` when clients get GPUs and the user chose no device: a client that
    finds no GPU then fails with a clear error rather than training on the CPU."""
    if client_gpus > 0 and "device" not in user_config:
        return {**user_config, "device": "cuda"}
    return dict(user_config)


def simulate(user_config: dict[str, Any], *, out_dir: Path, max_parallel: int = 0,
             fail_partitions: frozenset[int] = frozenset(), fail_at: str = "train",
             byzantine_partitions: frozenset[int] = frozenset(), byzantine_attack: str = "sign-flip",
             client_gpus: float = 0.0, ray_address: str = "", slow_partitions: frozenset[int] = frozenset(),
             slow_s: float = 0.0, node_identities: Path | None = None, node_floor: str = "",
             overwrite: bool = False, on_checked: Callable[[], object] | None = None) -> dict[str, Any]:
    """Run a whole federation in-process and return its summary (also written to ``out_dir``).

    ``fail_partitions`` raise on messages of type ``fail_at`` (tests of failures and dropouts);
    ``byzantine_partitions`` send ``byzantine_attack`` instead of their update (robust-aggregation tests);
    ``slow_partitions`` reply ``slow_s`` seconds late (stragglers). ``node_identities`` is a folder of node key
    pairs (``fedsqueeze certs DIR --nodes N`` writes DIR/node-keys): simulated node i signs its secure-aggregation
    keys with node-i.key and trusts every .pub there. ``node_floor`` is the privacy floor every simulated node holds
    (client/privacy_floor.py: ``"secagg=true min-parties=3"``). ``on_checked`` is called once the input has
    been checked and before anything is written or started (the CLI starts capturing output there).
    With ``resume=true`` in the run config the run continues after the last checkpointed round in ``out_dir``;
    otherwise an ``out_dir`` holding an earlier run is refused (server/outputs.py) unless ``overwrite``, which
    discards its checkpoint and writes its outputs afresh.
    ``max_parallel`` clients train at once (default: as many as there are clients, at most 3), each on one
    torch thread, the fastest layout measured on 2 CPU cores.
    ``client_gpus`` is the fraction of a GPU Ray reserves for each client (0.25: four clients share one GPU); when
    it is above 0 the run's ``device`` defaults to ``cuda``, so a client without a GPU fails loudly instead of
    training on the CPU. ``ray_address`` joins a running Ray cluster (see ``backend_config``).
    """
    quiet_libraries()
    if client_gpus > 0 and not ray_address and not torch.cuda.is_available():
        raise ValueError(f"client GPUs {client_gpus} requested, but this machine has no CUDA GPU "
                         "(drop --client-gpus, or join a GPU cluster with --ray-address)")
    cfg = resolve({**with_gpu_device(user_config, client_gpus), "out-dir": str(out_dir)})
    overwrite = overwrite or cfg.overwrite  # --overwrite, or overwrite=true in the run config
    check_out_dir(out_dir, resume=cfg.resume, overwrite=overwrite)
    parallel = max_parallel or min(cfg.num_clients, 3)
    backend = backend_config(parallel=parallel, client_gpus=client_gpus, ray_address=ray_address)
    # The cheap checks of the arguments first, then the model, the data and the checkpoint (seconds each).
    check_partitions(cfg.num_clients, failing=fail_partitions, byzantine=byzantine_partitions,
                     slow=slow_partitions)
    if not (math.isfinite(slow_s) and slow_s >= 0):
        raise ValueError(f"a client delay must be a finite number of seconds >= 0, got {slow_s}")
    if node_identities is not None:
        missing = [i for i in range(cfg.num_clients) if not (node_identities / f"node-{i}.key").is_file()]
        if missing:
            raise FileNotFoundError(f"{node_identities} has no node-{missing[0]}.key (write {cfg.num_clients} with: "
                                    f"fedsqueeze certs DIR --nodes {cfg.num_clients}, then pass DIR/node-keys)")
    floor = PrivacyFloor.parse(node_floor)  # ValueError naming a bad entry, before anything starts
    least = floor.least_threshold(signed=node_identities is not None)
    if cfg.secure.enabled and cfg.secure.threshold < least:
        raise ValueError(f"secagg threshold {cfg.secure.threshold} (for {cfg.run.per_round} clients per round) is "
                         f"below {least}, the least the nodes accept: every node would refuse every round (raise "
                         "secagg-threshold or the clients per round, or lower the nodes' floor with --node-floor "
                         f"'min-threshold={cfg.secure.threshold}')")
    preflight(cfg)
    resume_point(cfg, out_dir)  # a checkpoint of another run is refused here, before Ray starts
    if on_checked is not None:
        on_checked()
    if overwrite:
        checkpoint.discard(out_dir)  # the earlier run's: a crash in round 1 must not resume it
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        result.update(run_federation(grid, cfg, out_dir, model_hooks(cfg)))

    os.environ.setdefault("FEDSQUEEZE_CLIENT_THREADS", "1")
    app = client_app_with_failures(set(fail_partitions), fail_at) if fail_partitions else client_app
    if byzantine_partitions:
        app = client_app_with_byzantine(set(byzantine_partitions), byzantine_attack)
    if slow_partitions:
        app = client_app_with_delay(set(slow_partitions), slow_s)
    node_env = {IDENTITIES_ENV: str(node_identities.resolve()) if node_identities is not None else None,
                FLOOR_ENV: node_floor or None, STATE_DIR_ENV: str((out_dir / NODE_STATE).resolve())}
    previous = {key: os.environ.get(key) for key in node_env}
    for key, value in node_env.items():  # Ray's local workers inherit these
        if value is not None:
            os.environ[key] = value
    try:
        run_simulation(server_app=server_app, client_app=app, num_supernodes=cfg.num_clients,
                       backend_config=backend)
    finally:  # this run's node settings must not leak into the next simulation of this process
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if not result:
        raise RuntimeError(f"the simulation ended without a summary; see {out_dir / 'log.txt'} (fedsqueeze "
                           "simulate) or the log above")
    return result
