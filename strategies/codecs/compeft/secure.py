"""ComPEFT under secure aggregation (shared-support mode). The round's support is chosen by the coordinator from
public information (the largest entries of the previous global update; a seeded random draw in the first round)
and sent to every party. Each party sends the sign of its delta on that support as a ternary word in {0, 1, 2} and
its alpha (``alpha_scale * std(delta)``) quantised; the coordinator learns the vote count per support entry and the
sum of alphas, and applies ``mean alpha * mean sign`` on the support. Positions chosen by one party never leave it.
ComPEFT's own mode, where each party picks its positions, would show the server every party's positions and is
refused with secure aggregation."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from protos.fedsqueeze.v1 import compeft_pb2
from strategies.codecs.compeft.wire import coded_positions, position_message
from strategies.codecs.errors import UpdateRejected
from strategies.codecs.position_coding import decode_positions, encode_positions
from strategies.secagg.ring import ring_bits
from strategies.secagg.updates import PartyInput, SecureEncoding, unflatten


def segments(encoding: SecureEncoding) -> list[tuple[int, int]]:
    """A vote word per support entry, then one alpha word."""
    if encoding.support is None or not encoding.support.size:
        raise ValueError("the compeft secure mode needs a non-empty support")
    return [(encoding.support.size, ring_bits(encoding.parties, 2)),
            (1, ring_bits(encoding.parties, encoding.quantizer.levels))]


def party_input(encoding: SecureEncoding, flat: np.ndarray, rng: np.random.Generator) -> PartyInput:
    """The signs on the support as {0, 1, 2} and ``alpha_scale * std`` quantised."""
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


def mean(encoding: SecureEncoding, sums: list[np.ndarray], survivors: int) -> dict[str, torch.Tensor]:
    """``mean alpha * mean sign`` on the support, zero elsewhere."""
    votes = sums[0].astype(np.int64) - survivors  # in [-survivors, survivors]
    alpha = float(encoding.value_quantizer().dequantize_sum(sums[1], survivors)[0]) / survivors
    flat = np.zeros(encoding.entries, dtype=np.float32)
    assert encoding.support is not None
    flat[encoding.support] = alpha * votes / survivors
    return unflatten(flat, encoding.layout)


def choose_support(previous: np.ndarray | None, density: float, entries: int, round_seed: bytes) -> np.ndarray:
    """The support for a round: the ``density`` largest entries of the previous global update (public: every party
    holds the global state), or a seeded uniform draw when there is none yet."""
    count = min(entries, max(1, round(density * entries)))
    if previous is not None and np.count_nonzero(previous) >= count:
        chosen = np.argpartition(-np.abs(previous), count - 1)[:count]
        return np.sort(chosen).astype(np.int64)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(round_seed).digest()[:8], "little"))
    return np.sort(rng.choice(entries, size=count, replace=False)).astype(np.int64)


def support_to_bytes(support: np.ndarray, entries: int) -> bytes:
    """The support Rice- or bitmap-coded, as a CompeftTensor without signs."""
    return position_message(encode_positions(support, entries)).SerializeToString()


def support_from_bytes(data: bytes, entries: int) -> np.ndarray:
    """Inverse of ``support_to_bytes``; UpdateRejected when malformed or empty."""
    try:
        message = compeft_pb2.CompeftTensor.FromString(data)
    except Exception as exc:
        raise UpdateRejected(f"compeft support is malformed: {exc}") from exc
    support = decode_positions(coded_positions(message, "compeft support"), entries, "compeft support")
    if not support.size:
        raise UpdateRejected("compeft support is empty")
    return support
