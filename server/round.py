"""One coordinator round as named steps: configure → collect → aggregate → apply → evaluate → record.

Each step is a short function with typed values in and out; ``run_round`` calls them in order, like Flower's
``Strategy.start``. The codec, the aggregation rule and the task are reached through what they hand in (the codec
registry, ``RoundAggregator``, ``ModelHooks``); nothing here compares their names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from server import checkpoint
from server.aggregation import RoundAggregator, byte_limit, check_norm
from server.client_reply import RoundOutcome, collect_replies
from server.coordinator_state import CoordinatorState
from server.enrolment import Enrolment, samples, weight_ceiling
from server.evaluation import ModelHooks, SamplesLog
from server.late_replies import LateReplies
from server.outputs import MetricsLog
from server.progress import RoundProgress
from server.replies import ReplyStream
from server.roster import online_in_order, updated_enrolment
from server.run_config import RESUMABLE_CHANGES, RunConfig
from server.secure_round import SecurePlan, SecureResult, plan_round, run_protocol
from server.timings import describe_straggler, round_timings
from strategies import messages
from strategies.codecs.base import Aggregate, TensorAggregate
from strategies.codecs.registry import shared_seed
from strategies.downlink import GlobalState
from strategies.message_types import TRAIN
from strategies.messages import TrainInstructions
from strategies.privacy import summed_noise_multiplier

log = logging.getLogger("fedsqueeze")


@dataclass
class Federation:
    """What every round of a run uses: the grid, the config, the model hooks, the nodes in sampling order (nodes
    that join during the run are added, server/roster.py), the update layout, where progress, metrics and samples
    go, and the messages of closed rounds whose late replies are still to be refused."""

    grid: Grid
    cfg: RunConfig
    model: ModelHooks
    out_dir: Path
    node_ids: list[int]
    layout: dict[str, tuple[int, ...]]
    dense_fp32_bytes: int
    progress: RoundProgress
    metrics_log: MetricsLog
    samples_log: SamplesLog
    started: float  # perf_counter at the run's (virtual) start: a resumed run counts its earlier wall time
    enrolment: Enrolment  # the nodes' partitions when the run samples; node_ids is in its order
    late: LateReplies = field(default_factory=LateReplies)

    @property
    def per_round(self) -> int:
        """Clients sampled per round when every known node is online."""
        return self.sample_size(len(self.node_ids))

    def sample_size(self, online: int) -> int:
        """Clients sampled in a round with ``online`` nodes online: ``fraction-train`` of them, at least one."""
        return max(1, round(self.cfg.fraction_train * online))

    def online_nodes(self) -> list[int]:
        """The nodes online now, in sampling order, enrolling any that joined since the last round."""
        online = set(self.grid.get_node_ids())
        self.enrolment = updated_enrolment(self.grid, self.enrolment, online,
                                           samples=samples(self.cfg.fraction_train, len(online)),
                                           timeout_s=self.cfg.round_timeout_s)
        self.node_ids = self.enrolment.order
        return online_in_order(self.node_ids, online)

    @property
    def min_clients(self) -> int:
        """Accepted updates a round needs to be applied."""
        return self.cfg.min_train_clients or 1


@dataclass
class RoundPlan:
    """The configure step's result: who trains, the secure-aggregation plan, and the bytes sent down to each."""

    round_id: int
    sampled: list[int]
    secure: SecurePlan | None
    bytes_down: dict[int, int]
    digest: str  # the global state every client must report having trained from


def checkpointed_config(cfg: RunConfig) -> dict[str, Any]:
    """The run-config keys a resumed run must share with the run it continues."""
    return {k: v for k, v in cfg.values.items() if k not in RESUMABLE_CHANGES}


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


