"""``fedsqueeze simulate``: run the ServerApp and ClientApp in-process with Flower's simulation engine."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from client.app import app as client_app
from client.quiet import quiet_libraries
from client.task.build import load_splits
from client.task.model_sources import resolve_model
from server.federation import resume_point, run_federation
from server.run_config import RunConfig, resolve
from simulations.faults import client_app_with_byzantine, client_app_with_failures

log = logging.getLogger("fedsqueeze")


def preflight(cfg: RunConfig) -> None:
    """Fail fast, before Ray starts, on a missing model or data set (errors name the problem)."""
    resolve_model(cfg.task.model)
    train, _ = load_splits(cfg.task)
    if len(train.dataset) < cfg.num_clients:
        raise ValueError(f"{len(train.dataset)} training examples cannot be split across {cfg.num_clients} clients")


def simulate(user_config: dict[str, Any], *, out_dir: Path, max_parallel: int = 0,
             fail_partitions: frozenset[int] = frozenset(), fail_at: str = "train",
             byzantine_partitions: frozenset[int] = frozenset(), byzantine_attack: str = "sign-flip"
             ) -> dict[str, Any]:
    """Run a whole federation in-process and return its summary (also written to ``out_dir``).

    ``fail_partitions`` raise on messages of type ``fail_at`` (tests of failures and dropouts);
    ``byzantine_partitions`` send ``byzantine_attack`` instead of their update (robust-aggregation tests).
    With ``resume=true`` in the run config the run continues after the last checkpointed round in ``out_dir``.
    ``max_parallel`` clients train at once (default: as many as there are clients, at most 3), each on one
    torch thread, the fastest layout measured on 2 CPU cores.
    """
    quiet_libraries()
    cfg = resolve({**user_config, "out-dir": str(out_dir)})
    preflight(cfg)
    resume_point(cfg, out_dir)  # a checkpoint of another run is refused here, before Ray starts
    if fail_partitions and byzantine_partitions:
        raise ValueError("choose failing or Byzantine partitions, not both")
    out_dir.mkdir(parents=True, exist_ok=True)
    parallel = max_parallel or min(cfg.num_clients, 3)
    result: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        result.update(run_federation(grid, cfg, out_dir))

    os.environ.setdefault("FEDSQUEEZE_CLIENT_THREADS", "1")
    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        # Ray's local workers inherit this process's environment (FEDSQUEEZE_CLIENT_THREADS included).
        "init_args": {"num_cpus": parallel, "include_dashboard": False},
    }
    app = client_app_with_failures(set(fail_partitions), fail_at) if fail_partitions else client_app
    if byzantine_partitions:
        app = client_app_with_byzantine(set(byzantine_partitions), byzantine_attack)
    run_simulation(server_app=server_app, client_app=app, num_supernodes=cfg.num_clients,
                   backend_config=backend_config)
    if not result:
        raise RuntimeError("the simulation ended without a summary; see the log above")
    return result
