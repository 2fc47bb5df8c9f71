"""The message types a fedsqueeze node serves, in the order a round uses them: the one table the ClientApp registers
its handlers from and the coordinator sends. Kept free of heavy imports: the ClientApp process imports it."""

from __future__ import annotations

QUERY, TRAIN = "query", "train"
# The secure-aggregation stages after the train message, each sent as ``train.<stage>``.
SECAGG_STAGES = ("secagg_share", "secagg_mask", "secagg_confirm", "secagg_unmask")
MESSAGE_TYPES = (QUERY, TRAIN, *(f"{TRAIN}.{stage}" for stage in SECAGG_STAGES))


def secagg_message_type(stage: str) -> str:
    """The Flower message type of a secure-aggregation stage."""
    return f"{TRAIN}.{stage}"


def category_and_action(message_type: str) -> tuple[str, str | None]:
    """Flower's (category, action) of a message type; None: the category's default action."""
    category, _, action = message_type.partition(".")
    return category, action or None