def train_messages(plan: RoundPlan, global_state: GlobalState, cfg: RunConfig, federation_id: str) -> list[Message]:
    """One train message per sampled node, with the downlink that node needs; fills ``plan.bytes_down``."""
    train_config = TrainInstructions(
        round=plan.round_id, task=cfg.task.to_record(), uplink=cfg.uplink, downlink=cfg.downlink,
        clients_per_round=len(plan.sampled), error_feedback=cfg.error_feedback, dp=cfg.dp,
        federation_id=federation_id, round_seed=shared_seed(cfg.uplink.impl, cfg.seed, plan.round_id),
        secure=plan.secure.instructions if plan.secure is not None else None).to_record()
    out = []
    for node_id in plan.sampled:
        downlink = global_state.message_for(node_id)
        plan.bytes_down[node_id] = downlink.nbytes + (plan.secure.setup_bytes if plan.secure is not None else 0)
        out.append(Message(content=RecordDict({messages.DOWNLINK: messages.downlink_record(downlink),
                                               messages.TRAIN_CONFIG: train_config}),
                           dst_node_id=node_id, message_type=TRAIN, group_id=str(plan.round_id)))
    return out


def configure(fed: Federation, state: CoordinatorState, round_id: int) -> tuple[RoundPlan, list[Message]]:
    """Sample the round's clients, plan secure aggregation, and build their train messages."""
    nodes = fed.online_nodes()
    sampled = sorted(state.sampler.sample(nodes, fed.sample_size(len(nodes))))
    fed.progress.begin_round(round_id, len(sampled))
    cfg = fed.cfg
    secure = (plan_round(cfg, round_id, sampled, fed.layout, shared_seed(cfg.uplink.impl, cfg.seed, round_id),
                         state.previous_update, run_id=fed.grid.run.run_id) if cfg.secure.enabled else None)
    plan = RoundPlan(round_id, sampled, secure, {}, state.global_state.digest())
    return plan, train_messages(plan, state.global_state, cfg, state.federation_id)


def collect(fed: Federation, state: CoordinatorState, plan: RoundPlan, out: list[Message]
            ) -> tuple[RoundOutcome, RoundAggregator]:
    """Send the messages and check each reply as it arrives; plain updates fold into the round's aggregator at
    once, secure rounds keep each client's public keys for the protocol."""
    cfg, global_state = fed.cfg, state.global_state
    replies = ReplyStream(fed.grid, out, cfg.round_timeout_s)

    def replied(count: int) -> None:
        fed.progress.clients(count, len(plan.sampled))

    del out
    aggregator = RoundAggregator(cfg.aggregation, global_state.version + 1, cfg.uplink.impl)
    ceiling = weight_ceiling(cfg.task.local_steps, cfg.task.batch_size)  # what an honest client reports
    if plan.secure is None:
        outcome = collect_replies(replies, plan.bytes_down, acceptor(cfg, plan.round_id, fed.layout), plan.digest,
                                  sink=aggregator, on_reply=replied,
                                  weigh=lambda node, reported: min(reported, ceiling), sender=replies.sender)
    else:
        outcome = collect_replies(replies, plan.bytes_down, lambda keys: keys, plan.digest,
                                  payload_key=messages.SECAGG_KEYS, on_reply=replied, sender=replies.sender)
    outcome.late = fed.late.refuse(fed.grid, plan.round_id)  # earlier rounds' stragglers, answering now
    fed.late.expect(replies.unanswered, plan.round_id)
    for node in plan.sampled:  # a node that answered rebuilt this round's state; any other may have lost it
        (global_state.confirmed if node in outcome.answered else global_state.forget)(node)
    return outcome, aggregator


def secure_aggregate(fed: Federation, plan: RoundPlan, outcome: RoundOutcome) -> SecureResult:
    """Run the secure-aggregation stages over the clients whose keys arrived; mark those who left as dropped."""
    assert plan.secure is not None
    keys = {node: outcome.clients[node].contribution for node in outcome.accepted}
    result = run_protocol(fed.grid, plan.secure, keys, plan.round_id, fed.cfg.round_timeout_s, outcome.clients)
    outcome.failures.extend(result.problems)
    if result.aborted:
        outcome.failures.append(f"secure aggregation aborted: {result.aborted}")
    survivors = set(result.survivors)
    for node, client in outcome.clients.items():
        if client.status == "ok" and node not in survivors:
            client.status = "dropped"
    return result


