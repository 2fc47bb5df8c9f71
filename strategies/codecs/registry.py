"""Pick a codec by name: one entry point for clients (encode) and the coordinator (decode)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from strategies.codecs import dense
from strategies.codecs.envelope import DEFAULT_MAX_PAYLOAD_BYTES, Layout

CODEC_NAMES = ("dense",)


def check_codec_name(codec: str) -> None:
    """Raise ValueError naming the known codecs when ``codec`` is not one of them."""
    if codec not in CODEC_NAMES:
        raise ValueError(f"unknown codec '{codec}' (choose from {', '.join(CODEC_NAMES)})")


def encode_update(codec: str, update: dict[str, torch.Tensor], *, round_id: int,
                  options: Mapping[str, object]) -> bytes:
    """Encode a client's update with the named codec and its options (e.g. ``dense-dtype``)."""
    check_codec_name(codec)
    return dense.encode(update, dtype=str(options.get("dense-dtype", "fp32")), round_id=round_id)


def decode_update(codec: str, payload: bytes, *, expected_round: int, expected_layout: Layout,
                  max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> dict[str, torch.Tensor]:
    """Validate and decode an update; raises UpdateRejected for anything it will not accept."""
    check_codec_name(codec)
    return dense.decode(payload, expected_round=expected_round, expected_layout=expected_layout,
                        max_bytes=max_bytes)
