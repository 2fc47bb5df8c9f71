"""What every codec is: its options, how it encodes and decodes an update, what the coordinator keeps of one
client's payload, how a round's contributions aggregate, and what secure aggregation sums for it.

A codec object is stateless; the per-run choices live in its options dataclass. Callers reach a codec through
``strategies.codecs.registry`` and never compare codec names: a behaviour that differs between codecs is a method
or a class attribute here, overridden in the codec's package (``strategies/codecs/<name>/``: ``options``, ``wire``,
``secure``, ``codec``); ``registration.register_codec`` adds a codec to the registry by name. Its
secure-aggregation methods make a codec a ``strategies.secagg.updates.SecureCodec``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from strategies.codecs.envelope import DEFAULT_MAX_PAYLOAD_BYTES, Layout
from strategies.norms import l2_norm
from strategies.secagg.ring import Quantizer
from strategies.secagg.updates import PartyInput, SecureEncoding
from strategies.settings import KeyedSettings

Tensors = dict[str, torch.Tensor]
# A robust or plain mean over decoded updates (or coefficient vectors), weighted by examples.
Rule = Callable[[list[Tensors], list[float]], Tensors]


@dataclasses.dataclass(frozen=True)
class CodecOptions(KeyedSettings):
    """Base of each codec's options dataclass: fields declared with ``strategies.settings.setting`` (key, default,
    help); subclasses check their ranges in ``__post_init__``."""


class GlobalStateHolder(Protocol):
    """What an aggregate is applied to (the coordinator's global state, strategies.downlink.GlobalState)."""

    def advance(self, delta: Tensors) -> Tensors: ...

    def advance_encoded(self, payload: bytes) -> Tensors: ...


class TensorAggregate(dict[str, torch.Tensor]):
    """A round's aggregate as decoded tensors (the mean delta): dense and ComPEFT rounds."""

    def apply_to(self, state: GlobalStateHolder) -> Tensors:
        """Advance the global state by this delta; returns what was applied (after any downlink compression)."""
        return state.advance(dict(self))

    @property
    def delta(self) -> Tensors | None:
        """The mean delta itself (public to every party once applied)."""
        return dict(self)


class PayloadAggregate(bytes):
    """A round's aggregate that is itself a payload every party decodes (Ferret: combined coefficients)."""

    def apply_to(self, state: GlobalStateHolder) -> Tensors:
        """Advance the global state by this payload's decode; returns the decode."""
        return state.advance_encoded(bytes(self))

    @property
    def delta(self) -> Tensors | None:
        """None: the aggregate is coefficients, not a delta."""
        return None


Aggregate = TensorAggregate | PayloadAggregate


class Codec(ABC):
    """One codec. Class attributes say how the rest of the system treats it; methods do its work."""

    name: ClassVar[str]
    options_type: ClassVar[type[CodecOptions]]
    # Clients keep the global state between rounds and receive the aggregates they missed (not the full state).
    keeps_state_on_clients: ClassVar[bool] = True
    # The round's shared random seed must reach every party (projection codecs).
    needs_round_seed: ClassVar[bool] = False
    # The aggregate is itself a payload of this codec (it cannot take a different downlink codec).
    aggregate_is_payload: ClassVar[bool] = False
    # Updates are ``alpha * sign`` on kept entries: what sign-majority votes on.
    ternary: ClassVar[bool] = False

    # -- the wire format ------------------------------------------------------------------------------------
    @abstractmethod
    def encode(self, update: Tensors, options: CodecOptions, *, round_id: int, seed: int | None = None) -> bytes:
        """Encode a delta; ValueError for options out of range, NaN/Inf, an empty update or a missing seed."""

    @abstractmethod
    def decode(self, payload: bytes, *, expected_round: int | None, expected_layout: Layout | None,
               max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, expected_seed: int | None = None) -> Tensors:
        """Validate and decode to fp32 tensors; UpdateRejected for anything it will not accept."""

    def lossy(self, options: CodecOptions) -> bool:
        """Whether decoding loses information."""
        return True

    def feedback_helps(self, options: CodecOptions) -> bool:
        """Whether error feedback applies: the compression error is biased and worth carrying to the next round."""
        return self.lossy(options)

    # -- the coordinator's side -----------------------------------------------------------------------------
    streams: ClassVar[bool] = True  # accepted contributions are tensors that fold into the exact running sum

    def accept(self, payload: bytes, *, round_id: int, layout: Layout, max_bytes: int, seed: int | None) -> Any:
        """Check one client's payload and return what the coordinator keeps of it (decoded tensors by default)."""
        return self.decode(payload, expected_round=round_id, expected_layout=layout, max_bytes=max_bytes,
                           expected_seed=seed)

    def norm(self, contribution: Any) -> float:
        """L2 norm of an accepted contribution (for the coordinator's norm bound)."""
        return l2_norm(contribution)

    def nbytes(self, contribution: Any) -> int:
        """Memory an accepted contribution holds while the round waits for the rest."""
        return sum(t.numel() * t.element_size() for t in contribution.values())

    def aggregate(self, contributions: Sequence[Any], weights: Sequence[float], rule: Rule, *, plain_mean: bool,
                  round_id: int) -> Aggregate:
        """The round's aggregate of the held contributions under ``rule`` (``plain_mean``: the rule is FedAvg),
        taken on their dense tensors (``dense``)."""
        return TensorAggregate(rule([self.dense(c) for c in contributions], list(weights)))

    def dense(self, contribution: Any) -> Tensors:
        """A contribution as dense tensors (for the rules that work on whole updates: a norm bound, median, ...)."""
        return contribution

    def check_downlink(self, downlink: Codec) -> None:
        """ValueError when ``downlink`` cannot carry this codec's aggregates to the clients."""
        if downlink.aggregate_is_payload and downlink is not self:
            raise ValueError(f"downlink-codec '{downlink.name}' needs codec '{downlink.name}' (the downlink carries "
                             "aggregated coefficients)")

    def map_values(self, payload: bytes, options: CodecOptions, change: Callable[[torch.Tensor], torch.Tensor], *,
                   round_id: int) -> bytes:
        """The payload of the update whose values ``change`` rewrote, in this codec's own representation and
        options (the fault injector's well-formed lies)."""
        update = self.decode(payload, expected_round=round_id, expected_layout=None)
        return self.encode({name: change(t) for name, t in update.items()}, options, round_id=round_id)

    # -- secure aggregation -----------------------------------------------------------------------------------
    def check_secure(self, options: CodecOptions, shared_support: bool) -> None:
        """ValueError (naming the run-config keys) when this codec cannot be securely aggregated as configured."""
        return None

    def secure_value_quantizer(self, encoding: SecureEncoding) -> Quantizer:
        """The quantiser of the values this codec sums."""
        return encoding.quantizer

    @abstractmethod
    def secure_segments(self, encoding: SecureEncoding) -> list[tuple[int, int]]:
        """(words, ring bits) per segment of one party's input."""

    @abstractmethod
    def secure_input(self, encoding: SecureEncoding, flat: np.ndarray, rng: np.random.Generator) -> PartyInput:
        """One party's ring words for its flattened (fp32, finite) update."""

    @abstractmethod
    def secure_mean(self, encoding: SecureEncoding, sums: list[np.ndarray], survivors: int, round_id: int
                    ) -> Aggregate:
        """The survivors' mean from the unmasked sums, as this codec's aggregate."""

    def secure_round_config(self, options: CodecOptions, layout: Layout, previous_update: Tensors | None,
                            tag: bytes) -> tuple[Any, bytes]:
        """What the coordinator decides for a secure round beyond the setup: (the codec's round parameter for
        SecureEncoding.support, the same coded for the train message). Nothing by default."""
        return None, b""

    def secure_round_parameter(self, coded: bytes, entries: int) -> Any:
        """The client's reading of ``secure_round_config``'s coded parameter (SecureEncoding.support)."""
        return None
