"""What each codec sums under secure aggregation, and how the coordinator reads the sum back.

- ``dense``: the delta's entries, clipped to ``[-clip, clip]`` and quantised. The sum is the sum of deltas.
- ``ferret``: the delta's coefficients on the round's shared random directions (a short vector). Coefficients
  add up ``block/dim`` entries each, so their clipping range is ``clip * sqrt(block entries / dim)``.
- ``compeft`` (shared-support mode): the round's support is chosen by the coordinator from public information
  (the largest entries of the previous global update; a seeded random draw in the first round) and sent to every
  party. Each party sends the sign of its delta on that support as a ternary word in {0, 1, 2} and its alpha
  (``alpha_scale * std(delta)``) quantised; the coordinator learns the vote count per support entry and the sum of
  alphas, and applies ``mean alpha * mean sign`` on the support. Positions chosen by one party never leave it; what
  the sum reveals is the per-entry vote total over the survivors and their mean alpha. ComPEFT's own mode, where
  each party picks its positions, would show the server every party's positions and is refused with secure
  aggregation.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from protos.fedsqueeze.v1 import compeft_pb2
from strategies.codecs import ferret
from strategies.codecs.errors import UpdateRejected
from strategies.codecs.position_coding import BITMAP, RICE, CodedPositions, decode_positions, encode_positions
from strategies.random_basis import BlockPlan
from strategies.secagg.ring import Quantizer, ring_bits

if TYPE_CHECKING:
    from strategies.codecs.kinds.base import Aggregate, Codec
    from strategies.codecs.registry import CodecSettings

_CODINGS = {BITMAP: compeft_pb2.CompeftTensor.POSITION_CODING_BITMAP,
            RICE: compeft_pb2.CompeftTensor.POSITION_CODING_RICE_GAPS}
Layout = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class SecureEncoding:
    """How one round turns updates into ring words: the codec and its options (which decide what is summed),
    the quantiser, and the round's codec parameters (the shared seed, the shared support)."""

    settings: CodecSettings
    quantizer: Quantizer
    parties: int
    layout: dict[str, tuple[int, ...]]
    seed: int = 0  # ferret: the round's shared seed
    support: np.ndarray | None = None  # compeft: sorted flat positions, layout order

    @property
    def codec(self) -> Codec:
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

    @property
    def plan(self) -> BlockPlan:
        """Ferret's block plan for this layout."""
        return BlockPlan(self.entries, self.options.dim, self.options.block_size)

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


def mean_update(encoding: SecureEncoding, sums: list[np.ndarray], survivors: int, round_id: int = 0) -> Aggregate:
    """The survivors' mean from the unmasked sums, as the codec's aggregate (tensors; a payload for ferret)."""
    if survivors < 1:
        raise ValueError("no survivors to average")
    return encoding.codec.secure_mean(encoding, sums, survivors, round_id)


def dense_segments(encoding: SecureEncoding) -> list[tuple[int, int]]:
    """Dense: one word per entry."""
    return [(encoding.entries, ring_bits(encoding.parties, encoding.quantizer.levels))]


def dense_input(encoding: SecureEncoding, flat: np.ndarray, rng: np.random.Generator) -> PartyInput:
    """Dense: the entries clipped to ``[-clip, clip]`` and quantised."""
    quantizer = encoding.value_quantizer()
    words, clipped = quantizer.quantize(flat, rng)
    sent = np.clip(flat, -quantizer.clip, quantizer.clip)
    return PartyInput([words], unflatten(sent, encoding.layout), clipped)


def dense_mean(encoding: SecureEncoding, sums: list[np.ndarray], survivors: int) -> dict[str, torch.Tensor]:
    """Dense: the survivors' mean delta."""
    return unflatten(encoding.value_quantizer().dequantize_sum(sums[0], survivors) / survivors, encoding.layout)


def ferret_value_quantizer(encoding: SecureEncoding) -> Quantizer:
    """Ferret: coefficients add up ``block/dim`` entries each, so their range is ``clip * sqrt(block / dim)``."""
    per_direction = min(encoding.entries, encoding.options.block_size) / encoding.options.dim
    return Quantizer(encoding.quantizer.clip * math.sqrt(max(1.0, per_direction)), encoding.quantizer.precision_bits)


def ferret_segments(encoding: SecureEncoding) -> list[tuple[int, int]]:
    """Ferret: one word per coefficient."""
    return [(encoding.plan.coefficients, ring_bits(encoding.parties, encoding.quantizer.levels))]


