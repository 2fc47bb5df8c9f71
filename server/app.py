"""The Flower ServerApp: read the run config, run the federation, write the outputs."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from client.quiet import quiet_libraries
from server.federation import run_federation
from server.logs import configure_logging
from server.run_config import resolve

log = logging.getLogger("fedsqueeze")
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point Flower calls with the fused run config (pyproject defaults + --run-config)."""
    quiet_libraries()
    configure_logging()
    cfg = resolve(dict(context.run_config))
    out_dir = cfg.output_dir().resolve()
    log.info("fedsqueeze run: preset %s, %d clients, %d rounds, codec %s, outputs in %s",
             cfg.preset, cfg.num_clients, cfg.num_server_rounds, cfg.codec, out_dir)
    summary = run_federation(grid, cfg, out_dir)
    log.info("done: %s %.4f -> %.4f, %d bytes up in all, %.0f s", summary["metric"], summary["metric_base"],
             summary["metric_final"], summary["bytes_up_total"], summary["wall_s"])
