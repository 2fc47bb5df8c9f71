"""The coordinator's round loop: sample, broadcast, collect, validate/decode, FedAvg, evaluate, record."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from client import messages
from server import checkpoint
from server.aggregation import RoundAggregator, byte_limit, check_norm
from server.evaluation import ModelHooks, SamplesLog
from server.outputs import MetricsLog, plot_metrics, write_json_atomic
from server.progress import RoundProgress
from server.replies import stream_replies
from server.run_config import DEFAULTS, RESUMABLE_CHANGES, RunConfig
from server.secure_round import SecurePlan, SecureResult, plan_round, run_protocol
from strategies.codecs import UpdateRejected
from strategies.codecs.dense import dense_fp32_bytes
from strategies.codecs.registry import SEED_KEY, shared_seed
from strategies.downlink import DownlinkPlanner, digest_prefix
from strategies.privacy import PrivacyLedger

log = logging.getLogger("fedsqueeze")


class TooFewClientsError(RuntimeError):
    """Fewer client nodes connected than the run needs, within the wait limit."""


@dataclass
class RoundOutcome:
    """What came back in one round: decoded updates and what was refused or lost, per node."""

    updates: list[Any] = field(default_factory=list)  # what accepted nodes sent, when no sink took it (secagg keys)
    weights: list[float] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)
    bytes_up: int = 0
    failures: list[str] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)
    clients: dict[int, dict[str, Any]] = field(default_factory=dict)  # per node: bytes, partition, status
    answered: list[int] = field(default_factory=list)  # nodes that replied without an error
    accepted: list[int] = field(default_factory=list)  # nodes whose update was accepted, as ``updates``


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


def acceptor(cfg: RunConfig, round_id: int, layout: dict[str, tuple[int, ...]]) -> Callable[[bytes], Any]:
    """How this run checks one client's payload and turns it into what the round aggregates (the codec's
    ``accept``: decoded tensors, or checked Ferret coefficients), within the run's size and norm bounds."""
    max_bytes = byte_limit(cfg, layout)
    codec = cfg.uplink.impl
    seed = shared_seed(codec, cfg.seed, round_id)

    def accept(payload: bytes) -> Any:
        contribution = codec.accept(payload, round_id=round_id, layout=layout, max_bytes=max_bytes, seed=seed)
        check_norm(cfg, contribution, codec)
        return contribution
    return accept


def _aggregate_and_apply(planner: DownlinkPlanner, aggregator: RoundAggregator) -> None:
    """Finish the round's aggregate (tensors, or Ferret coefficients) by the run's rule; advance the global state."""
    aggregator.result().apply_to(planner)


def _secure_aggregate(grid: Grid, cfg: RunConfig, plan: SecurePlan, outcome: RoundOutcome, round_id: int
                      ) -> SecureResult:
    """Run the secure-aggregation stages over the clients whose keys arrived; fold the result into ``outcome``."""
    result = run_protocol(grid, plan, dict(zip(outcome.accepted, outcome.updates, strict=True)), round_id,
                          cfg.round_timeout_s, outcome.clients)
    outcome.failures.extend(result.problems)
    if result.aborted:
        outcome.failures.append(f"secure aggregation aborted: {result.aborted}")
    survivors = set(result.survivors)
    for node, client in outcome.clients.items():
        if client["status"] == "ok" and node not in survivors:
            client["status"] = "dropped"
    kept = [i for i, node in enumerate(outcome.accepted) if node in survivors]
    outcome.accepted = [outcome.accepted[i] for i in kept]
    outcome.updates = [outcome.updates[i] for i in kept]
    outcome.train_losses = [outcome.train_losses[i] for i in kept]
    outcome.weights = [outcome.weights[i] for i in kept]
    outcome.bytes_up = sum(outcome.clients[node]["bytes_up"] for node in survivors)
    return result


