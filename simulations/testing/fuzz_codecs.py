"""Fuzz targets for every codec's decoder and the coordinator's reply handler: valid seed payloads of a small
adapter-like layout, decoded as the coordinator decodes them; an accepted decode must meet the layout."""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from strategies import messages
from strategies.codecs import compeft, dense, ferret
from strategies.codecs.registry import decode_update
from strategies.downlink import digest_prefix

FUZZ_LAYOUT = {"a.lora_A.weight": (4, 16), "a.lora_B.weight": (16, 4), "head.bias": (3,)}
FUZZ_ROUND, FUZZ_SEED = 7, 12345


def fuzz_update(scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A small adapter-like update in ``FUZZ_LAYOUT`` (the seed payloads' content)."""
    generator = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=generator) * scale for name, shape in FUZZ_LAYOUT.items()}


def meets_layout(result: object) -> None:
    """The check an accepted decode must pass: exactly ``FUZZ_LAYOUT``'s tensors, all finite."""
    if not isinstance(result, dict) or set(result) != set(FUZZ_LAYOUT):
        raise AssertionError(f"decoded names {sorted(result) if isinstance(result, dict) else type(result)}")
    for name, tensor in result.items():
        if tuple(tensor.shape) != FUZZ_LAYOUT[name] or not torch.isfinite(tensor).all():
            raise AssertionError(f"decoded tensor '{name}' has shape {tuple(tensor.shape)} or non-finite values")


def codec_targets() -> dict[str, tuple[list[bytes], Callable[[bytes], object]]]:
    """Every codec decoder with valid seed payloads, as the coordinator calls it (expected round and layout)."""
    like = {name: torch.empty(shape) for name, shape in FUZZ_LAYOUT.items()}
    update = fuzz_update()
    return {
        "dense-fp32": ([dense.encode(update, dtype="fp32", round_id=FUZZ_ROUND)],
                       lambda p: dense.decode(p, expected_round=FUZZ_ROUND, expected_layout=FUZZ_LAYOUT)),
        "dense-bf16": ([dense.encode(update, dtype="bf16", round_id=FUZZ_ROUND)],
                       lambda p: dense.decode(p, expected_round=FUZZ_ROUND, expected_layout=FUZZ_LAYOUT)),
        "compeft": ([compeft.encode(update, density=d, round_id=FUZZ_ROUND) for d in (0.05, 0.5, 1.0)],
                    lambda p: compeft.decode(p, expected_round=FUZZ_ROUND, expected_layout=FUZZ_LAYOUT)),
        "ferret": ([ferret.encode(update, seed=FUZZ_SEED, dim=8, block_size=64, round_id=FUZZ_ROUND)],
                   lambda p: ferret.decode(p, like=like, expected_seed=FUZZ_SEED, expected_round=FUZZ_ROUND)),
    }


FUZZ_DIGEST = "ab" * 32  # the global state's digest a fuzzed reply claims to have trained from


def reply_content(payload: bytes, digest: str = FUZZ_DIGEST, **metrics: float) -> RecordDict:
    """A client's reply as the coordinator receives it: ``payload`` as the encoded update, plausible metrics
    (``metrics`` override them) and ``digest``'s prefix; for fuzzing and testing the reply handler."""
    values = {"num-examples": 32, "train-loss": 0.5, "partition-id": 1, "state-digest-48": digest_prefix(digest),
              **metrics}
    return RecordDict({messages.UPDATE: ConfigRecord({messages.ENCODED_UPDATE: payload}),
                       messages.METRICS: MetricRecord(values)})


def accept_dense(payload: bytes) -> dict[str, torch.Tensor]:
    """The reply handler's acceptor for dense payloads of the fuzz layout and round."""
    return decode_update("dense", payload, expected_round=FUZZ_ROUND, expected_layout=FUZZ_LAYOUT)
