"""The coordinator's round loop: sample, broadcast, collect, validate/decode, FedAvg, evaluate, record."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from client import messages
from client.task.build import Task, build_task, load_splits
from client.task.loop import evaluate
from server.outputs import MetricsLog, plot_metrics, write_json_atomic
from server.progress import RoundProgress
from server.run_config import RunConfig
from strategies.codecs import UpdateRejected, decode_update
from strategies.codecs.dense import dense_fp32_bytes
from strategies.fedavg import apply_update, weighted_mean

log = logging.getLogger("fedsqueeze")
METRIC = "accuracy"


class TooFewClientsError(RuntimeError):
    """Fewer client nodes connected than the run needs, within the wait limit."""


@dataclass
class RoundOutcome:
    """What came back in one round: decoded updates and what was refused or lost, per node."""

    updates: list[dict[str, torch.Tensor]] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)
    bytes_up: int = 0
    failures: list[str] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)


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


def _collect(replies: list[Message], sent: int, round_id: int, layout: dict[str, tuple[int, ...]],
             codec: str) -> RoundOutcome:
    outcome = RoundOutcome()
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            outcome.failures.append(f"node {node}: client failed: {reply.error.reason}")
            continue
        try:
            payload = reply.content[messages.UPDATE][messages.ENCODED_UPDATE]
            metrics = reply.content[messages.METRICS]
            num_examples = float(metrics["num-examples"])
            if not num_examples > 0:
                raise UpdateRejected(f"num-examples must be positive, got {num_examples}")
            if not isinstance(payload, bytes):
                raise UpdateRejected("encoded-update is not bytes")
            update = decode_update(codec, payload, expected_round=round_id, expected_layout=layout)
        except (KeyError, TypeError, UpdateRejected) as exc:
            outcome.rejections.append(f"node {node}: update rejected: {exc}")
            continue
        outcome.updates.append(update)
        outcome.weights.append(num_examples)
        outcome.train_losses.append(float(metrics["train-loss"]))
        outcome.bytes_up += len(payload)
    if len(replies) < sent:
        outcome.failures.append(f"{sent - len(replies)} client(s) sent no reply before the round timeout")
    return outcome


def _train_messages(node_ids: list[int], global_adapter: dict[str, torch.Tensor], cfg: RunConfig,
                    round_id: int) -> list[Message]:
    train_config = {**cfg.task.to_record(), **cfg.codec_options(), "round": round_id}
    return [
        Message(
            content=RecordDict({
                messages.GLOBAL_ADAPTER: ArrayRecord(torch_state_dict=global_adapter),
                messages.TRAIN_CONFIG: ConfigRecord(train_config),
            }),
            dst_node_id=node_id,
            message_type=MessageType.TRAIN,
            group_id=str(round_id),
        )
        for node_id in node_ids
    ]


def _evaluate(task: Task, heldout: Any, adapter: dict[str, torch.Tensor]) -> dict[str, float]:
    task.load_adapter_state(adapter)
    result = evaluate(task, heldout)
    return {"accuracy": result.accuracy, "loss": result.loss}


def run_federation(grid: Grid, cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """Run ``cfg.num_server_rounds`` rounds on ``grid``, write outputs to ``out_dir``, return the summary."""
    started = time.perf_counter()
    progress = RoundProgress(cfg.num_server_rounds)
    try:
        progress.status("loading model and held-out data")
        train, heldout = load_splits(cfg.task)
        task = build_task(cfg.task, train.label_names)
        global_adapter = task.adapter_state()
        layout = {name: tuple(t.shape) for name, t in global_adapter.items()}
        dense_bytes_per_client = dense_fp32_bytes(global_adapter)
        progress.status("evaluating the base model")
        base = _evaluate(task, heldout.dataset, global_adapter)
        log.info("base model: held-out %s %.4f (%d examples)", METRIC, base[METRIC], len(heldout.dataset))
        metrics_log = MetricsLog(out_dir)
        progress.status(f"waiting for {cfg.num_clients} client nodes")
        node_ids = wait_for_nodes(grid, cfg.num_clients, cfg.wait_for_clients_s)
        sampler = random.Random(cfg.seed)
        per_round = max(1, round(cfg.fraction_train * len(node_ids)))
        min_clients = cfg.min_train_clients or 1
        bytes_up_total = bytes_dense_total = 0
        current = base
        for round_id in range(1, cfg.num_server_rounds + 1):
            round_started = time.perf_counter()
            sampled = sorted(sampler.sample(node_ids, per_round))
            progress.status(f"round {round_id}: training on {len(sampled)} clients")
            replies = list(grid.send_and_receive(_train_messages(sampled, global_adapter, cfg, round_id),
                                                 timeout=cfg.round_timeout_s))
            outcome = _collect(replies, len(sampled), round_id, layout, cfg.codec)
            for problem in outcome.failures + outcome.rejections:
                log.warning("round %d: %s", round_id, problem)
            applied = len(outcome.updates) >= min_clients
            if applied:
                delta = weighted_mean(outcome.updates, outcome.weights)
                global_adapter = apply_update(global_adapter, delta)
            round_s = time.perf_counter() - round_started
            if applied:
                current = _evaluate(task, heldout.dataset, global_adapter)
            else:
                log.warning("round %d skipped: %d usable updates, %d needed; global adapter unchanged",
                            round_id, len(outcome.updates), min_clients)
            bytes_up_total += outcome.bytes_up
            bytes_dense_total += dense_bytes_per_client * len(outcome.updates)
            row = {
                "round": round_id,
                "accuracy": current["accuracy"],
                "loss": current["loss"],
                "train_loss": sum(outcome.train_losses) / len(outcome.train_losses) if outcome.train_losses else None,
                "clients_sampled": len(sampled),
                "clients_ok": len(outcome.updates),
                "clients_failed": len(outcome.failures),
                "updates_rejected": len(outcome.rejections),
                "problems": outcome.failures + outcome.rejections,
                "applied": applied,
                "bytes_up": outcome.bytes_up,
                "bytes_up_per_client": outcome.bytes_up / len(outcome.updates) if outcome.updates else 0,
                "bytes_down": dense_bytes_per_client * len(sampled),
                "round_s": round_s,
                "eval_s": time.perf_counter() - round_started - round_s,
            }
            metrics_log.append(row)
            progress.round_done(round_id, f"{METRIC} {current[METRIC]:.3f}, {len(outcome.updates)}/{len(sampled)} "
                                          f"clients, {outcome.bytes_up / 1e6:.2f} MB up"
                                          + (f", {len(outcome.failures) + len(outcome.rejections)} problem(s)"
                                             if outcome.failures or outcome.rejections else ""))
        progress.status("writing adapter, summary and plots")
        task.load_adapter_state(global_adapter)
        task.model.save_pretrained(out_dir / "adapter")
        plot_metrics(metrics_log.rows, METRIC, base[METRIC], out_dir)
        summary = {
            "preset": cfg.preset,
            "model": cfg.task.model,
            "dataset": cfg.task.dataset,
            "num_clients": cfg.num_clients,
            "rounds": cfg.num_server_rounds,
            "codec": cfg.codec,
            "metric": METRIC,
            "metric_base": base[METRIC],
            "metric_final": current[METRIC],
            "loss_base": base["loss"],
            "loss_final": current["loss"],
            "bytes_up_total": bytes_up_total,
            "bytes_up_dense_equivalent": bytes_dense_total,
            "clients_failed_total": sum(r["clients_failed"] for r in metrics_log.rows),
            "updates_rejected_total": sum(r["updates_rejected"] for r in metrics_log.rows),
            "rounds_skipped": sum(not r["applied"] for r in metrics_log.rows),
            "wall_s": time.perf_counter() - started,
            "task": cfg.task.to_record(),
        }
        write_json_atomic(out_dir / "summary.json", summary)
        return summary
    finally:
        progress.close()