def aggregate(fed: Federation, plan: RoundPlan, outcome: RoundOutcome, aggregator: RoundAggregator
              ) -> tuple[Aggregate | None, SecureResult | None]:
    """The round's aggregate, or None when too few usable updates came (or the rule could not run)."""
    if plan.secure is not None:
        result = secure_aggregate(fed, plan, outcome)
        enough = result.update is not None and len(result.survivors) >= fed.min_clients
        log_problems(plan.round_id, outcome)
        return (result.update if enough else None), result
    log_problems(plan.round_id, outcome)
    if len(outcome.accepted) < fed.min_clients:
        return None, None
    try:
        return aggregator.result(), None
    except ValueError as exc:
        aggregation_failed(fed.cfg, plan.round_id, outcome, exc)
        return None, None


def log_problems(round_id: int, outcome: RoundOutcome) -> None:
    """One warning line per failure or rejection."""
    for problem in outcome.problems:
        log.warning("round %d: %s", round_id, problem)


def aggregation_failed(cfg: RunConfig, round_id: int, outcome: RoundOutcome, exc: ValueError) -> None:
    """Count and log a rule (or its application) that could not run; the round is skipped, nothing is lost."""
    outcome.failures.append(f"aggregation ({cfg.aggregation.rule}) failed: {exc}")
    log.warning("round %d: aggregation (%s) failed: %s", round_id, cfg.aggregation.rule, exc)


def apply(fed: Federation, state: CoordinatorState, plan: RoundPlan, outcome: RoundOutcome,
          result: Aggregate | None) -> bool:
    """Advance the global state by the round's aggregate and spend the round's privacy; whether it was applied."""
    if result is None:
        return False
    moments, steps = state.optimizer.state_dict(), state.optimizer.steps
    try:
        server_step(state, result).apply_to(state.global_state)
    except ValueError as exc:
        state.optimizer.load_state_dict(moments, steps)  # the round is skipped: so is the optimiser's step
        aggregation_failed(fed.cfg, plan.round_id, outcome, exc)
        return False
    if plan.secure is not None:
        state.previous_update = result.delta  # public now: every party applies it
    if state.ledger is not None:  # the multiplier the survivors' sum carried, not the one configured
        state.epsilon = state.ledger.step(summed_noise_multiplier(
            fed.cfg.dp, len(plan.sampled), len(outcome.accepted), secure=plan.secure is not None))
    return True


def server_step(state: CoordinatorState, result: Aggregate) -> Aggregate:
    """What the global state moves by: the aggregate itself (FedAvg), or the server optimiser's step for the
    round's mean delta (the run config refuses optimisers where the aggregate is not a delta)."""
    if not state.optimizer.settings.enabled:
        return result
    if result.delta is None:
        raise ValueError("a server optimiser needs the round's mean delta, and this aggregate is coefficients")
    return TensorAggregate(state.optimizer.step(result.delta))


def evaluate(fed: Federation, state: CoordinatorState, round_id: int, applied: bool) -> bool:
    """Score the global model on held-out data every ``eval-every`` rounds and after the last; whether it was."""
    cfg = fed.cfg
    if not (applied and (round_id % cfg.eval_every == 0 or round_id == cfg.num_server_rounds)):
        return False
    evaluation = fed.model.evaluate_fn(state.global_state.state)
    state.latest_metrics = evaluation.metrics
    fed.samples_log.append(round_id, evaluation.samples)
    return True


