"""The coordinator's run: wait for the nodes, start (or resume) the coordinator state, run the rounds
(server/round.py), and write the adapter, plots and summary."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from flwr.serverapp import Grid

from server import checkpoint
from server.client_reply import ClientReply, RoundOutcome, collect_replies, read_reply
from server.coordinator_state import CoordinatorState, check_resumable
from server.enrolment import Enrolment, enrol, samples
from server.evaluation import ModelHooks, SamplesLog
from server.outputs import MetricsLog, plot_metrics, write_json_atomic
from server.progress import RoundProgress
from server.round import Federation, acceptor, checkpointed_config, run_round
from server.run_config import DEFAULTS, RunConfig
from strategies.codecs.dense import dense_fp32_bytes
from strategies.secagg.common import SIGNED_MIN_THRESHOLD

__all__ = ["ClientReply", "RoundOutcome", "TooFewClientsError", "acceptor", "collect_replies", "read_reply",
           "resume_point", "run_federation"]
log = logging.getLogger("fedsqueeze")


class TooFewClientsError(RuntimeError):
    """Fewer client nodes connected than the run needs, within the wait limit."""


def wait_for_nodes(grid: Grid, count: int, timeout_s: float) -> list[int]:
    """Node ids once at least ``count`` nodes are connected; TooFewClientsError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= count:
            return node_ids
        if time.monotonic() > deadline:
            raise TooFewClientsError(f"only {len(node_ids)} of {count} client nodes connected within {timeout_s:.0f} s")
        time.sleep(1.0)


def resume_point(cfg: RunConfig, out_dir: Path) -> checkpoint.Checkpoint | None:
    """The checkpoint to continue from when ``resume`` is on (None: start afresh); CheckpointError when it belongs
    to a run with other settings or is already past this run's last round."""
    if not cfg.resume:
        return None
    saved = checkpoint.load(out_dir)
    if saved is None:
        log.info("resume: no checkpoint in %s, starting from round 1", out_dir / checkpoint.DIRECTORY)
        return None
    expected = checkpointed_config(cfg)
    # A key newer than the checkpoint was at its default then: that is how the checkpointed run behaved.
    before = {**{k: DEFAULTS[k] for k in expected if k in DEFAULTS}, **saved.run_config}
    differing = sorted(k for k in set(before) | set(expected) if before.get(k) != expected.get(k))
    if differing:
        key = differing[0]
        raise checkpoint.CheckpointError(f"cannot resume: run-config key '{key}' was {before.get(key)!r} in "
                                         f"the checkpointed run and is {expected.get(key)!r} now")
    if saved.round >= cfg.num_server_rounds:
        raise checkpoint.CheckpointError(f"cannot resume: the checkpoint is after round {saved.round}, and this run "
                                         f"has {cfg.num_server_rounds} rounds in all (raise num-server-rounds)")
    return saved


def _describe(metrics: dict[str, float]) -> str:
    """``name value`` pairs of held-out metrics for a log line."""
    return ", ".join(f"{name} {value:.4g}" for name, value in metrics.items())


def summary_metrics(base: dict[str, float], final: dict[str, float]) -> dict[str, float]:
    """Every held-out metric of the base and the final model as ``<name>_base`` / ``<name>_final``."""
    return {**{f"{k}_base": v for k, v in base.items()}, **{f"{k}_final": v for k, v in final.items()}}


