"""Codecs by name: the built-in codecs registered (``registration.register_codec``, as PEFT's
``register_peft_method``; a codec of one's own registers the same way), the lookup by name, and the settings a run
chooses."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from strategies.codecs.base import Codec, CodecOptions
from strategies.codecs.compeft import COMPEFT, CompeftOptions
from strategies.codecs.dense import DENSE, DenseOptions
from strategies.codecs.envelope import DEFAULT_MAX_PAYLOAD_BYTES, Layout
from strategies.codecs.ferret import FERRET, FerretOptions
from strategies.codecs.registration import CODECS, register_codec

for _built_in in (DENSE, COMPEFT, FERRET):  # in the order users see them listed
    register_codec(_built_in)
CODEC_NAMES = tuple(CODECS)

__all__ = ["CODECS", "CODEC_NAMES", "CodecSettings", "CompeftOptions", "DenseOptions", "FerretOptions",
           "codec_settings", "decode_update", "encode_update", "get_codec", "round_seed", "shared_seed"]


def get_codec(name: str) -> Codec:
    """The codec called ``name``; ValueError naming the known codecs otherwise."""
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown codec '{name}' (choose from {', '.join(CODEC_NAMES)})") from None


@dataclass(frozen=True)
class CodecSettings:
    """A codec, by name, and its options (the codec's own options dataclass; None: its defaults)."""

    codec: str = "dense"
    options: CodecOptions = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        expected = get_codec(self.codec).options_type
        if self.options is None:
            object.__setattr__(self, "options", expected())
        if type(self.options) is not expected:
            raise ValueError(f"codec '{self.codec}' takes {expected.__name__}, got {type(self.options).__name__}")

    @property
    def impl(self) -> Codec:
        """The codec object."""
        return CODECS[self.codec]

    def to_record(self, prefix: str = "") -> dict[str, Any]:
        """Flat ConfigRecord entries (the codec's name and its options, keys as in the run config)."""
        return {f"{prefix}codec": self.codec, **self.options.to_record(prefix)}

    @classmethod
    def from_record(cls, record: Mapping[str, object], prefix: str = "") -> CodecSettings:
        """Inverse of ``to_record``; ValueError for a missing or invalid entry."""
        if f"{prefix}codec" not in record:
            raise ValueError(f"codec settings lack '{prefix}codec'")
        codec = get_codec(str(record[f"{prefix}codec"]))
        return cls(codec.name, codec.options_type.from_record(record, prefix))

    @property
    def lossy(self) -> bool:
        """Whether decoding loses information."""
        return self.impl.lossy(self.options)

    @property
    def feedback_helps(self) -> bool:
        """Whether error feedback applies (biased compressors: top-k, low precision)."""
        return self.impl.feedback_helps(self.options)

    def encode(self, update: dict[str, torch.Tensor], *, round_id: int, seed: int | None = None) -> bytes:
        """Encode an update (a delta) with this codec and options."""
        return self.impl.encode(update, self.options, round_id=round_id, seed=seed)


def codec_settings(name: str, **options: Any) -> CodecSettings:
    """Settings for codec ``name`` with ``options`` (its options dataclass's fields) over their defaults."""
    codec = get_codec(name)
    return CodecSettings(codec.name, codec.options_type(**options))


def round_seed(run_seed: int, round_id: int) -> int:
    """The shared-randomness seed of ``round_id``: 63 bits derived from the run seed, so runs reproduce."""
    digest = hashlib.sha256(f"fedsqueeze-ferret:{run_seed}:{round_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def shared_seed(codec: Codec, run_seed: int, round_id: int) -> int | None:
    """The round's shared seed when ``codec`` needs one, else None."""
    return round_seed(run_seed, round_id) if codec.needs_round_seed else None


def encode_update(settings: CodecSettings, update: dict[str, torch.Tensor], *, round_id: int,
                  seed: int | None = None) -> bytes:
    """Encode an update (a delta) with the codec and options in ``settings`` (ferret also needs the round's
    ``seed``)."""
    return settings.encode(update, round_id=round_id, seed=seed)


def decode_update(codec: str, payload: bytes, *, expected_round: int, expected_layout: Layout,
                  max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, expected_seed: int | None = None
                  ) -> dict[str, torch.Tensor]:
    """Validate and decode an update to fp32 tensors; raises UpdateRejected for anything it will not accept."""
    return get_codec(codec).decode(payload, expected_round=expected_round, expected_layout=expected_layout,
                                   max_bytes=max_bytes, expected_seed=expected_seed)
