"""Replies that come after their round closed: a straggler slower than ``round-timeout-s`` answers eventually, and its
reply sits on the SuperLink for the message's TTL. Every later round pulls those replies once and refuses them by
round id (an update trained from an older global state must never reach a newer aggregate), so the SuperLink holds
nothing for long and the metrics say which node answered which round late."""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.serverapp import Grid

KEEP_ROUNDS = 5  # a message still unanswered this many rounds after its own is forgotten


@dataclass
class LateReplies:
    """Messages of closed rounds that got no reply: message id -> (node, round)."""

    pending: dict[str, tuple[int, int]] = field(default_factory=dict)

    def expect(self, unanswered: dict[str, int], round_id: int) -> None:
        """Remember ``unanswered`` (message id -> node) of round ``round_id``, which just closed without them."""
        self.pending.update({mid: (node, round_id) for mid, node in unanswered.items()})

    def refuse(self, grid: Grid, round_id: int) -> list[str]:
        """Pull what arrived for earlier rounds during round ``round_id`` and refuse it; one line per reply. An error
        the SuperLink sent in a node's place (it stopped answering altogether) is dropped without a line."""
        if not self.pending:
            return []
        refused = []
        for reply in grid.pull_messages(list(self.pending)):
            node, late_round = self.pending.pop(reply.metadata.reply_to_message_id, (None, None))
            if node is None or reply.has_error():
                continue
            refused.append(f"node {node}: late reply for round {late_round} refused (round id {late_round}, "
                           f"this is round {round_id})")
        self.pending = {mid: (node, r) for mid, (node, r) in self.pending.items() if round_id - r < KEEP_ROUNDS}
        return refused
