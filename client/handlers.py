"""What a client node does with each message: receive the global adapter, train locally, send back an encoded
update (and the secure-aggregation stages). Run by the ClientApp in its own process, or by the node's warm trainer.

This module imports torch and builds models; ``client/app.py`` imports it only when the work runs in-process."""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from datasets import Dataset
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from client import node_state, residual_store, secure
from client.privacy_floor import FloorRefusal
from client.task.build import Task, build_task, load_splits
from client.task.kinds.registry import check_spec
from client.task.loop import client_training_seed, train_locally
from client.task.partition import client_partition
from client.task.quiet import quiet_libraries
from client.task.spec import TaskSpec
from strategies import downlink, messages
from strategies.codecs.registry import CodecSettings
from strategies.fedavg import apply_update, subtract
from strategies.message_types import QUERY, SECAGG_STAGES, TRAIN, secagg_message_type
from strategies.messages import TrainInstructions
from strategies.norms import l2_norm
from strategies.privacy import privatize

log = logging.getLogger(__name__)
Sent = dict[str, torch.Tensor]  # what an encoded update stands for, as the receiver will decode it


@dataclass
class _Loaded:
    task: Task
    partition: Dataset
    base: dict[str, torch.Tensor] | None  # the pristine trainable state when it is the run's version 0 (full)


_CACHE: dict[tuple, _Loaded] = {}


def _node_partition(context: Context) -> tuple[int, int]:
    config = context.node_config
    try:
        return int(config["partition-id"]), int(config["num-partitions"])
    except KeyError as exc:
        raise ValueError("this node's config lacks partition-id / num-partitions "
                         "(start flower-supernode with --node-config \"partition-id=0 num-partitions=N\")") from exc


def _load(spec: TaskSpec, partition_id: int, num_partitions: int) -> tuple[_Loaded, bool]:
    """The task for ``spec`` on this partition and whether this call built it: built once per process and spec
    (later rounds, and later runs of the same task, only reload adapter weights)."""
    key = (spec, partition_id, num_partitions)
    built = key not in _CACHE
    if built:
        _CACHE.clear()
        train, _ = load_splits(spec)
        partition = client_partition(train.dataset, partition_id, num_partitions, kind=spec.partitioner,
                                     alpha=spec.dirichlet_alpha, seed=spec.seed, by=train.partition_by)
        task = build_task(spec, train)
        _CACHE[key] = _Loaded(task, partition, task.trainable_state() if spec.trainable == "full" else None)
    return _CACHE[key], built


def _receive_global(msg: Message, context: Context, settings: CodecSettings, layout: dict[str, tuple[int, ...]],
                    base: dict[str, torch.Tensor] | None) -> tuple[dict[str, torch.Tensor], int, str]:
    """Rebuild the global state from the downlink (full, or compressed aggregates applied to the held state).

    Returns the state, the bytes received and the state's SHA-256, which ``downlink.receive`` has checked."""
    message = messages.downlink_from_record(msg.content[messages.DOWNLINK])
    held, held_version = node_state.load_global(context.state)
    received = downlink.receive(message, settings.codec, held, held_version, layout=layout, base=base)
    if settings.impl.keeps_state_on_clients:
        node_state.save_global(context.state, received, message.version)
    else:
        node_state.drop(context.state, node_state.GLOBAL_STATE, node_state.GLOBAL_VERSION)
    return received, message.nbytes, message.digest


