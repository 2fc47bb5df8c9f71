"""Ferret under secure aggregation: what is summed is each party's coefficients on the round's shared random
directions (a short vector). A coefficient adds up ``block/dim`` entries, so its clipping range is
``clip * sqrt(block entries / dim)``; the mean coefficients are again a Ferret payload every party applies."""

from __future__ import annotations

import math

import numpy as np

from strategies.codecs.ferret.wire import layout_digest, pack, project
from strategies.random_basis import BlockPlan
from strategies.secagg.ring import Quantizer, ring_bits
from strategies.secagg.updates import PartyInput, SecureEncoding, unflatten


def plan(encoding: SecureEncoding) -> BlockPlan:
    """The round's block plan for this layout."""
    return BlockPlan(encoding.entries, encoding.options.dim, encoding.options.block_size)


def value_quantizer(encoding: SecureEncoding) -> Quantizer:
    """Coefficients add up ``block/dim`` entries each, so their range is ``clip * sqrt(block / dim)``."""
    per_direction = min(encoding.entries, encoding.options.block_size) / encoding.options.dim
    return Quantizer(encoding.quantizer.clip * math.sqrt(max(1.0, per_direction)), encoding.quantizer.precision_bits)


def segments(encoding: SecureEncoding) -> list[tuple[int, int]]:
    """One word per coefficient."""
    return [(plan(encoding).coefficients, ring_bits(encoding.parties, encoding.quantizer.levels))]


def party_input(encoding: SecureEncoding, flat: np.ndarray, rng: np.random.Generator) -> PartyInput:
    """The update's coefficients on the round's directions, quantised."""
    coefficients = project(unflatten(flat, encoding.layout), seed=encoding.seed, dim=encoding.options.dim,
                           block_size=encoding.options.block_size)
    words, clipped = encoding.value_quantizer().quantize(coefficients, rng)
    return PartyInput([words], {}, clipped)


def mean_coefficients(encoding: SecureEncoding, sums: list[np.ndarray], survivors: int, round_id: int) -> bytes:
    """The survivors' mean coefficients as a ferret payload (which every party rebuilds)."""
    mean = encoding.value_quantizer().dequantize_sum(sums[0], survivors) / survivors
    shapes = {name: tuple(shape) for name, shape in encoding.layout.items()}
    return pack(mean.astype(np.float32), seed=encoding.seed, plan=plan(encoding), layout_sha256=layout_digest(shapes),
                round_id=round_id)
