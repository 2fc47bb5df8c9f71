"""The collect step: check each client's reply as it arrives, record what it said in one ClientReply per node, and
hand accepted updates to the round's aggregator."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message, RecordDict

from server.aggregation import RoundAggregator
from strategies import messages
from strategies.codecs import UpdateRejected
from strategies.downlink import digest_prefix

# Figures a client may report beside its update, recorded per client in metrics.jsonl (key as sent → as stored).
REPORTED = {"residual-norm": "residual_norm", "residual-carried": "residual_carried", "train-s": "train_s",
            "encode-s": "encode_s", "client-s": "client_s", "steps": "steps", "task-built": "task_built"}


@dataclass
class ClientReply:
    """What one sampled node did in a round: bytes both ways, its partition, its status, what it reported, and the
    accepted update when no aggregator took it at once (under secure aggregation: its public keys)."""

    node_id: int
    bytes_down: int = 0
    partition_id: int | None = None
    bytes_up: int = 0
    status: str = "no reply"  # "ok", "failed", "rejected", "refused" (its privacy floor), "dropped", "no reply"
    reported: dict[str, float] = field(default_factory=dict)
    in_sync: bool | None = None  # trained from this round's global state (None: never said)
    num_examples: float = 0.0
    train_loss: float = math.nan
    reply_s: float | None = None  # from sending its message to its reply arriving (None: no reply)
    weight: float | None = None  # the weight its update carried, when below the examples it reported (capped)
    contribution: Any = None

    @property
    def order_key(self) -> tuple[bool, int, int]:
        """Partition order (node id where a client names no partition): the same in every run and every resumed
        run, unlike node ids or arrival order."""
        return self.partition_id is None, self.partition_id or 0, self.node_id

    def to_row(self, dense_fp32_bytes: int) -> dict[str, Any]:
        """This client's entry in the round's metrics row (``dense_fp32_bytes``: an fp32 update's size)."""
        row: dict[str, Any] = {"node_id": self.node_id, "partition_id": self.partition_id, "bytes_up": self.bytes_up,
                               "bytes_down": self.bytes_down, "status": self.status, **self.reported}
        if self.in_sync is not None:
            row["in_sync"] = self.in_sync
        if self.num_examples:
            row["examples"] = self.num_examples
        if self.weight is not None:
            row["weight"] = self.weight
        if self.reply_s is not None:
            row["reply_s"] = self.reply_s
        row["dense_fp32_bytes_up"] = dense_fp32_bytes if self.bytes_up else 0
        row["dense_fp32_bytes_down"] = dense_fp32_bytes
        return row


@dataclass
class RoundOutcome:
    """Every sampled node's ClientReply, and the round's problems in plain words."""

    clients: dict[int, ClientReply] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # nodes that declined the round (their privacy floor)
    late: list[str] = field(default_factory=list)  # replies to earlier rounds that came in this one, refused
    answered: set[int] = field(default_factory=set)  # nodes that replied without an error (so hold this round's state)

    def _accepted(self) -> list[ClientReply]:
        return sorted((c for c in self.clients.values() if c.status == "ok"), key=lambda c: c.order_key)

    @property
    def accepted(self) -> list[int]:
        """Nodes whose update was accepted, in partition order."""
        return [c.node_id for c in self._accepted()]

    @property
    def updates(self) -> list[Any]:
        """The accepted contributions no aggregator took, in partition order."""
        return [c.contribution for c in self._accepted() if c.contribution is not None]

    @property
    def train_losses(self) -> list[float]:
        """Accepted clients' training losses, in partition order (none under secure aggregation)."""
        return [c.train_loss for c in self._accepted() if math.isfinite(c.train_loss)]

    @property
    def bytes_up(self) -> int:
        """Bytes the accepted clients sent."""
        return sum(c.bytes_up for c in self._accepted())

    @property
    def problems(self) -> list[str]:
        """Failures, then rejections, then refusals, then late replies refused."""
        return self.failures + self.rejections + self.refusals + self.late

    def rows(self, dense_fp32_bytes: int) -> list[dict[str, Any]]:
        """Every client's metrics entry, by node id."""
        return [self.clients[node].to_row(dense_fp32_bytes) for node in sorted(self.clients)]


def read_reply(content: RecordDict, accept: Callable[[bytes], Any], digest: str, client: ClientReply,
               payload_key: str = messages.ENCODED_UPDATE) -> tuple[Any, float, float]:
    """Check one client's reply before anything of it is used: the payload (through ``accept``: codec, version,
    round, layout, sizes, finite values, norm bound), the metrics the coordinator relies on, and that the client
    trained from this round's global state (``digest``). Fills ``client`` (bytes, partition, reported figures);
    returns the accepted update, its weight (examples) and training loss. Raises UpdateRejected naming the
    first problem: nothing in a reply may raise anything else."""
    try:
        payload = content[messages.UPDATE][payload_key]
        metrics = content[messages.METRICS]
        if not isinstance(payload, bytes):
            raise UpdateRejected(f"{payload_key} is not bytes")
        client.bytes_up = len(payload)
        client.partition_id = int(metrics["partition-id"]) if "partition-id" in metrics else None
        secure = payload_key == messages.SECAGG_KEYS  # only the sum may be learnt: record nothing of the update
        client.reported = {name: float(metrics[key]) for key, name in REPORTED.items()
                           if key in metrics and not (secure and key in messages.PRIVATE_UNDER_SECAGG)}
        client.in_sync = int(metrics["state-digest-48"]) == digest_prefix(digest)
        if not client.in_sync:
            raise UpdateRejected("client trained from another global state than this round's (digest differs)")
        num_examples = float(metrics["num-examples"])
        train_loss = math.nan if secure else float(metrics["train-loss"])
    except (KeyError, TypeError, OverflowError) as exc:
        raise UpdateRejected(f"reply lacks or mistypes {exc}") from exc
    if not 0 < num_examples < float("inf"):
        raise UpdateRejected(f"num-examples must be positive and finite, got {num_examples}")
    if not (secure or math.isfinite(train_loss)):
        raise UpdateRejected(f"train-loss must be finite, got {train_loss}")
    return accept(payload), num_examples, train_loss


def _take(outcome: RoundOutcome, node: int, reply: Message, accept: Callable[[bytes], Any], digest: str,
          payload_key: str, sink: RoundAggregator | None, weigh: Callable[[int, float], float] | None = None) -> None:
    """Record ``node``'s reply in ``outcome``: a failure, a duplicate, a rejection, or an accepted update."""
    client = outcome.clients.setdefault(node, ClientReply(node))
    if reply.has_error():
        outcome.failures.append(f"node {node}: client failed: {reply.error.reason}")
        client.status = "failed"
        return
    if messages.REFUSAL in reply.content.config_records:
        reason = reply.content.config_records[messages.REFUSAL].get("reason", "no reason given")
        outcome.refusals.append(f"node {node}: refused the round: {reason}")
        client.status = "refused"
        return
    if node in outcome.answered:
        outcome.rejections.append(f"node {node}: update rejected: a second reply in one round (duplicate)")
        return
    outcome.answered.add(node)
    try:
        update, client.num_examples, client.train_loss = read_reply(reply.content, accept, digest, client,
                                                                    payload_key)
        if sink is not None:
            weight = client.num_examples if weigh is None else weigh(node, client.num_examples)
            if weight < client.num_examples:
                client.weight = weight
            sink.add(client.order_key, update, weight)
    except ValueError as exc:
        outcome.rejections.append(f"node {node}: update rejected: {exc}")
        client.status = "rejected"
        return
    client.status = "ok"
    client.contribution = update if sink is None else None


def collect_replies(replies: Iterable[Message], sent: dict[int, int], accept: Callable[[bytes], Any], digest: str,
                    payload_key: str = messages.ENCODED_UPDATE, sink: RoundAggregator | None = None,
                    on_reply: Callable[[int], None] | None = None,
                    weigh: Callable[[int, float], float] | None = None,
                    sender: Callable[[Message], int] | None = None) -> RoundOutcome:
    """Validate (and decode) each reply as it comes; ``sent`` maps each sampled node to the bytes sent down to it,
    and ``digest`` is the global state's, which every client must report having trained from. Accepted updates go
    to ``sink`` at once (and are dropped here), or, without one, stay in their ClientReply. Each client's time from
    send to reply is recorded; ``on_reply`` hears the count of replies so far after each one. ``weigh(node,
    examples)`` gives the weight an accepted update carries (default: the examples it reported). ``sender(reply)``
    names the node a reply answers for (default: its source; server/replies.py ReplyStream.sender also places
    the errors the SuperLink sends for a node)."""
    outcome = RoundOutcome({node: ClientReply(node, bytes_down) for node, bytes_down in sent.items()})
    received = 0
    sent_at = time.perf_counter()  # the messages go out when the first reply is asked for
    for reply in replies:
        received += 1
        arrived_s = time.perf_counter() - sent_at
        node = reply.metadata.src_node_id if sender is None else sender(reply)
        _take(outcome, node, reply, accept, digest, payload_key, sink, weigh)
        client = outcome.clients.get(node)
        if client is not None and client.reply_s is None:
            client.reply_s = arrived_s
        if on_reply is not None:
            on_reply(received)
    if received < len(sent):
        outcome.failures.append(f"{len(sent) - received} client(s) sent no reply before the round timeout")
    return outcome
