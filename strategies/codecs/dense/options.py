"""What a user configures of the dense codec."""

from __future__ import annotations

import dataclasses

from strategies.codecs.base import CodecOptions
from strategies.codecs.dense.wire import WIRE_DTYPES
from strategies.settings import setting


@dataclasses.dataclass(frozen=True)
class DenseOptions(CodecOptions):
    """Options of the dense codec."""

    dtype: str = setting("dense-dtype", "fp32",
        "wire precision of each entry: `fp32` (lossless), `bf16` or `fp16`")

    def __post_init__(self) -> None:
        if self.dtype not in WIRE_DTYPES:
            raise ValueError(f"dense-dtype '{self.dtype}' is not one of {', '.join(WIRE_DTYPES)}")
