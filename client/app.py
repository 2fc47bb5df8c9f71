"""The Flower ClientApp: receive the global adapter, train locally, send back an encoded update.

Kept light on purpose: on a deployed node Flower starts this app in a fresh process for every message, and when
``fedsqueeze node`` runs a warm trainer the app only hands the message to it (``client/warm_channel.py``). Without
one (simulation, a plain ``flower-supernode``) the work runs here, in ``client/handlers.py``. Every message type of
``strategies/message_types.py`` gets the same handler: enrolment (``query``: which partition this node holds),
``train`` (train and reply with an encoded update or, under secure aggregation, with its round keys), and the
secure-aggregation stages (``train.secagg_*``).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.warm_channel import forward_if_warm
from strategies.message_types import MESSAGE_TYPES, category_and_action


def handle(msg: Message, context: Context) -> Message:
    """Run one message on the node's warm trainer when it has one, else in this process."""
    reply = forward_if_warm(msg, context)
    if reply is not None:
        return reply
    from client.handlers import run_message  # torch, transformers: only where the work runs in this process

    return run_message(msg, context)


def register(app: ClientApp, handler=handle, message_types: tuple[str, ...] = MESSAGE_TYPES) -> ClientApp:
    """``app`` with ``handler`` registered for ``message_types`` (by default every type a fedsqueeze node serves)."""
    for message_type in message_types:
        category, action = category_and_action(message_type)
        decorator = getattr(app, category)
        (decorator(action) if action else decorator())(handler)
    return app


app = register(ClientApp())
