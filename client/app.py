"""The Flower ClientApp: receive the global adapter, train locally, send back an encoded update.

Kept light on purpose: on a deployed node Flower starts this app in a fresh process for every message, and when
``fedsqueeze node`` runs a warm trainer the app only hands the message to it (``client/warm_channel.py``). Without
one (simulation, a plain ``flower-supernode``) the work runs here, in ``client/handlers.py``.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.warm_channel import forward_if_warm

app = ClientApp()


def handle(msg: Message, context: Context) -> Message:
    """Run one message on the node's warm trainer when it has one, else in this process."""
    reply = forward_if_warm(msg, context)
    if reply is not None:
        return reply
    from client.handlers import run_message  # torch, transformers: only where the work runs in this process

    return run_message(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Enrolment before round 1: this node's partition and its number of training examples."""
    return handle(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global adapter on this node's data and reply with an encoded update."""
    return handle(msg, context)


@app.train("secagg_share")
def secagg_share(msg: Message, context: Context) -> Message:
    """Secure aggregation, stage 2: Shamir-share this round's secrets with the neighbours."""
    return handle(msg, context)


@app.train("secagg_mask")
def secagg_mask(msg: Message, context: Context) -> Message:
    """Secure aggregation, stage 3: send the masked update."""
    return handle(msg, context)


@app.train("secagg_confirm")
def secagg_confirm(msg: Message, context: Context) -> Message:
    """Secure aggregation, stage 4a (node identities): sign the survivor/dropped story this node was told."""
    return handle(msg, context)


@app.train("secagg_unmask")
def secagg_unmask(msg: Message, context: Context) -> Message:
    """Secure aggregation, stage 4: reveal the shares that remove the masks of the round."""
    return handle(msg, context)
