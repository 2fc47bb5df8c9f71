"""Dense under secure aggregation: every entry clipped to ``[-clip, clip]``, quantised and summed; the sum is the
sum of the survivors' deltas."""

from __future__ import annotations

import numpy as np
import torch

from strategies.secagg.ring import ring_bits
from strategies.secagg.updates import PartyInput, SecureEncoding, unflatten


def segments(encoding: SecureEncoding) -> list[tuple[int, int]]:
    """One word per entry."""
    return [(encoding.entries, ring_bits(encoding.parties, encoding.quantizer.levels))]


def party_input(encoding: SecureEncoding, flat: np.ndarray, rng: np.random.Generator) -> PartyInput:
    """The entries clipped to ``[-clip, clip]`` and quantised."""
    quantizer = encoding.value_quantizer()
    words, clipped = quantizer.quantize(flat, rng)
    sent = np.clip(flat, -quantizer.clip, quantizer.clip)
    return PartyInput([words], unflatten(sent, encoding.layout), clipped)


def mean(encoding: SecureEncoding, sums: list[np.ndarray], survivors: int) -> dict[str, torch.Tensor]:
    """The survivors' mean delta."""
    return unflatten(encoding.value_quantizer().dequantize_sum(sums[0], survivors) / survivors, encoding.layout)