def metrics_row(fed: Federation, state: CoordinatorState, plan: RoundPlan, outcome: RoundOutcome,
                secure: SecureResult | None, applied: bool, evaluated: bool) -> dict[str, Any]:
    """The round's line in metrics.jsonl (timings are added by ``record``)."""
    clients = outcome.rows(fed.dense_fp32_bytes)
    losses, accepted = outcome.train_losses, outcome.accepted
    return {
        "round": plan.round_id, **(state.latest_metrics if evaluated else {}), "evaluated": evaluated,
        "train_loss": sum(losses) / len(losses) if losses else None,
        "clients_sampled": len(plan.sampled), "clients_ok": len(accepted),
        "clients_failed": len(outcome.failures), "updates_rejected": len(outcome.rejections),
        "clients_refused": len(outcome.refusals), "late_replies_refused": len(outcome.late),
        "problems": outcome.problems, "applied": applied,
        "bytes_up": sum(c["bytes_up"] for c in clients), "bytes_up_accepted": outcome.bytes_up,
        "bytes_up_per_client": outcome.bytes_up / len(accepted) if accepted else 0,
        "bytes_down": sum(c["bytes_down"] for c in clients), "state_version": state.global_state.version,
        **({"secagg": {"survivors": secure.survivors, "dropped": secure.dropped, "aborted": secure.aborted,
                       "signed": secure.signed}}
           if secure is not None else {}),
        **({"dp_epsilon": state.epsilon} if state.ledger is not None else {}),
        "clients": clients,
    }


def record(fed: Federation, state: CoordinatorState, row: dict[str, Any], round_s: float, round_started: float
           ) -> None:
    """Append the round's metrics, checkpoint the coordinator, and report progress."""
    row["round_s"] = round_s
    row["eval_s"] = time.perf_counter() - round_started - round_s
    row.update(round_timings(row["clients"], round_s))
    state.record_bytes(row["clients"])
    state.last_round = row["round"]
    fed.metrics_log.append(row)
    checkpoint.save(fed.out_dir, state.to_checkpoint(checkpointed_config(fed.cfg), fed.metrics_log.rows,
                                                     time.perf_counter() - fed.started))
    metric = fed.model.metric
    scored = f"{metric} {state.latest_metrics[metric]:.3f}" if row["evaluated"] else "not evaluated this round"
    problems = len(row["problems"])
    share = f" ({row['train_share']:.0%} training)" if row["train_share"] is not None else ""
    slow = "".join(f", straggler: {describe_straggler(s)}" for s in row["stragglers"])
    fed.progress.round_done(row["round"], f"{scored}, {row['clients_ok']}/{row['clients_sampled']} clients, "
                                          f"{row['bytes_up'] / 1e6:.3f} MB up, {row['bytes_down'] / 1e6:.3f} MB down, "
                                          f"{round_s:.1f} s{share}" + (f", {problems} problem(s)" if problems else "")
                            + slow, scored=scored, bytes_up=row["bytes_up"], bytes_down=row["bytes_down"])


def run_round(fed: Federation, state: CoordinatorState, round_id: int) -> None:
    """One round, start to checkpoint."""
    round_started = time.perf_counter()
    # -- configure: sample, plan secure aggregation, build each client's downlink
    plan, out = configure(fed, state, round_id)
    # -- collect: replies checked (and folded) as they arrive
    outcome, aggregator = collect(fed, state, plan, out)
    del out
    # -- aggregate: the run's rule over what was accepted, or the secure protocol's sum
    result, secure = aggregate(fed, plan, outcome, aggregator)
    # -- apply: advance the global state (the aggregate applies itself)
    applied = apply(fed, state, plan, outcome, result)
    round_s = time.perf_counter() - round_started
    # -- evaluate: held-out metrics of the new global state
    evaluated = evaluate(fed, state, round_id, applied)
    if not applied:
        aborted = f" (secure aggregation aborted: {secure.aborted})" if secure is not None and secure.aborted else ""
        log.warning("round %d skipped: %d usable updates, %d needed%s; global adapter unchanged", round_id,
                    len(outcome.accepted), fed.min_clients, aborted)
    # -- record: metrics row, checkpoint, progress
    record(fed, state, metrics_row(fed, state, plan, outcome, secure, applied, evaluated), round_s, round_started)
