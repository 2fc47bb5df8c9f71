"""The Flower ServerApp: read the run config, build the model hooks (the only place the coordinator touches a
task), run the federation, write the outputs."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from client.task.build import build_task, load_splits
from client.task.quiet import quiet_libraries
from client.task.spec import TaskSpec
from server import checkpoint
from server.evaluation import ModelHooks, RoundEvaluation, State
from server.federation import run_federation
from server.logs import configure_logging
from server.outputs import check_out_dir
from server.run_config import RunConfig, resolve

log = logging.getLogger("fedsqueeze")
app = ServerApp()


def evaluation_spec(cfg: RunConfig) -> TaskSpec:
    """The task the coordinator evaluates with: the clients', except that a base quantised by bitsandbytes (CUDA
    only) is evaluated unquantised on a coordinator without CUDA, as a merged QLoRA adapter would be served."""
    if cfg.task.quantization != "none" and not torch.cuda.is_available():
        log.info("evaluating the %s-quantised task's adapter on an unquantised base (no CUDA here)",
                 cfg.task.quantization)
        return replace(cfg.task, quantization="none")
    return cfg.task


def model_hooks(cfg: RunConfig) -> ModelHooks:
    """Build the run's task once on the coordinator and hand the round loop what it needs of it: the initial
    global state, the held-out evaluation, the export, and the primary metric."""
    spec = evaluation_spec(cfg)
    train, heldout = load_splits(spec)
    task = build_task(spec, train)

    def evaluate_fn(state: State) -> RoundEvaluation:
        task.load_trainable_state(state)
        report = task.evaluate(heldout.dataset)
        return RoundEvaluation(report.metrics, report.samples)

    def export_fn(state: State, out_dir: Path) -> Path:
        task.load_trainable_state(state)
        return task.save(out_dir)

    return ModelHooks(task.trainable_state(), evaluate_fn, export_fn, task.kind.primary_metric,
                      task.kind.higher_is_better)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point Flower calls with the fused run config (pyproject defaults + --run-config). An exception is
    logged as one fedsqueeze line (what ``fedsqueeze submit`` shows) before Flower records the run as failed."""
    quiet_libraries()
    configure_logging()
    try:
        run(grid, context)
    except Exception as exc:
        log.error("error: the run stopped: %s", " ".join(str(exc).split()) or type(exc).__name__)
        raise


def run(grid: Grid, context: Context) -> None:
    """Check the run config and the output directory, then run the federation and write its outputs."""
    cfg = resolve(dict(context.run_config))
    out_dir = cfg.output_dir().resolve()
    # Before the model loads or any node is asked: a directory holding another run needs resume=true or
    # overwrite=true (which discards that run's checkpoint).
    check_out_dir(out_dir, resume=cfg.resume, overwrite=cfg.overwrite, deployed=True)
    if cfg.overwrite:
        checkpoint.discard(out_dir)
    log.info("fedsqueeze run: preset %s, %d clients, %d rounds, codec %s, outputs in %s",
             cfg.preset, cfg.num_clients, cfg.num_server_rounds, cfg.codec, out_dir)
    summary = run_federation(grid, cfg, out_dir, model_hooks(cfg))
    log.info("done: %s %.4f -> %.4f, %d bytes up in all, %.0f s", summary["metric"], summary["metric_base"],
             summary["metric_final"], summary["bytes_up_total"], summary["wall_s"])