def read_reply(content: RecordDict, accept: Callable[[bytes], Any], digest: str, client: dict[str, Any],
               payload_key: str = messages.ENCODED_UPDATE) -> tuple[Any, float, float]:
    """Check one client's reply before anything of it is used: the payload (through ``accept``: codec, version,
    round, layout, sizes, finite values, norm bound), the metrics the coordinator relies on, and that the client
    trained from this round's global state (``digest``). Fills ``client`` (bytes, partition, residual figures);
    returns the accepted update, its weight (examples) and training loss. Raises UpdateRejected naming the
    first problem: nothing in a reply may raise anything else."""
    try:
        payload = content[messages.UPDATE][payload_key]
        metrics = content[messages.METRICS]
        if not isinstance(payload, bytes):
            raise UpdateRejected(f"{payload_key} is not bytes")
        client["bytes_up"] = len(payload)
        client["partition_id"] = int(metrics["partition-id"]) if "partition-id" in metrics else None
        for key in ("residual-norm", "residual-carried", "update-norm", "secagg-clipped"):
            if key in metrics:
                client[key.replace("-", "_")] = float(metrics[key])
        client["in_sync"] = int(metrics["state-digest-48"]) == digest_prefix(digest)
        if not client["in_sync"]:
            raise UpdateRejected("client trained from another global state than this round's (digest differs)")
        num_examples = float(metrics["num-examples"])
        train_loss = float(metrics["train-loss"])
    except (KeyError, TypeError, OverflowError) as exc:
        raise UpdateRejected(f"reply lacks or mistypes {exc}") from exc
    if not 0 < num_examples < float("inf"):
        raise UpdateRejected(f"num-examples must be positive and finite, got {num_examples}")
    if not math.isfinite(train_loss):
        raise UpdateRejected(f"train-loss must be finite, got {train_loss}")
    return accept(payload), num_examples, train_loss


def collect_replies(replies: Iterable[Message], sent: dict[int, int], accept: Callable[[bytes], Any], digest: str,
                    payload_key: str = messages.ENCODED_UPDATE, sink: RoundAggregator | None = None
                    ) -> RoundOutcome:
    """Validate (and decode) each reply as it comes; ``sent`` maps each sampled node to the bytes sent down to it,
    and ``digest`` is the global state's, which every client must report having trained from. Accepted updates go
    to ``sink`` at once (and are dropped here), or, without one, into ``outcome.updates``."""
    outcome = RoundOutcome()
    received = 0
    for node, bytes_down in sent.items():
        outcome.clients[node] = {"node_id": node, "partition_id": None, "bytes_up": 0, "bytes_down": bytes_down,
                                 "status": "no reply"}
    for reply in replies:
        received += 1
        node = reply.metadata.src_node_id
        client = outcome.clients.setdefault(node, {"node_id": node, "partition_id": None, "bytes_up": 0,
                                                   "bytes_down": 0, "status": "no reply"})
        if reply.has_error():
            outcome.failures.append(f"node {node}: client failed: {reply.error.reason}")
            client["status"] = "failed"
            continue
        if node in outcome.answered:
            outcome.rejections.append(f"node {node}: update rejected: a second reply in one round (duplicate)")
            continue
        outcome.answered.append(node)
        try:
            update, num_examples, train_loss = read_reply(reply.content, accept, digest, client, payload_key)
            if sink is not None:
                sink.add(_order_key(node, client), update, num_examples)
        except ValueError as exc:
            outcome.rejections.append(f"node {node}: update rejected: {exc}")
            client["status"] = "rejected"
            continue
        client["status"] = "ok"
        outcome.accepted.append(node)
        if sink is None:
            outcome.updates.append(update)
        del update
        outcome.weights.append(num_examples)
        outcome.train_losses.append(train_loss)
        outcome.bytes_up += client["bytes_up"]
    if received < len(sent):
        outcome.failures.append(f"{len(sent) - received} client(s) sent no reply before the round timeout")
    # Replies arrive in any order; keep partition order so that a run (or a resumed one) is reproducible.
    order = sorted(range(len(outcome.accepted)),
                   key=lambda i: _order_key(outcome.accepted[i], outcome.clients[outcome.accepted[i]]))
    outcome.accepted = [outcome.accepted[i] for i in order]
    if sink is None:
        outcome.updates = [outcome.updates[i] for i in order]
    outcome.weights = [outcome.weights[i] for i in order]
    outcome.train_losses = [outcome.train_losses[i] for i in order]
    return outcome


def _order_key(node: int, client: dict[str, Any]) -> tuple[bool, int, int]:
    """Partition order (node id where a client names no partition): the same in every run and every resumed run,
    unlike node ids or arrival order."""
    return client["partition_id"] is None, client["partition_id"] or 0, node


