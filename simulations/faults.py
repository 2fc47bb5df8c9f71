"""Fault injection for simulations: make chosen clients fail, to exercise the coordinator's handling."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.app import secagg_mask, secagg_share, secagg_unmask, train


class InjectedClientFailure(RuntimeError):
    """Raised on purpose by a simulated client chosen to fail."""


def client_app_with_failures(failing_partitions: set[int], at: str = "train") -> ClientApp:
    """The fedsqueeze ClientApp, except that nodes holding ``failing_partitions`` raise on messages of type ``at``
    (``train``, or a secure-aggregation stage such as ``train.secagg_mask``: a dropout mid-protocol)."""

    def fail_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        partition_id = int(context.node_config["partition-id"])
        if partition_id in failing_partitions and msg.metadata.message_type == at:
            raise InjectedClientFailure(f"injected failure on partition {partition_id} at {at}")
        return call_next(msg, context)

    app = ClientApp(mods=[fail_mod])
    app.train()(train)
    app.train("secagg_share")(secagg_share)
    app.train("secagg_mask")(secagg_mask)
    app.train("secagg_unmask")(secagg_unmask)
    return app
