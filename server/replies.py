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


def stream_replies(grid: Grid, messages: Iterable[Message], timeout: float | None) -> Iterator[Message]:
    """Push ``messages`` and yield each reply as it arrives, until all have replied or ``timeout`` seconds passed
    (None: no limit). Polls quickly after a reply and backs off to once a second while none come."""
    waiting = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = FIRST_POLL_S
    while waiting and (deadline is None or time.monotonic() < deadline):
        arrived = list(grid.pull_messages(list(waiting)))
        for reply in arrived:
            waiting.discard(reply.metadata.reply_to_message_id)
        if arrived:
            pause = FIRST_POLL_S
        while arrived:
            yield arrived.pop(0)  # drop our reference once the caller has used it
        if waiting:
            time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic())))
            pause = min(LONGEST_POLL_S, pause * 2)
