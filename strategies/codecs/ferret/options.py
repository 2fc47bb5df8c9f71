"""What a user configures of the Ferret codec."""

from __future__ import annotations

import dataclasses

from strategies.codecs.base import CodecOptions
from strategies.codecs.ferret.wire import check_options
from strategies.settings import setting


@dataclasses.dataclass(frozen=True)
class FerretOptions(CodecOptions):
    """Options of the Ferret codec."""

    dim: int = setting("ferret-dim", 64,
        "directions per block")
    block_size: int = setting("ferret-block-size", 65536,
        "entries per block (dim/block_size is the fraction of fp32 bytes sent)")

    def __post_init__(self) -> None:
        check_options(self.dim, self.block_size)
