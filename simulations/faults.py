"""Fault injection for simulations: make chosen clients fail, lie (Byzantine updates) or straggle, to exercise the
coordinator's handling, its robust aggregation rules and its timing reports."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from client.app import register
from client.task.spec import TaskSpec
from strategies import messages
from strategies.codecs.registry import CodecSettings
from strategies.message_types import QUERY, TRAIN
from strategies.messages import TrainInstructions

BYZANTINE_ATTACKS = ("sign-flip", "scale", "random", "inflate")
SCALE = 100.0
INFLATE = 1000.0  # "inflate": a sign-flipped update that claims this many times its examples, to dominate FedAvg


class InjectedClientFailure(RuntimeError):
    """Raised on purpose by a simulated client chosen to fail."""


def _client_app_with(mod: Callable[[Message, Context, Callable[[Message, Context], Message]], Message]
                     ) -> ClientApp:
    """fedsqueeze's ClientApp (every message type it handles) with ``mod`` around each message."""
    return register(ClientApp(mods=[mod]))


def client_app_with_failures(failing_partitions: set[int], at: str = TRAIN) -> ClientApp:
    """The fedsqueeze ClientApp, except that nodes holding ``failing_partitions`` raise on messages of type ``at``
    (``train``, or a secure-aggregation stage such as ``train.secagg_mask``: a dropout mid-protocol)."""

    def fail_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        partition_id = int(context.node_config["partition-id"])
        if partition_id in failing_partitions and msg.metadata.message_type == at:
            raise InjectedClientFailure(f"injected failure on partition {partition_id} at {at}")
        return call_next(msg, context)

    return _client_app_with(fail_mod)


def attacked_tensor(values: torch.Tensor, attack: str, generator: torch.Generator) -> torch.Tensor:
    """One tensor (or coefficient vector) of a Byzantine update: sign-flipped, scaled x100, or Gaussian noise with
    a hundred times the honest spread (the "Gaussian attack" of the Byzantine-robustness literature)."""
    if attack == "sign-flip":
        return -values
    if attack == "scale":
        return values * SCALE
    spread = float(values.float().std()) if values.numel() > 1 else 1.0
    return torch.randn(values.shape, generator=generator, dtype=torch.float32).to(values.dtype) * (
        SCALE * (spread or 1.0))


def byzantine_payload(payload: bytes, settings: CodecSettings, round_id: int, attack: str, seed: int) -> bytes:
    """An honest client's encoded update of round ``round_id`` turned into attack ``attack``, encoded again with the
    same codec and options (a Byzantine client sends well-formed lies, which validation alone cannot catch)."""
    if attack not in BYZANTINE_ATTACKS:
        raise ValueError(f"unknown byzantine attack '{attack}' (choose from {', '.join(BYZANTINE_ATTACKS)})")
    generator = torch.Generator().manual_seed(seed)
    tensor_attack = "sign-flip" if attack == "inflate" else attack
    return settings.impl.map_values(payload, settings.options,
                                    lambda values: attacked_tensor(values, tensor_attack, generator),
                                    round_id=round_id)


def client_app_with_byzantine(partitions: set[int], attack: str) -> ClientApp:
    """The fedsqueeze ClientApp, except that nodes holding ``partitions`` replace their update by ``attack``."""
    if attack not in BYZANTINE_ATTACKS:
        raise ValueError(f"unknown byzantine attack '{attack}' (choose from {', '.join(BYZANTINE_ATTACKS)})")

    def lie_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(msg, context)
        partition_id = int(context.node_config["partition-id"])
        if (partition_id not in partitions or msg.metadata.message_type != TRAIN or reply.has_error()
                or messages.ENCODED_UPDATE not in reply.content[messages.UPDATE]):
            return reply
        instructions = TrainInstructions.from_record(msg.content[messages.TRAIN_CONFIG], TaskSpec.field_names())
        honest = reply.content[messages.UPDATE][messages.ENCODED_UPDATE]
        lied = byzantine_payload(honest, instructions.uplink, instructions.round, attack,
                                 seed=instructions.round * 1009 + partition_id)
        reply.content[messages.UPDATE] = ConfigRecord({messages.ENCODED_UPDATE: lied})
        if attack == "inflate":
            reply.content[messages.METRICS]["num-examples"] = INFLATE * float(
                reply.content[messages.METRICS]["num-examples"])
        return reply

    # Only the plain round: a Byzantine node does not serve the secure-aggregation stages (it drops out of them).
    return register(ClientApp(mods=[lie_mod]), message_types=(QUERY, TRAIN))


def client_app_with_delay(slow_partitions: set[int], seconds: float) -> ClientApp:
    """The fedsqueeze ClientApp, except that nodes holding ``slow_partitions`` wait ``seconds`` before replying to
    a train message: a straggler (a slow link or a slow machine) for tests of timing and round deadlines."""
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"a client delay must be a finite number of seconds >= 0, got {seconds}")

    def delay_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(msg, context)
        if int(context.node_config["partition-id"]) in slow_partitions and msg.metadata.message_type == TRAIN:
            time.sleep(seconds)
        return reply

    return _client_app_with(delay_mod)
