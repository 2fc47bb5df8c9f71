"""What a node demands of every round before it trains: its own privacy floor, which the coordinator cannot lower.

The coordinator writes every protection into the train config (secure aggregation on or off, how many parties,
the threshold, the DP noise and clip, the codec). A node that trusted those blindly could be told to send its
update in the clear, to take part in a two-party "sum", or to add almost no noise because the coordinator claims
10^12 clients share the noise. The floor is node configuration (``fedsqueeze node --privacy-floor``; in simulation
``FEDSQUEEZE_NODE_FLOOR``), written as space-separated ``key=value`` pairs:

- ``secagg=true``: train only for securely aggregated rounds;
- ``min-parties=N`` and ``min-threshold=T``: the smallest secure-aggregation setup it joins. A node that signs its
  keys (it pinned the federation's node identities) refuses a threshold below ``SIGNED_MIN_THRESHOLD`` = 3 unless
  its floor sets ``min-threshold`` itself: against a lying coordinator it learns sums over groups of at least t
  inputs, and a "sum" of two inputs is either one to anyone who knows the other;
- ``min-dp-noise=Z``: the smallest DP noise multiplier the round may use, ``max-dp-clip=C`` the largest clip;
- ``codecs=a,b``: the uplink codecs it agrees to send.

Whatever the floor, a node refuses a secure round whose party count differs from the ``clients-per-round`` its DP
noise is scaled for, or (when it pinned the federation's node identities) names more parties than the federation
has nodes, or that is not bound to the Flower run carrying it, or whose setup (or a later round of its run) it has
already taken part in (client/setup_ledger.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from strategies.secagg.common import SIGNED_MIN_THRESHOLD

if TYPE_CHECKING:
    from strategies.privacy import DPSettings

FLOOR_KEY = "privacy-floor"  # node config entry holding the floor's text
FLOOR_ENV = "FEDSQUEEZE_NODE_FLOOR"  # simulation: the floor every simulated node holds
CONTRIBUTED = "secagg-contributed"  # node state: the last secure round this node contributed to, per run


class FloorRefusal(ValueError):
    """The train message asks for less protection than this node's floor (or contradicts itself)."""


@dataclass(frozen=True)
class PrivacyFloor:
    """The least protection this node accepts; defaults demand nothing beyond the always-on checks."""

    secagg: bool = False
    min_parties: int = 0
    min_threshold: int | None = None  # None: SIGNED_MIN_THRESHOLD for signed rounds, nothing for unsigned ones
    min_dp_noise: float = 0.0
    max_dp_clip: float = math.inf
    codecs: frozenset[str] = field(default_factory=frozenset)  # empty: any codec

    @classmethod
    def parse(cls, text: str) -> PrivacyFloor:
        """The floor written as ``key=value`` pairs; ValueError naming an unknown key or a bad value."""
        values: dict[str, object] = {}
        for item in text.split():
            key, sep, value = item.partition("=")
            if not sep or not value:
                raise ValueError(f"privacy floor entry {item!r} is not key=value")
            values[key.replace("-", "_")] = _floor_value(key, value)
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def of_node(cls, node_config: Mapping[str, object], environ: Mapping[str, str] = os.environ) -> PrivacyFloor:
        """This node's floor: its node config entry, else (simulation) the environment's, else none."""
        text = str(node_config.get(FLOOR_KEY) or environ.get(FLOOR_ENV) or "")
        return cls.parse(text)

    @property
    def demands_anything(self) -> bool:
        """Whether any entry was set."""
        return self != PrivacyFloor()

    def least_threshold(self, signed: bool) -> int:
        """The smallest secure-aggregation threshold this node joins: its floor's, else SIGNED_MIN_THRESHOLD for a
        node that signs its keys, else no bound."""
        if self.min_threshold is not None:
            return self.min_threshold
        return SIGNED_MIN_THRESHOLD if signed else 0

    def check(self, codec: str, dp: DPSettings, parties: int | None, threshold: int | None,
              signed: bool = False) -> None:
        """FloorRefusal naming the first demand a round does not meet: ``codec`` is its uplink codec, ``dp`` its DP
        settings, ``parties``/``threshold`` its secure-aggregation setup (None when not secure), ``signed``
        whether this node signs its keys (which sets a default least threshold)."""
        if self.secagg and parties is None:
            raise FloorRefusal("this node trains only for securely aggregated rounds, and this round is not")
        if parties is not None and parties < self.min_parties:
            raise FloorRefusal(f"the round has {parties} secure-aggregation parties, this node joins only "
                               f"{self.min_parties} or more")
        if threshold is not None and threshold < self.least_threshold(signed):
            if self.min_threshold is not None:
                raise FloorRefusal(f"the round's threshold is {threshold}, this node accepts {self.min_threshold} or "
                                   "more")
            raise FloorRefusal(f"the round's threshold is {threshold}: a signing node accepts {SIGNED_MIN_THRESHOLD} "
                               "or more unless its privacy floor sets min-threshold (a group of two inputs hides "
                               "neither from anyone who knows the other)")
        noise, clip = dp.noise_multiplier, dp.clip
        if self.min_dp_noise > 0 and not noise >= self.min_dp_noise:
            raise FloorRefusal(f"the round's DP noise multiplier is {noise}, this node needs {self.min_dp_noise} "
                               "or more")
        if math.isfinite(self.max_dp_clip) and not 0 < clip <= self.max_dp_clip:
            raise FloorRefusal(f"the round's DP clip is {clip}, this node accepts (0, {self.max_dp_clip}]")
        if self.codecs and codec not in self.codecs:
            raise FloorRefusal(f"the round asks for codec '{codec}', this node sends only "
                               f"{', '.join(sorted(self.codecs))}")


def _floor_value(key: str, value: str) -> object:
    try:
        if key == "secagg":
            if value.lower() not in ("true", "false"):
                raise ValueError
            return value.lower() == "true"
        if key in ("min-parties", "min-threshold"):
            number = int(value)
            if number < 0:
                raise ValueError
            return number
        if key in ("min-dp-noise", "max-dp-clip"):
            number = float(value)
            if not (math.isfinite(number) and number > 0):
                raise ValueError
            return number
        if key == "codecs":
            names = frozenset(name for name in value.split(",") if name)
            if not names:
                raise ValueError
            return _known_codecs(names)
    except _UnknownCodec:
        raise
    except ValueError:
        raise ValueError(f"privacy floor {key}={value!r} is not a valid value for {key}") from None
    raise ValueError(f"unknown privacy floor key {key!r} (known: secagg, min-parties, min-threshold, min-dp-noise, "
                     "max-dp-clip, codecs)")


def _known_codecs(names: frozenset[str]) -> frozenset[str]:
    """``names`` when each is a registered codec; ValueError naming the first that is not."""
    from strategies.codecs.registry import CODEC_NAMES  # here, not at the top: the registry imports torch

    unknown = sorted(names - set(CODEC_NAMES))
    if unknown:
        raise _UnknownCodec(f"privacy floor codecs: unknown codec {unknown[0]!r} (known: {', '.join(CODEC_NAMES)})")
    return names


class _UnknownCodec(ValueError):
    """A floor names a codec nobody registered (its message is already the one line to show)."""