def _encode_with_feedback(delta: dict[str, torch.Tensor], settings: CodecSettings, error_feedback: bool,
                          context: Context, encode: Callable[[dict[str, torch.Tensor]], tuple[bytes, Sent]],
                          round_id: int = 0, store: Path | None = None) -> tuple[bytes, dict[str, float]]:
    """Encode ``delta`` plus the carried residual; keep ``what was meant - what was sent`` for the next round.

    ``encode`` returns the payload and what it stands for (as the receiver decodes it). Returns the payload and
    metrics: the new residual's L2 norm and whether an old residual was carried in. With ``store`` (the node's
    folder for this federation, client/residual_store.py) the residual lives on disk under ``round_id`` and
    outlives the Flower run; otherwise in the node state, for this run.
    """
    if not (error_feedback and settings.feedback_helps):
        node_state.drop(context.state, node_state.RESIDUAL)
        return encode(delta)[0], {}
    residual = (residual_store.load_before(store, round_id) if store is not None
                else node_state.load_tensors(context.state, node_state.RESIDUAL))
    layout = {name: tuple(t.shape) for name, t in delta.items()}
    carried = residual is not None and {n: tuple(t.shape) for n, t in residual.items()} == layout
    if carried:
        delta = apply_update(delta, {name: residual[name].to(t.device) for name, t in delta.items()})
    elif residual is not None:
        log.warning("error-feedback residual does not match the model's tensors; starting a new one")
    encoded, sent = encode(delta)  # the codec works on delta's device; what it sent decodes on the CPU
    residual = subtract(_on_cpu(delta), sent)
    if store is not None:
        residual_store.save(store, round_id, residual)
    else:
        node_state.save_tensors(context.state, node_state.RESIDUAL, residual)
    return encoded, {"residual-norm": l2_norm(residual), "residual-carried": float(carried)}


