"""What a user configures of the ComPEFT codec."""

from __future__ import annotations

import dataclasses
import math

from strategies.codecs.base import CodecOptions
from strategies.codecs.compeft.wire import SCOPES
from strategies.settings import setting


@dataclasses.dataclass(frozen=True)
class CompeftOptions(CodecOptions):
    """Options of the ComPEFT codec."""

    density: float = setting("compeft-density", 0.05,
        "fraction of entries kept, in (0, 1]")
    alpha_scale: float = setting("compeft-alpha-scale", 1.0,
        "alpha in units of the delta's std (ComPEFT's c)")
    scope: str = setting("compeft-scope", "global",
        "one alpha for the whole delta, or `tensor`: one per tensor")

    def __post_init__(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"compeft-density must be in (0, 1], got {self.density}")
        if not 0.0 < self.alpha_scale < math.inf:
            raise ValueError(f"compeft-alpha-scale must be positive, got {self.alpha_scale}")
        if self.scope not in SCOPES:
            raise ValueError(f"compeft-scope '{self.scope}' is not one of {', '.join(SCOPES)}")