def _train_messages(node_ids: list[int], planner: DownlinkPlanner, cfg: RunConfig, round_id: int,
                    secure: SecurePlan | None = None) -> tuple[list[Message], dict[int, int]]:
    """One train message per node (with the downlink that node needs) and the exact bytes sent down to each."""
    shared = shared_seed(cfg.uplink.impl, cfg.seed, round_id)
    seed = {SEED_KEY: shared} if shared is not None else {}
    extra = secure.train_config if secure is not None else {}
    train_config = ConfigRecord({**cfg.task.to_record(), **cfg.codec_options(), "round": round_id, **seed,
                                 "clients-per-round": len(node_ids), **extra})
    out, bytes_down = [], {}
    for node_id in node_ids:
        downlink = planner.message_for(node_id)
        bytes_down[node_id] = downlink.nbytes + (secure.setup_bytes if secure is not None else 0)
        out.append(Message(
            content=RecordDict({messages.DOWNLINK: messages.downlink_record(downlink),
                                messages.TRAIN_CONFIG: train_config}),
            dst_node_id=node_id,
            message_type=MessageType.TRAIN,
            group_id=str(round_id),
        ))
    return out, bytes_down


def _checkpointed_config(cfg: RunConfig) -> dict[str, Any]:
    """The run-config keys a resumed run must share with the run it continues."""
    return {k: v for k, v in cfg.values.items() if k not in RESUMABLE_CHANGES}


def resume_point(cfg: RunConfig, out_dir: Path) -> checkpoint.Checkpoint | None:
    """The checkpoint to continue from when ``resume`` is on (None: start afresh); CheckpointError when it belongs
    to a run with other settings or is already past this run's last round."""
    if not cfg.resume:
        return None
    saved = checkpoint.load(out_dir)
    if saved is None:
        log.info("resume: no checkpoint in %s, starting from round 1", out_dir / checkpoint.DIRECTORY)
        return None
    expected = _checkpointed_config(cfg)
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


def _restore_planner(planner: DownlinkPlanner, saved: checkpoint.Checkpoint) -> None:
    """Put the checkpointed global state back. Which version each client holds is not restored: a resumed run is
    a new Flower run, so every client's node state starts empty and receives the full state first."""
    layout = {name: tuple(t.shape) for name, t in planner.state.items()}
    if {name: tuple(t.shape) for name, t in saved.state.items()} != layout:
        raise checkpoint.CheckpointError("cannot resume: the checkpointed global state has other tensors than this "
                                         "run's model")
    planner.state, planner.version, planner.residual = saved.state, saved.version, saved.residual
    planner.history = dict(saved.history)
    planner.held = {}


def _evaluated_in(cfg: RunConfig, round_id: int) -> bool:
    """Whether the global model is scored after ``round_id``: every ``eval-every`` rounds, and after the last."""
    return round_id % cfg.eval_every == 0 or round_id == cfg.num_server_rounds


def summary_metrics(base: dict[str, float], final: dict[str, float]) -> dict[str, float]:
    """Every held-out metric of the base and the final model as ``<name>_base`` / ``<name>_final``."""
    return {**{f"{k}_base": v for k, v in base.items()}, **{f"{k}_final": v for k, v in final.items()}}


