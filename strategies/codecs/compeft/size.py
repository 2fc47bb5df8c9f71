"""What a ComPEFT payload costs: its bytes against dense fp32 and against the entropy bound ``d * (H(k) + k)`` bits
(positions at their entropy plus one sign bit per kept entry)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from strategies.codecs.compeft.wire import CODEC, CODEC_VERSION, parse_tensor
from strategies.codecs.envelope import parse_envelope
from strategies.codecs.position_coding import binary_entropy, decode_positions


@dataclass(frozen=True)
class SizeReport:
    """A compeft payload's size against the fp32 dense size and the entropy bound ``d * (H(k) + k)`` bits."""

    payload_bytes: int
    entries: int
    kept: int
    dense_fp32_bytes: int
    entropy_bound_bytes: float

    @property
    def kept_fraction(self) -> float:
        """The fraction k of entries kept."""
        return self.kept / self.entries

    @property
    def compression_ratio(self) -> float:
        """fp32 dense bytes over payload bytes."""
        return self.dense_fp32_bytes / self.payload_bytes

    @property
    def ratio_to_bound(self) -> float:
        """Payload bytes over the entropy bound (1.0 = at the bound)."""
        return self.payload_bytes / self.entropy_bound_bytes if self.entropy_bound_bytes else math.inf

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready figures."""
        return {"payload_bytes": self.payload_bytes, "entries": self.entries, "kept": self.kept,
                "kept_fraction": self.kept_fraction, "dense_fp32_bytes": self.dense_fp32_bytes,
                "entropy_bound_bytes": self.entropy_bound_bytes, "compression_ratio": self.compression_ratio,
                "ratio_to_bound": self.ratio_to_bound}


def entropy_bound_bits(entries: int, kept: int) -> float:
    """``d * (H(k) + k)`` bits: positions at their entropy plus one sign bit per kept entry."""
    fraction = kept / entries
    return entries * (binary_entropy(fraction) + fraction)


def size_report(payload: bytes) -> SizeReport:
    """Measure a compeft payload: bytes, entries, kept entries, and the entropy bound for that kept fraction."""
    message = parse_envelope(payload, codec=CODEC, codec_version=CODEC_VERSION)
    entries = kept = 0
    for entry in message.tensors:
        numel = math.prod(entry.shape)
        _, coded = parse_tensor(entry)
        kept += decode_positions(coded, numel, f"tensor '{entry.name}'").size
        entries += numel
    return SizeReport(payload_bytes=len(payload), entries=entries, kept=kept, dense_fp32_bytes=4 * entries,
                      entropy_bound_bytes=entropy_bound_bits(entries, kept) / 8)
