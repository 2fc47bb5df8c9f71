"""Fault injection for simulations: make chosen clients fail, lie (Byzantine updates) or straggle, to exercise the
coordinator's handling, its robust aggregation rules and its timing reports."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from client.app import query, secagg_confirm, secagg_mask, secagg_share, secagg_unmask, train
from strategies import messages
from strategies.codecs.registry import CodecSettings

BYZANTINE_ATTACKS = ("sign-flip", "scale", "random", "inflate")
SCALE = 100.0
INFLATE = 1000.0  # "inflate": a sign-flipped update that claims this many times its examples, to dominate FedAvg


class InjectedClientFailure(RuntimeError):
    """Raised on purpose by a simulated client chosen to fail."""


def _client_app_with(mod: Callable[[Message, Context, Callable[[Message, Context], Message]], Message]
                     ) -> ClientApp:
    """fedsqueeze's ClientApp (every message type it handles) with ``mod`` around each message."""
    app = ClientApp(mods=[mod])
    app.query()(query)
    app.train()(train)
    app.train("secagg_share")(secagg_share)
    app.train("secagg_mask")(secagg_mask)
    app.train("secagg_confirm")(secagg_confirm)
    app.train("secagg_unmask")(secagg_unmask)
    return app


def client_app_with_failures(failing_partitions: set[int], at: str = "train") -> ClientApp:
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


def byzantine_payload(payload: bytes, config: dict, attack: str, seed: int) -> bytes:
    """An honest client's encoded update turned into attack ``attack``, encoded again with the same codec and
    options (a Byzantine client sends well-formed lies, which validation alone cannot catch)."""
    if attack not in BYZANTINE_ATTACKS:
        raise ValueError(f"unknown byzantine attack '{attack}' (choose from {', '.join(BYZANTINE_ATTACKS)})")
    settings = CodecSettings.from_record(config)
    generator = torch.Generator().manual_seed(seed)
    tensor_attack = "sign-flip" if attack == "inflate" else attack
    return settings.impl.map_values(payload, settings.options,
                                    lambda values: attacked_tensor(values, tensor_attack, generator),
                                    round_id=int(config["round"]))


def client_app_with_byzantine(partitions: set[int], attack: str) -> ClientApp:
    """The fedsqueeze ClientApp, except that nodes holding ``partitions`` replace their update by ``attack``."""
    if attack not in BYZANTINE_ATTACKS:
        raise ValueError(f"unknown byzantine attack '{attack}' (choose from {', '.join(BYZANTINE_ATTACKS)})")

    def lie_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(msg, context)
        partition_id = int(context.node_config["partition-id"])
        if (partition_id not in partitions or msg.metadata.message_type != "train" or reply.has_error()
                or messages.ENCODED_UPDATE not in reply.content[messages.UPDATE]):
            return reply
        config = dict(msg.content[messages.TRAIN_CONFIG])
        honest = reply.content[messages.UPDATE][messages.ENCODED_UPDATE]
        lied = byzantine_payload(honest, config, attack, seed=int(config["round"]) * 1009 + partition_id)
        reply.content[messages.UPDATE] = ConfigRecord({messages.ENCODED_UPDATE: lied})
        if attack == "inflate":
            reply.content[messages.METRICS]["num-examples"] = INFLATE * float(
                reply.content[messages.METRICS]["num-examples"])
        return reply

    app = ClientApp(mods=[lie_mod])
    app.query()(query)
    app.train()(train)
    return app


def client_app_with_delay(slow_partitions: set[int], seconds: float) -> ClientApp:
    """The fedsqueeze ClientApp, except that nodes holding ``slow_partitions`` wait ``seconds`` before replying to
    a train message: a straggler (a slow link or a slow machine) for tests of timing and round deadlines."""
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"a client delay must be a finite number of seconds >= 0, got {seconds}")

    def delay_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(msg, context)
        if int(context.node_config["partition-id"]) in slow_partitions and msg.metadata.message_type == "train":
            time.sleep(seconds)
        return reply

    return _client_app_with(delay_mod)