def _start(grid: Grid, cfg: RunConfig, out_dir: Path, model: ModelHooks, progress: RoundProgress
           ) -> tuple[Federation, CoordinatorState]:
    """Check a checkpoint to resume from (before anything slow), score the base model, wait for the nodes, and
    build the round-0 (or resumed) coordinator state."""
    started = time.perf_counter()
    resumed = resume_point(cfg, out_dir)
    if cfg.secure.enabled and cfg.secure.threshold < SIGNED_MIN_THRESHOLD:
        log.warning("secure rounds of %d clients have threshold %d: nodes that sign their keys (--trusted-nodes) "
                    "refuse thresholds below %d unless their privacy floor sets min-threshold", cfg.run.per_round,
                    cfg.secure.threshold, SIGNED_MIN_THRESHOLD)
    samples_log = SamplesLog(out_dir, keep_through_round=resumed.round if resumed is not None else None)
    if resumed is None:
        progress.status("evaluating the base model")
        base_evaluation = model.evaluate_fn(model.initial_state)
        base_metrics = base_evaluation.metrics
        samples_log.append(0, base_evaluation.samples)
    else:
        check_resumable(resumed, model.initial_state)
        base_metrics = resumed.base
        started -= resumed.wall_s
    log.info("base model: held-out %s", _describe(base_metrics))
    metrics_log = MetricsLog(out_dir, rows=resumed.rows if resumed is not None else None)
    progress.status(f"waiting for {cfg.num_clients} client nodes")
    node_ids = wait_for_nodes(grid, cfg.num_clients, cfg.wait_for_clients_s)
    if samples(cfg.fraction_train, len(node_ids)):
        progress.status("enrolling the nodes (their partitions)")
        enrolment = enrol(grid, node_ids, cfg.round_timeout_s)
    else:
        enrolment = Enrolment(order=node_ids)
    fed = Federation(grid, cfg, model, out_dir, enrolment.order,
                     {n: tuple(t.shape) for n, t in model.initial_state.items()},
                     dense_fp32_bytes(model.initial_state), progress, metrics_log, samples_log, started, enrolment)
    sample_rate = fed.per_round / len(node_ids)
    if resumed is None:
        return fed, CoordinatorState.start(cfg, model.initial_state, base_metrics, sample_rate)
    log.info("resuming after round %d of %d from %s", resumed.round, cfg.num_server_rounds,
             out_dir / checkpoint.DIRECTORY)
    return fed, CoordinatorState.from_checkpoint(resumed, cfg, model.initial_state, sample_rate)


def _summary(fed: Federation, state: CoordinatorState) -> dict[str, Any]:
    """summary.json: the run's settings, base and final metrics, byte totals and compression, problems."""
    cfg, model, rows, totals = fed.cfg, fed.model, fed.metrics_log.rows, state.totals
    base, current, metric = state.base_metrics, state.latest_metrics, model.metric
    return {
        "preset": cfg.preset, "model": cfg.task.model, "dataset": cfg.task.dataset, "num_clients": cfg.num_clients,
        "rounds": cfg.num_server_rounds, "codec": cfg.codec, "codec_options": cfg.codec_options(),
        "metric": metric, "higher_is_better": model.higher_is_better,
        "metric_base": base[metric], "metric_final": current[metric], **summary_metrics(base, current), **totals,
        "compression_up": (totals["bytes_up_dense_equivalent"] / totals["bytes_up_total"]
                           if totals["bytes_up_total"] else None),
        "compression_down": (totals["bytes_down_dense_equivalent"] / totals["bytes_down_total"]
                             if totals["bytes_down_total"] else None),
        "clients_failed_total": sum(r["clients_failed"] for r in rows),
        "updates_rejected_total": sum(r["updates_rejected"] for r in rows),
        "clients_refused_total": sum(r.get("clients_refused", 0) for r in rows),
        "rounds_skipped": sum(not r["applied"] for r in rows), "secagg": cfg.secure.enabled,
        **({"server_optimizer": cfg.values["server-optimizer"],
            "server_lr": cfg.server_optimizer.effective_lr} if cfg.server_optimizer.enabled else {}),
        **({"dp_noise_multiplier": cfg.dp.noise_multiplier, "dp_clip": cfg.dp.clip, "dp_delta": cfg.dp_delta,
            "dp_epsilon": state.epsilon} if state.ledger is not None else {}),
        "wall_s": time.perf_counter() - fed.started, "task": cfg.task.to_record(),
    }


def run_federation(grid: Grid, cfg: RunConfig, out_dir: Path, model: ModelHooks) -> dict[str, Any]:
    """Run ``cfg.num_server_rounds`` rounds on ``grid``, write outputs to ``out_dir``, return the summary.

    ``model`` (built by server/app.py) gives the initial global state, scores a state on the held-out data and
    exports one; the loop reports ``model.metric`` by name."""
    progress = RoundProgress(cfg.num_server_rounds)
    try:
        fed, state = _start(grid, cfg, out_dir, model, progress)
        for round_id in range(state.last_round + 1, cfg.num_server_rounds + 1):
            run_round(fed, state, round_id)
        progress.status("writing adapter, summary and plots")
        model.export_fn(state.global_state.state, out_dir)
        plot_metrics(fed.metrics_log.rows, [model.metric, *(k for k in state.base_metrics if k != model.metric)],
                     state.base_metrics, out_dir)
        summary = _summary(fed, state)
        write_json_atomic(out_dir / "summary.json", summary)
        return summary
    finally:
        progress.close()
