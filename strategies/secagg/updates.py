"""How an update becomes one party's ring words and how the unmasked sums become the round's aggregate: the part
of secure aggregation every codec shares. What a codec sums, and how it reads its sum back, is the codec's own
(``SecureCodec``, implemented in each codec's ``secure`` module: ``strategies/codecs/<name>/secure.py``); this
module imports no codec."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from strategies.secagg.ring import Quantizer

Layout = Mapping[str, Sequence[int]]


class SecureCodec(Protocol):
    """What a codec implements to be summed under secure aggregation."""

    def secure_value_quantizer(self, encoding: SecureEncoding) -> Quantizer:
        """The quantiser of the values this codec sums."""

    def secure_segments(self, encoding: SecureEncoding) -> list[tuple[int, int]]:
        """(words, ring bits) per segment of one party's input."""

    def secure_input(self, encoding: SecureEncoding, flat: np.ndarray, rng: np.random.Generator) -> PartyInput:
        """One party's ring words for its flattened (fp32, finite) update."""

    def secure_mean(self, encoding: SecureEncoding, sums: list[np.ndarray], survivors: int, round_id: int) -> Any:
        """The survivors' mean from the unmasked sums, as the codec's aggregate."""


class CodecChoice(Protocol):
    """A run's codec and its options (``strategies.codecs.registry.CodecSettings``)."""

    @property
    def impl(self) -> SecureCodec: ...

    @property
    def options(self) -> Any: ...


@dataclass(frozen=True)
class SecureEncoding:
    """How one round turns updates into ring words: the codec and its options (which decide what is summed),
    the quantiser, and the round's codec parameters (the shared seed, the shared support)."""

    settings: CodecChoice
    quantizer: Quantizer
    parties: int
    layout: dict[str, tuple[int, ...]]
    seed: int = 0  # the round's shared seed (ferret)
    support: np.ndarray | None = None  # the round's shared support: sorted flat positions, layout order (compeft)

    @property
    def codec(self) -> SecureCodec:
        """The codec object."""
        return self.settings.impl

    @property
    def options(self) -> Any:
        """The codec's options."""
        return self.settings.options

    @property
    def entries(self) -> int:
        """Entries of the whole update."""
        return sum(math.prod(shape) for shape in self.layout.values())

    def value_quantizer(self) -> Quantizer:
        """The quantiser of the summed values (the codec's: ferret scales its range to what coefficients add)."""
        return self.codec.secure_value_quantizer(self)

    def segments(self) -> list[tuple[int, int]]:
        """(words, ring bits) per segment: bits chosen so the sum over every party cannot overflow."""
        return self.codec.secure_segments(self)


def flatten(update: Mapping[str, torch.Tensor], layout: Layout) -> np.ndarray:
    """The update's entries as one fp32 vector in ``layout`` order; ValueError if names or shapes differ."""
    if set(update) != set(layout):
        raise ValueError(f"update tensors {sorted(update)} differ from the layout {sorted(layout)}")
    parts = []
    for name, shape in layout.items():
        tensor = update[name]
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"tensor '{name}' has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
        parts.append(tensor.detach().to("cpu", torch.float32).reshape(-1).numpy())
    return np.concatenate(parts)


def unflatten(values: np.ndarray, layout: Layout) -> dict[str, torch.Tensor]:
    """Inverse of ``flatten`` (fp32 tensors)."""
    out, offset = {}, 0
    for name, shape in layout.items():
        count = math.prod(shape)
        out[name] = torch.from_numpy(np.ascontiguousarray(values[offset:offset + count], dtype=np.float32)
                                     ).reshape(tuple(shape))
        offset += count
    return out


@dataclass(frozen=True)
class PartyInput:
    """One party's ring words, what its update becomes after encoding (for error feedback), and clip counts."""

    words: list[np.ndarray]
    sent: dict[str, torch.Tensor]
    clipped: int


def encode_input(encoding: SecureEncoding, update: Mapping[str, torch.Tensor], rng: np.random.Generator
                 ) -> PartyInput:
    """This party's words for the round's segments."""
    flat = flatten(update, encoding.layout)
    if not np.isfinite(flat).all():
        raise ValueError("the update has NaN or Inf entries; refusing to encode")
    return encoding.codec.secure_input(encoding, flat, rng)


def mean_update(encoding: SecureEncoding, sums: list[np.ndarray], survivors: int, round_id: int = 0) -> Any:
    """The survivors' mean from the unmasked sums, as the codec's aggregate (tensors; a payload for ferret)."""
    if survivors < 1:
        raise ValueError("no survivors to average")
    return encoding.codec.secure_mean(encoding, sums, survivors, round_id)
