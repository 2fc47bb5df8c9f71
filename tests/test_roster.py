"""Membership during a run and replies after their round: nodes that join are enrolled and take their partition's
place in the order, nodes that leave are not sampled, errors the SuperLink sends in a node's place are charged to
that node, and replies to closed rounds are refused by round id. (The real thing, over gRPC with a node killed,
restarted and stalled, is tests/test_deployment_faults.py.)"""

from __future__ import annotations

import pytest
from flwr.app import Error, Message, MetricRecord, RecordDict

from server.enrolment import Enrolment
from server.late_replies import LateReplies
from server.replies import ReplyStream
from server.roster import online_in_order, updated_enrolment
from strategies import messages

SUPERLINK = 1  # Flower's node id for the SuperLink itself


class _Grid:
    """A Grid whose nodes answer at once: a query with their partition, anything else with an empty reply; nodes in
    ``gone`` are answered for by the SuperLink with an error, nodes in ``silent`` not at all."""

    def __init__(self, partitions: dict[int, int], gone: set[int] = frozenset(), silent: set[int] = frozenset()):
        self.partitions, self.gone, self.silent = partitions, gone, silent
        self.sent: dict[str, Message] = {}
        self.held: list[str] = []  # replies that exist but were not pulled yet

    def push_messages(self, out: list[Message]) -> list[str]:
        ids = []
        for m in out:
            mid = f"m{len(self.sent)}"
            m.metadata.__dict__["_message_id"] = mid  # as a Grid does, with a uuid
            self.sent[mid] = m
            ids.append(mid)
        return ids

    def _reply(self, mid: str) -> Message:
        sent = self.sent[mid]
        node = sent.metadata.dst_node_id
        if node in self.gone:
            reply = Message(Error(code=2, reason="node unavailable"), reply_to=sent)
            reply.metadata.__dict__["_src_node_id"] = SUPERLINK
            return reply
        content = RecordDict({messages.ENROLMENT: MetricRecord({"partition-id": self.partitions[node]})})
        return Message(content, reply_to=sent)

    def pull_messages(self, ids: list[str]) -> list[Message]:
        return [self._reply(i) for i in ids if self.sent[i].metadata.dst_node_id not in self.silent]


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def test_a_joined_node_takes_its_partitions_place_and_offline_nodes_are_not_sampled() -> None:
    grid = _Grid({10: 0, 20: 1, 30: 2, 40: 1})
    known = Enrolment(order=[10, 20, 30], partitions={10: 0, 20: 1, 30: 2})
    assert updated_enrolment(grid, known, {10, 20, 30}, samples=True, timeout_s=5) is known  # nothing changed
    # Node 20 crashed and came back as node 40 (no registered key: a new id) holding partition 1.
    joined = updated_enrolment(grid, known, {10, 20, 30, 40}, samples=True, timeout_s=5)
    assert joined.order == [10, 40, 30] and joined.partitions == {10: 0, 40: 1, 30: 2}
    assert online_in_order(joined.order, {10, 40}) == [10, 40]
    # A run that trains every node enrols nobody: a joined node is simply added.
    assert updated_enrolment(grid, Enrolment(order=[10, 20]), {10, 20, 30}, samples=False, timeout_s=5).order == [
        10, 20, 30]


def test_an_error_the_superlink_sends_for_a_node_is_charged_to_that_node_and_silence_is_remembered() -> None:
    grid = _Grid({10: 0, 20: 1, 30: 2}, gone={20}, silent={30})
    stream = ReplyStream(grid, [Message(RecordDict(), dst_node_id=n, message_type="train") for n in (10, 20, 30)],
                         timeout=0.3)
    senders = {stream.sender(reply): reply.has_error() for reply in stream}
    assert senders == {10: False, 20: True}  # not SUPERLINK: the error answers for node 20
    assert list(stream.unanswered.values()) == [30]


def test_late_replies_are_refused_by_round_id_and_forgotten_after_a_while() -> None:
    grid = _Grid({10: 0, 20: 1}, silent={10, 20})
    late = LateReplies()
    stream = ReplyStream(grid, [Message(RecordDict(), dst_node_id=n, message_type="train") for n in (10, 20)],
                         timeout=0.1)
    assert list(stream) == []
    late.expect(stream.unanswered, round_id=3)
    assert late.refuse(grid, 4) == []  # still silent
    grid.silent = {20}  # node 10's round-3 reply comes in during round 5
    assert late.refuse(grid, 5) == ["node 10: late reply for round 3 refused (round id 3, this is round 5)"]
    assert late.refuse(grid, 6) == [] and list(late.pending.values()) == [(20, 3)]
    late.refuse(grid, 8)
    assert late.pending == {}  # node 20 never answered: forgotten after KEEP_ROUNDS rounds