def _on_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors on the CPU (no copy for those already there)."""
    return {name: t.cpu() for name, t in tensors.items()}


def _training_seed(run_seed: int, round_id: int, partition_id: int, secure: bool) -> int:
    """The seed of this round's local training: the run's (reproducible) seed, plus under secure aggregation a
    secret of this node's own, so that a coordinator replaying a round (same global state, seed and round, other
    party sets) cannot make the node compute the same update twice and difference the sums."""
    seed = client_training_seed(run_seed, round_id, partition_id)
    return seed ^ secrets.randbits(62) if secure else seed


def _refusal(msg: Message, round_id: int, reason: FloorRefusal) -> Message:
    """The reply that refuses round ``round_id`` and says why (the coordinator records it as refused)."""
    log.warning("refused round %d: %s", round_id, reason)
    return Message(content=RecordDict({messages.REFUSAL: ConfigRecord({"reason": str(reason)})}), reply_to=msg)


def _codec_encoder(settings: CodecSettings, round_id: int, seed: int | None
                   ) -> Callable[[dict[str, torch.Tensor]], tuple[bytes, Sent]]:
    def encode(delta: dict[str, torch.Tensor]) -> tuple[bytes, Sent]:
        payload = settings.encode(delta, round_id=round_id, seed=seed)
        layout = {name: tuple(t.shape) for name, t in delta.items()}
        return payload, settings.impl.decode(payload, expected_round=round_id, expected_layout=layout)
    return encode


def _secure_encoder(instructions: TrainInstructions, context: Context, layout: dict[str, tuple[int, ...]]
                    ) -> Callable[[dict[str, torch.Tensor]], tuple[bytes, Sent]]:
    def encode(delta: dict[str, torch.Tensor]) -> tuple[bytes, Sent]:
        keys, party_input = secure.start(instructions, context, layout, _on_cpu(delta))
        if party_input.clipped:  # stays on the node: how often the clip bites is about this client's update
            log.info("secure aggregation clipped %d entries of this update", party_input.clipped)
        return keys, party_input.sent
    return encode


def describe(msg: Message, context: Context) -> Message:
    """Enrolment, once before round 1: which partition this node holds (from its node config; nothing is loaded),
    so the coordinator samples the same partitions in every run whatever node ids Flower hands out."""
    partition_id, num_partitions = _node_partition(context)
    return Message(content=RecordDict({messages.ENROLMENT: MetricRecord({"partition-id": partition_id,
                                                                          "num-partitions": num_partitions})}),
                   reply_to=msg)


def train(msg: Message, context: Context) -> Message:
    """Train the received global adapter on this node's data and reply with an encoded update."""
    received_at = time.perf_counter()
    quiet_libraries()
    threads = int(os.environ.get("FEDSQUEEZE_CLIENT_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    instructions = TrainInstructions.from_record(msg.content[messages.TRAIN_CONFIG], TaskSpec.field_names())
    round_id = instructions.round
    spec = check_spec(TaskSpec.from_record(instructions.task))  # a bad kind or columns: refused before anything
    try:
        secure.admit(instructions, context)  # before anything slow: the node's own privacy floor
    except FloorRefusal as exc:
        return _refusal(msg, round_id, exc)
    partition_id, num_partitions = _node_partition(context)
    for key in ("device", "quantization"):  # a node may choose its own device and base quantisation
        if context.node_config.get(key):
            spec = replace(spec, **{key: str(context.node_config[key])})
    loaded, built = _load(spec, partition_id, num_partitions)
    layout = loaded.task.trainable_shapes()
    received, bytes_down, trained_from = _receive_global(msg, context, instructions.downlink, layout, loaded.base)
    loaded.task.load_trainable_state(received)
    secure_round = instructions.secure is not None
    started = time.perf_counter()
    result = train_locally(loaded.task, loaded.partition, steps=spec.local_steps, batch_size=spec.batch_size,
                           lr=spec.lr, seed=_training_seed(spec.seed, round_id, partition_id, secure_round),
                           prox_mu=spec.fedprox_mu)
    trained = time.perf_counter()
    delta = loaded.task.trainable_delta(received, on_device=True)  # DP and the codec run where training ran
    del received
    if instructions.dp.enabled:  # the pre-clip norm stays here: it is exactly what DP must not reveal
        delta, _norm = privatize(delta, instructions.dp, instructions.clients_per_round, secure=secure_round)
    encoder = (_secure_encoder(instructions, context, layout) if secure_round
               else _codec_encoder(instructions.uplink, round_id, instructions.round_seed))
    store = residual_store.store_dir(context.node_config, instructions.federation_id, partition_id)
    try:
        encoded_update, feedback_metrics = _encode_with_feedback(delta, instructions.uplink,
                                                              instructions.error_feedback, context, encoder,
                                                              round_id, store)
    except FloorRefusal as exc:  # the setup ledger, checked again as the keys are about to leave
        return _refusal(msg, round_id, exc)
    finished = time.perf_counter()
    log.info("partition %d round %d: loss %.4f on %d examples, %d bytes up, %d bytes down", partition_id, round_id,
             result.train_loss, result.num_examples, len(encoded_update), bytes_down)
    metrics: dict[str, float] = {
        "num-examples": result.num_examples,
        "train-loss": result.train_loss,
        "bytes-up": len(encoded_update),
        "bytes-down": bytes_down,
        **feedback_metrics,
        "steps": result.steps,
        "train-s": trained - started,
        "encode-s": finished - trained,
        "client-s": finished - received_at,
        "task-built": float(built),
        "partition-id": partition_id,
        "state-digest-48": downlink.digest_prefix(trained_from),
    }
    if secure_round:  # the coordinator may learn only the sum: nothing about this client's own update
        metrics = {key: value for key, value in metrics.items() if key not in messages.PRIVATE_UNDER_SECAGG}
    content = RecordDict({
        messages.UPDATE: ConfigRecord({messages.SECAGG_KEYS if secure_round else messages.ENCODED_UPDATE:
                                       encoded_update}),
        messages.METRICS: MetricRecord(metrics),
    })
    return Message(content=content, reply_to=msg)


def _stage(stage: str) -> Callable[[Message, Context], Message]:
    def answer(msg: Message, context: Context) -> Message:
        return secure.answer(msg, context, stage)
    answer.__doc__ = f"Secure aggregation, stage {stage}: the party's next step (client/secure.py)."
    return answer


HANDLERS: dict[str, Callable[[Message, Context], Message]] = {
    QUERY: describe,
    TRAIN: train,
    **{secagg_message_type(stage): _stage(stage) for stage in SECAGG_STAGES},
}


def run_message(msg: Message, context: Context) -> Message:
    """Run the handler for ``msg``'s Flower message type; ValueError for a type this client does not serve."""
    handler = HANDLERS.get(msg.metadata.message_type)
    if handler is None:
        raise ValueError(f"fedsqueeze clients serve {', '.join(HANDLERS)}; got '{msg.metadata.message_type}'")
    return handler(msg, context)
