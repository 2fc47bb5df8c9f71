"""Pick a codec by name: one entry point for clients (encode) and the coordinator (decode)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from strategies.codecs import compeft, dense, ferret
from strategies.codecs.envelope import DEFAULT_MAX_PAYLOAD_BYTES, Layout

CODEC_NAMES = ("dense", "compeft", "ferret")


def check_codec_name(codec: str) -> None:
    """Raise ValueError naming the known codecs when ``codec`` is not one of them."""
    if codec not in CODEC_NAMES:
        raise ValueError(f"unknown codec '{codec}' (choose from {', '.join(CODEC_NAMES)})")


@dataclass(frozen=True)
class CodecSettings:
    """A codec and its options, as the run config names them (``codec``, ``dense-dtype``, ``compeft-*``,
    ``ferret-*``)."""

    codec: str = "dense"
    dense_dtype: str = "fp32"
    compeft_density: float = 0.05
    compeft_alpha_scale: float = 1.0
    compeft_scope: str = "global"
    ferret_dim: int = 64
    ferret_block_size: int = 65536

    def __post_init__(self) -> None:
        check_codec_name(self.codec)
        if self.dense_dtype not in dense.WIRE_DTYPES:
            raise ValueError(f"dense-dtype '{self.dense_dtype}' is not one of {', '.join(dense.WIRE_DTYPES)}")
        compeft.check_options(self.compeft_density, self.compeft_alpha_scale, self.compeft_scope)
        ferret.check_options(self.ferret_dim, self.ferret_block_size)

    def to_record(self, prefix: str = "") -> dict[str, str | float]:
        """Flat ConfigRecord entries (keys as in the run config, optionally prefixed)."""
        return {f"{prefix}codec": self.codec, f"{prefix}dense-dtype": self.dense_dtype,
                f"{prefix}compeft-density": self.compeft_density,
                f"{prefix}compeft-alpha-scale": self.compeft_alpha_scale,
                f"{prefix}compeft-scope": self.compeft_scope, f"{prefix}ferret-dim": self.ferret_dim,
                f"{prefix}ferret-block-size": self.ferret_block_size}

    @classmethod
    def from_record(cls, record: Mapping[str, object], prefix: str = "") -> CodecSettings:
        """Inverse of ``to_record``; raises ValueError for a missing or invalid entry."""
        try:
            return cls(codec=str(record[f"{prefix}codec"]), dense_dtype=str(record[f"{prefix}dense-dtype"]),
                       compeft_density=float(record[f"{prefix}compeft-density"]),  # type: ignore[arg-type]
                       compeft_alpha_scale=float(record[f"{prefix}compeft-alpha-scale"]),  # type: ignore[arg-type]
                       compeft_scope=str(record[f"{prefix}compeft-scope"]),
                       ferret_dim=int(record[f"{prefix}ferret-dim"]),  # type: ignore[arg-type]
                       ferret_block_size=int(record[f"{prefix}ferret-block-size"]))  # type: ignore[arg-type]
        except KeyError as exc:
            raise ValueError(f"codec settings lack {exc.args[0]!r}") from exc

    @property
    def lossy(self) -> bool:
        """Whether decoding loses information."""
        return self.codec in ("compeft", "ferret") or self.dense_dtype != "fp32"

    @property
    def feedback_helps(self) -> bool:
        """Whether error feedback applies: yes for biased compressors (top-k, low precision); no for ferret, whose
        reconstruction is unbiased and whose error is fresh random-direction noise each round."""
        return self.lossy and self.codec != "ferret"


def round_seed(run_seed: int, round_id: int) -> int:
    """The shared-randomness seed of ``round_id``: 63 bits derived from the run seed, so runs reproduce."""
    digest = hashlib.sha256(f"fedsqueeze-ferret:{run_seed}:{round_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def encode_update(settings: CodecSettings, update: dict[str, torch.Tensor], *, round_id: int,
                  seed: int | None = None) -> bytes:
    """Encode an update (a delta) with the codec and options in ``settings`` (ferret also needs the round's
    ``seed``)."""
    if settings.codec == "ferret":
        if seed is None:
            raise ValueError("the ferret codec needs the round's seed")
        return ferret.encode(update, seed=seed, dim=settings.ferret_dim, block_size=settings.ferret_block_size,
                             round_id=round_id)
    if settings.codec == "compeft":
        return compeft.encode(update, density=settings.compeft_density, alpha_scale=settings.compeft_alpha_scale,
                              scope=settings.compeft_scope, round_id=round_id)
    return dense.encode(update, dtype=settings.dense_dtype, round_id=round_id)


def decode_update(codec: str, payload: bytes, *, expected_round: int, expected_layout: Layout,
                  max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, expected_seed: int | None = None
                  ) -> dict[str, torch.Tensor]:
    """Validate and decode an update to fp32 tensors; raises UpdateRejected for anything it will not accept."""
    check_codec_name(codec)
    if codec == "ferret":
        like = {name: torch.empty(shape) for name, shape in expected_layout.items()}
        return ferret.decode(payload, like=like, expected_seed=expected_seed, expected_round=expected_round,
                             max_bytes=max_bytes)
    if codec == "compeft":
        decoded = compeft.decode(payload, expected_round=expected_round, expected_layout=expected_layout,
                                 max_bytes=max_bytes)
        return {name: tensor.to(torch.float32) for name, tensor in decoded.items()}
    return dense.decode(payload, expected_round=expected_round, expected_layout=expected_layout, max_bytes=max_bytes)