def ferret_input(encoding: SecureEncoding, flat: np.ndarray, rng: np.random.Generator) -> PartyInput:
    """Ferret: the update's coefficients on the round's directions, quantised."""
    coefficients = ferret.project(unflatten(flat, encoding.layout), seed=encoding.seed, dim=encoding.options.dim,
                                  block_size=encoding.options.block_size)
    words, clipped = encoding.value_quantizer().quantize(coefficients, rng)
    return PartyInput([words], {}, clipped)


def compeft_segments(encoding: SecureEncoding) -> list[tuple[int, int]]:
    """ComPEFT (shared support): a vote word per support entry, then one alpha word."""
    if encoding.support is None or not encoding.support.size:
        raise ValueError("the compeft secure mode needs a non-empty support")
    return [(encoding.support.size, ring_bits(encoding.parties, 2)),
            (1, ring_bits(encoding.parties, encoding.quantizer.levels))]


def compeft_input(encoding: SecureEncoding, flat: np.ndarray, rng: np.random.Generator) -> PartyInput:
    """ComPEFT (shared support): the signs on the support as {0, 1, 2} and ``alpha_scale * std`` quantised."""
    support = encoding.support
    assert support is not None
    quantizer = encoding.value_quantizer()
    std = float(flat.astype(np.float64).std(ddof=1)) if flat.size > 1 else abs(float(flat[0]))
    alpha = encoding.options.alpha_scale * std
    votes = (np.sign(flat[support]).astype(np.int64) + 1).astype(np.uint64)
    alpha_words, clipped = quantizer.quantize(np.array([alpha]), rng)
    sent = np.zeros_like(flat)
    sent[support] = np.float32(min(alpha, quantizer.clip)) * np.sign(flat[support])
    return PartyInput([votes, alpha_words], unflatten(sent, encoding.layout), clipped)


def compeft_mean(encoding: SecureEncoding, sums: list[np.ndarray], survivors: int) -> dict[str, torch.Tensor]:
    """ComPEFT (shared support): ``mean alpha * mean sign`` on the support, zero elsewhere."""
    votes = sums[0].astype(np.int64) - survivors  # in [-survivors, survivors]
    alpha = float(encoding.value_quantizer().dequantize_sum(sums[1], survivors)[0]) / survivors
    flat = np.zeros(encoding.entries, dtype=np.float32)
    assert encoding.support is not None
    flat[encoding.support] = alpha * votes / survivors
    return unflatten(flat, encoding.layout)


def mean_coefficients(encoding: SecureEncoding, sums: list[np.ndarray], survivors: int, round_id: int) -> bytes:
    """Ferret: the survivors' mean coefficients as a ferret payload (which every party rebuilds)."""
    mean = encoding.value_quantizer().dequantize_sum(sums[0], survivors) / survivors
    shapes = {name: tuple(shape) for name, shape in encoding.layout.items()}
    return ferret.pack(mean.astype(np.float32), seed=encoding.seed, plan=encoding.plan,
                       layout_sha256=ferret.layout_digest(shapes), round_id=round_id)


def choose_support(previous: np.ndarray | None, density: float, entries: int, round_seed: bytes) -> np.ndarray:
    """The compeft secure mode's support for a round: the ``density`` largest entries of the previous global
    update (public: every party holds the global state), or a seeded uniform draw when there is none yet."""
    count = min(entries, max(1, round(density * entries)))
    if previous is not None and np.count_nonzero(previous) >= count:
        chosen = np.argpartition(-np.abs(previous), count - 1)[:count]
        return np.sort(chosen).astype(np.int64)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(round_seed).digest()[:8], "little"))
    return np.sort(rng.choice(entries, size=count, replace=False)).astype(np.int64)


def support_to_bytes(support: np.ndarray, entries: int) -> bytes:
    """The support Rice- or bitmap-coded, as a CompeftTensor without signs."""
    coded = encode_positions(support, entries)
    return compeft_pb2.CompeftTensor(coding=_CODINGS[coded.coding], rice_bits=coded.rice_bits,
                                     positions=coded.positions, remainders=coded.remainders).SerializeToString()


def support_from_bytes(data: bytes, entries: int) -> np.ndarray:
    """Inverse of ``support_to_bytes``; UpdateRejected when malformed or empty."""
    try:
        message = compeft_pb2.CompeftTensor.FromString(data)
    except Exception as exc:
        raise UpdateRejected(f"compeft support is malformed: {exc}") from exc
    coding = {code: name for name, code in _CODINGS.items()}.get(message.coding)
    if coding is None:
        raise UpdateRejected(f"compeft support has an unknown coding {message.coding}")
    support = decode_positions(CodedPositions(coding, message.rice_bits, message.positions, message.remainders),
                               entries, "compeft support")
    if not support.size:
        raise UpdateRejected("compeft support is empty")
    return support
