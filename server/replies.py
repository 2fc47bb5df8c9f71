"""Replies as they arrive: push a round's messages, then pull and hand on each reply the moment it is there.

Flower's ``Grid.send_and_receive`` returns only when every reply is in (or the timeout passed), so a coordinator
that uses it holds every client's message at once. Pulling replies one poll at a time lets the coordinator decode,
fold and drop each update while the slower clients still train.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from flwr.app import Message
from flwr.serverapp import Grid

FIRST_POLL_S = 0.05
LONGEST_POLL_S = 1.0


class ReplyStream:
    """A round's messages, pushed; iterating yields each reply as it arrives, until all have replied or ``timeout``
    seconds passed (None: no limit). Polls quickly after a reply and backs off to once a second while none come.

    It remembers where each message went: an error the SuperLink sends in a node's place (the node stopped
    sending heartbeats) names the SuperLink as its sender, so ``sender`` is how a caller tells whose reply it is;
    and once iteration ends, ``unanswered`` maps each message that got no reply to its node (a straggler's
    message, whose late reply a later round must refuse)."""

    def __init__(self, grid: Grid, messages: Iterable[Message], timeout: float | None) -> None:
        self.grid, self.timeout = grid, timeout
        out = list(messages)
        self.sent_to: dict[str, int] = {mid: msg.metadata.dst_node_id
                                        for mid, msg in zip(grid.push_messages(out), out, strict=True)}
        del out  # the replies are what the caller needs from here on
        self.unanswered: dict[str, int] = {}

    def sender(self, reply: Message) -> int:
        """The node ``reply`` answers for (the message's destination), whoever sent it."""
        return self.sent_to.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)

    def __iter__(self) -> Iterator[Message]:
        waiting = set(self.sent_to)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        pause = FIRST_POLL_S
        while waiting and (deadline is None or time.monotonic() < deadline):
            arrived = list(self.grid.pull_messages(list(waiting)))
            for reply in arrived:
                waiting.discard(reply.metadata.reply_to_message_id)
            if arrived:
                pause = FIRST_POLL_S
            while arrived:
                yield arrived.pop(0)  # drop our reference once the caller has used it
            if waiting:
                time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic())))
                pause = min(LONGEST_POLL_S, pause * 2)
        self.unanswered = {mid: self.sent_to[mid] for mid in waiting}

