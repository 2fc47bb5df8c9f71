"""Fault injection for simulations: make chosen clients fail, to exercise the coordinator's handling."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.app import train


class InjectedClientFailure(RuntimeError):
    """Raised on purpose by a simulated client chosen to fail."""


def client_app_with_failures(failing_partitions: set[int]) -> ClientApp:
    """The fedsqueeze ClientApp, except that nodes holding ``failing_partitions`` raise while training."""

    def fail_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        partition_id = int(context.node_config["partition-id"])
        if partition_id in failing_partitions:
            raise InjectedClientFailure(f"injected failure on partition {partition_id}")
        return call_next(msg, context)

    app = ClientApp(mods=[fail_mod])
    app.train()(train)
    return app
