"""The downlink: how the coordinator sends the global state so that every client holds exactly the same one.

With a dense downlink every sampled client gets the whole state (fp32) each round. With a compressed downlink
the coordinator compresses each round's aggregate (plus its own error-feedback residual) and applies the
*decoded* aggregate to the global state, so the global state is, bit for bit, what a client rebuilds by applying
the same payloads. A client that took part recently gets only the payloads it missed; a new or out-of-sync one
gets the full state. A SHA-256 digest of the state travels with every message and the client checks it.

With the ferret codec the aggregate *is* a payload (the clients' coefficients combined), so the coordinator
applies its decode (``advance_encoded``) and clients apply the same payloads. When every party can build the
starting state itself (full-parameter tuning starts from the pretrained weights: ``known_base``), a client that
holds nothing gets the payloads since version 0 instead of the whole model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from strategies.codecs import dense
from strategies.codecs.envelope import Layout
from strategies.codecs.registry import CodecSettings, get_codec
from strategies.fedavg import apply_update, subtract

FULL = "full"
DELTAS = "deltas"


class OutOfSync(ValueError):
    """A client's held global state is not the one the coordinator's payloads start from."""


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names and fp32 bytes, in name order: equal digests mean bit-identical states."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(state[name].detach().to("cpu", torch.float32).numpy()))
    return digest.hexdigest()


def digest_prefix(digest: str) -> int:
    """The first 48 bits of a hex digest as an int (fits a Flower metric), for clients to report their state."""
    return int(digest[:12], 16)


@dataclass(frozen=True)
class DownlinkMessage:
    """What one client receives: the full state, or the payloads since ``base_version``, and the result's digest."""

    kind: str
    payloads: list[bytes]
    base_version: int
    version: int
    digest: str

    @property
    def nbytes(self) -> int:
        """Exact payload bytes sent to this client."""
        return sum(len(p) for p in self.payloads)


@dataclass
class GlobalState:
    """The coordinator's global state: the canonical tensors, their version, the payloads that produced recent
    versions, and which version each client holds (so the downlink sends each only what it lacks)."""

    settings: CodecSettings
    state: dict[str, torch.Tensor]
    version: int = 0
    residual: dict[str, torch.Tensor] | None = None
    history: dict[int, bytes] = field(default_factory=dict)  # version -> payload that produced it
    held: dict[int, int] = field(default_factory=dict)  # node id -> version it holds
    known_base: bool = False  # clients can rebuild version 0 themselves (it is the pretrained model)
    _full: tuple[int, bytes] | None = None
    _digest: tuple[int, str] | None = None

    @property
    def compressed(self) -> bool:
        """Whether clients keep the state between rounds and receive compressed aggregates."""
        return self.settings.impl.keeps_state_on_clients

    def full_payload(self) -> bytes:
        """The whole current state as a dense fp32 payload (cached per version)."""
        if self._full is None or self._full[0] != self.version:
            self._full = (self.version, dense.encode(self.state, dtype="fp32", round_id=self.version))
        return self._full[1]

    def digest(self) -> str:
        """SHA-256 of the current state (cached per version)."""
        if self._digest is None or self._digest[0] != self.version:
            self._digest = (self.version, state_digest(self.state))
        return self._digest[1]

    def message_for(self, node_id: int) -> DownlinkMessage:
        """The cheapest message that brings ``node_id`` to the current version."""
        held = self.held.get(node_id)
        if held is None and self.known_base:
            held = 0
        if self.compressed and held is not None and all(v in self.history for v in range(held + 1, self.version + 1)):
            payloads = [self.history[v] for v in range(held + 1, self.version + 1)]
            if sum(len(p) for p in payloads) < dense.dense_fp32_bytes(self.state):
                return DownlinkMessage(DELTAS, payloads, held, self.version, self.digest())
        return DownlinkMessage(FULL, [self.full_payload()], -1, self.version, self.digest())

    def confirmed(self, node_id: int) -> None:
        """``node_id`` answered this round, so it holds the current version."""
        if self.compressed:
            self.held[node_id] = self.version

    def forget(self, node_id: int) -> None:
        """``node_id`` failed or may have lost its state: send it the full state next time."""
        self.held.pop(node_id, None)

    def advance(self, delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Apply this round's aggregate ``delta``; returns what was applied (the decoded compressed delta)."""
        if self.settings.impl.aggregate_is_payload:
            raise ValueError(f"a {self.settings.codec} aggregate is a payload: use advance_encoded")
        version = self.version + 1  # nothing changes until every step below has succeeded
        if not self.compressed:
            self.state, self.version = apply_update(self.state, delta), version
            return delta
        target = delta if self.residual is None else apply_update(delta, self.residual)
        payload = self.settings.encode(target, round_id=version)
        layout = {name: tuple(t.shape) for name, t in self.state.items()}
        applied = self.settings.impl.decode(payload, expected_round=version, expected_layout=layout)
        state = apply_update(self.state, applied)
        self.residual, self.state, self.version = subtract(target, applied), state, version
        self._record(payload)
        return applied

    def advance_encoded(self, payload: bytes) -> dict[str, torch.Tensor]:
        """Apply an aggregate that is already a payload (ferret: combined coefficients); returns its decode."""
        version = self.version + 1
        layout = {name: tuple(t.shape) for name, t in self.state.items()}
        applied = self.settings.impl.decode(payload, expected_round=version, expected_layout=layout)
        self.state, self.version = apply_update(self.state, applied), version
        self._record(payload)
        return applied

    def _record(self, payload: bytes) -> None:
        self.history[self.version] = payload
        if self.known_base:
            return  # a newcomer rebuilds from version 0 and needs every payload
        oldest_held = min(self.held.values(), default=self.version)
        for stale in [v for v in self.history if v <= oldest_held]:  # no client needs these any more
            del self.history[stale]


def receive(message: DownlinkMessage, codec: str, held: dict[str, torch.Tensor] | None, held_version: int | None,
            layout: Layout | None = None, base: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The client's side: rebuild the global state from ``message`` and check its digest.

    ``base`` is the state the client can build itself (version 0, e.g. the pretrained weights), used when it holds
    nothing and the message starts from version 0. Raises OutOfSync when the payloads start from a version the
    client does not hold or the digest differs, and UpdateRejected for a malformed payload.
    """
    if message.kind == FULL:
        if len(message.payloads) != 1:
            raise OutOfSync(f"a full downlink carries one payload, got {len(message.payloads)}")
        state = dense.decode(message.payloads[0], expected_round=message.version, expected_layout=layout)
    elif message.kind == DELTAS:
        if held is None and base is not None and message.base_version == 0:
            held, held_version = base, 0
        if held is None or held_version != message.base_version:
            raise OutOfSync(f"downlink starts from version {message.base_version}, but this client holds "
                            f"{'nothing' if held is None else f'version {held_version}'}")
        state = held
        shapes = {name: tuple(t.shape) for name, t in held.items()}
        decoder = get_codec(codec)
        for offset, payload in enumerate(message.payloads, start=1):
            delta = decoder.decode(payload, expected_round=message.base_version + offset, expected_layout=shapes)
            state = apply_update(state, delta)
        if message.base_version + len(message.payloads) != message.version:
            raise OutOfSync(f"{len(message.payloads)} payloads from version {message.base_version} do not reach "
                            f"version {message.version}")
    else:
        raise OutOfSync(f"unknown downlink kind '{message.kind}'")
    if state_digest(state) != message.digest:
        raise OutOfSync(f"global state digest differs after applying the downlink for version {message.version}")
    return state