def run_federation(grid: Grid, cfg: RunConfig, out_dir: Path, model: ModelHooks) -> dict[str, Any]:
    """Run ``cfg.num_server_rounds`` rounds on ``grid``, write outputs to ``out_dir``, return the summary.

    ``model`` (built by server/app.py) gives the initial global state, scores a state on the held-out data and
    exports one; the loop reports ``model.metric`` by name."""
    started = time.perf_counter()
    progress = RoundProgress(cfg.num_server_rounds)
    metric = model.metric
    try:
        planner = DownlinkPlanner(cfg.downlink, model.initial_state, known_base=cfg.task.trainable == "full")
        layout = {name: tuple(t.shape) for name, t in planner.state.items()}
        dense_bytes_per_client = dense_fp32_bytes(planner.state)
        resumed = resume_point(cfg, out_dir)
        samples_log = SamplesLog(out_dir, keep_through_round=resumed.round if resumed is not None else None)
        if resumed is None:
            progress.status("evaluating the base model")
            base_evaluation = model.evaluate_fn(planner.state)
            base = base_evaluation.metrics
            samples_log.append(0, base_evaluation.samples)
        else:
            base = resumed.base
            _restore_planner(planner, resumed)
            started -= resumed.wall_s
        log.info("base model: held-out %s", _describe(base))
        metrics_log = MetricsLog(out_dir, rows=resumed.rows if resumed is not None else None)
        progress.status(f"waiting for {cfg.num_clients} client nodes")
        node_ids = wait_for_nodes(grid, cfg.num_clients, cfg.wait_for_clients_s)
        sampler = random.Random(cfg.seed)
        per_round = max(1, round(cfg.fraction_train * len(node_ids)))
        min_clients = cfg.min_train_clients or 1
        totals = {"bytes_up_total": 0, "bytes_down_total": 0, "bytes_up_dense_equivalent": 0,
                  "bytes_down_dense_equivalent": 0}
        current = base
        previous_update: dict[str, torch.Tensor] | None = None
        ledger = (PrivacyLedger(cfg.dp, sample_rate=per_round / len(node_ids), delta=cfg.dp_delta)
                  if cfg.dp.enabled else None)
        epsilon = 0.0
        first_round = 1
        if resumed is not None:
            sampler.setstate(resumed.sampler_state)
            totals.update(resumed.totals)
            current, previous_update, first_round = resumed.current, resumed.previous_update, resumed.round + 1
            for _ in range(resumed.dp_rounds if ledger is not None else 0):
                epsilon = ledger.step()  # type: ignore[union-attr]
            log.info("resuming after round %d of %d from %s", resumed.round, cfg.num_server_rounds,
                     out_dir / checkpoint.DIRECTORY)
        for round_id in range(first_round, cfg.num_server_rounds + 1):
            round_started = time.perf_counter()
            sampled = sorted(sampler.sample(node_ids, per_round))
            progress.status(f"round {round_id}: training on {len(sampled)} clients")
            secure = (plan_round(cfg, round_id, sampled, layout, shared_seed(cfg.uplink.impl, cfg.seed, round_id),
                                 previous_update)
                      if cfg.secure.enabled else None)
            train_messages, bytes_down = _train_messages(sampled, planner, cfg, round_id, secure)
            sent_digest = planner.digest()
            replies = stream_replies(grid, train_messages, cfg.round_timeout_s)
            del train_messages
            aggregator = RoundAggregator(cfg.aggregation, planner.version + 1, cfg.uplink.impl)
            if secure is None:
                outcome = collect_replies(replies, bytes_down, acceptor(cfg, round_id, layout), sent_digest,
                                          sink=aggregator)
            else:
                outcome = collect_replies(replies, bytes_down, lambda keys: keys, sent_digest,
                                          payload_key=messages.SECAGG_KEYS)
            for node in sampled:
                (planner.confirmed if node in outcome.answered else planner.forget)(node)
            secure_result = None
            if secure is not None:
                secure_result = _secure_aggregate(grid, cfg, secure, outcome, round_id)
                applied = secure_result.update is not None and len(secure_result.survivors) >= min_clients
            else:
                applied = len(outcome.accepted) >= min_clients
            for problem in outcome.failures + outcome.rejections:
                log.warning("round %d: %s", round_id, problem)
            if applied and secure_result is not None:
                assert secure_result.update is not None
                secure_result.update.apply_to(planner)
                previous_update = secure_result.update.delta
            elif applied:
                try:
                    _aggregate_and_apply(planner, aggregator)
                except ValueError as exc:
                    applied = False
                    outcome.failures.append(f"aggregation ({cfg.aggregation.rule}) failed: {exc}")
                    log.warning("round %d: aggregation (%s) failed: %s", round_id, cfg.aggregation.rule, exc)
            if applied and ledger is not None:
                epsilon = ledger.step()
            round_s = time.perf_counter() - round_started
            evaluated = applied and _evaluated_in(cfg, round_id)
            if evaluated:
                evaluation = model.evaluate_fn(planner.state)
                current = evaluation.metrics
                samples_log.append(round_id, evaluation.samples)
            if not applied:
                log.warning("round %d skipped: %d usable updates, %d needed%s; global adapter unchanged",
                            round_id, len(outcome.accepted), min_clients,
                            f" (secure aggregation aborted: {secure_result.aborted})"
                            if secure_result is not None and secure_result.aborted else "")
            clients = sorted(outcome.clients.values(), key=lambda c: c["node_id"])
            for client in clients:
                client["dense_fp32_bytes_up"] = dense_bytes_per_client if client["bytes_up"] else 0
                client["dense_fp32_bytes_down"] = dense_bytes_per_client
            round_bytes_down = sum(c["bytes_down"] for c in clients)
            totals["bytes_up_total"] += sum(c["bytes_up"] for c in clients)
            totals["bytes_down_total"] += round_bytes_down
            totals["bytes_up_dense_equivalent"] += sum(c["dense_fp32_bytes_up"] for c in clients)
            totals["bytes_down_dense_equivalent"] += sum(c["dense_fp32_bytes_down"] for c in clients)
            row = {
                "round": round_id,
                **(current if evaluated else {}),
                "evaluated": evaluated,
                "train_loss": sum(outcome.train_losses) / len(outcome.train_losses) if outcome.train_losses else None,
                "clients_sampled": len(sampled),
                "clients_ok": len(outcome.accepted),
                "clients_failed": len(outcome.failures),
                "updates_rejected": len(outcome.rejections),
                "problems": outcome.failures + outcome.rejections,
                "applied": applied,
                "bytes_up": sum(c["bytes_up"] for c in clients),
                "bytes_up_accepted": outcome.bytes_up,
                "bytes_up_per_client": outcome.bytes_up / len(outcome.accepted) if outcome.accepted else 0,
                "bytes_down": round_bytes_down,
                "state_version": planner.version,
                **({"secagg": {"survivors": secure_result.survivors, "dropped": secure_result.dropped,
                               "aborted": secure_result.aborted}} if secure_result is not None else {}),
                **({"dp_epsilon": epsilon} if ledger is not None else {}),
                "clients": clients,
                "round_s": round_s,
                "eval_s": time.perf_counter() - round_started - round_s,
            }
            metrics_log.append(row)
            checkpoint.save(out_dir, checkpoint.Checkpoint(
                round=round_id, run_config=_checkpointed_config(cfg), state=planner.state, version=planner.version,
                residual=planner.residual, history=dict(planner.history), previous_update=previous_update,
                sampler_state=sampler.getstate(), dp_rounds=ledger.rounds if ledger is not None else 0,
                totals=dict(totals), base=base, current=current, rows=metrics_log.rows,
                wall_s=time.perf_counter() - started))
            scored = f"{metric} {current[metric]:.3f}" if evaluated else "not evaluated this round"
            progress.round_done(round_id, f"{scored}, {len(outcome.accepted)}/{len(sampled)} "
                                          f"clients, {row['bytes_up'] / 1e6:.3f} MB up, "
                                          f"{round_bytes_down / 1e6:.3f} MB down"
                                          + (f", {len(outcome.failures) + len(outcome.rejections)} problem(s)"
                                             if outcome.failures or outcome.rejections else ""))
        progress.status("writing adapter, summary and plots")
        model.export_fn(planner.state, out_dir)
        plot_metrics(metrics_log.rows, [metric, *(k for k in base if k != metric)], base, out_dir)
        summary = {
            "preset": cfg.preset,
            "model": cfg.task.model,
            "dataset": cfg.task.dataset,
            "num_clients": cfg.num_clients,
            "rounds": cfg.num_server_rounds,
            "codec": cfg.codec,
            "codec_options": cfg.codec_options(),
            "metric": metric,
            "higher_is_better": model.higher_is_better,
            "metric_base": base[metric],
            "metric_final": current[metric],
            **summary_metrics(base, current),
            **totals,
            "compression_up": (totals["bytes_up_dense_equivalent"] / totals["bytes_up_total"]
                               if totals["bytes_up_total"] else None),
            "compression_down": (totals["bytes_down_dense_equivalent"] / totals["bytes_down_total"]
                                 if totals["bytes_down_total"] else None),
            "clients_failed_total": sum(r["clients_failed"] for r in metrics_log.rows),
            "updates_rejected_total": sum(r["updates_rejected"] for r in metrics_log.rows),
            "rounds_skipped": sum(not r["applied"] for r in metrics_log.rows),
            "secagg": cfg.secure.enabled,
            **({"dp_noise_multiplier": cfg.dp.noise_multiplier, "dp_clip": cfg.dp.clip, "dp_delta": cfg.dp_delta,
                "dp_epsilon": epsilon} if ledger is not None else {}),
            "wall_s": time.perf_counter() - started,
            "task": cfg.task.to_record(),
        }
        write_json_atomic(out_dir / "summary.json", summary)
        return summary
    finally:
        progress.close()
