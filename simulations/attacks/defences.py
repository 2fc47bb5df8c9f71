"""The defences an attack is run against, as transformations of what the attacker observes.

Each defence turns the victim's update (and, for secure aggregation, the other clients' updates of the same
round) into what an honest-but-curious coordinator sees, and reports the bytes the victim sent:
``none`` (dense fp32), ``compeft-<density>`` (decoded ComPEFT payload), ``ferret-<dim>`` (decoded Ferret
payload), ``secagg-<n>`` (the mean of n clients, the victim among them; masks hide the rest), ``dp-<z>``
(clipped to the update norm bound and noised: local DP without secure aggregation, distributed DP with it),
and ``+``-joined combinations applied left to right (``ferret-64+secagg-8``; ``dp-1+secagg-8`` is distributed DP).
ComPEFT with per-client supports cannot be securely aggregated (fedsqueeze refuses it), so it has no secagg row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from strategies.codecs import dense
from strategies.codecs.registry import CodecSettings, codec_settings
from strategies.norms import l2_norm
from strategies.privacy import DPSettings, privatize
from strategies.secagg.ring import Quantizer, ring_bits

DEFAULT_DEFENCES = ("none", "compeft-0.2", "compeft-0.05", "compeft-0.01", "ferret-64", "ferret-1024",
                    "secagg-2", "secagg-8", "secagg-32", "dp-0.1", "dp-1", "ferret-64+secagg-8", "dp-1+secagg-8")
Update = dict[str, torch.Tensor]
# Codec defences by the name a defence uses, and the codec settings its parameter gives (ComPEFT per tensor, so
# that each tensor keeps its own top-k; Ferret with the default block size).
CODEC_DEFENCES = {
    "compeft": lambda value: codec_settings("compeft", density=value, scope="tensor"),
    "ferret": lambda value: codec_settings("ferret", dim=int(value)),
}


@dataclass(frozen=True)
class Step:
    """One defence: a kind and its parameter."""

    kind: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Step:
        """``compeft-0.05`` → Step("compeft", 0.05); ``none`` → Step("none", 0)."""
        if text == "none":
            return cls("none", 0.0)
        kind, _, value = text.partition("-")
        if kind not in (*CODEC_DEFENCES, "secagg", "dp") or not value:
            raise ValueError(f"unknown defence '{text}' (none, compeft-<density>, ferret-<dim>, secagg-<n>, "
                             "dp-<noise multiplier>, joined with '+')")
        return cls(kind, float(value))


def parse(name: str) -> list[Step]:
    """The steps of a defence name."""
    return [Step.parse(part) for part in name.split("+")]


def clients_needed(name: str) -> int:
    """How many clients' updates the defence mixes (1 unless secure aggregation is in it)."""
    return max([int(step.value) for step in parse(name) if step.kind == "secagg"] or [1])


def sums_of_others(updates: list[Update], counts: list[int]) -> dict[int, Update]:
    """``{m: sum of the first m updates}`` for every m in ``counts``."""
    out: dict[int, Update] = {}
    running: Update | None = None
    for index, update in enumerate(updates, start=1):
        running = {n: t.clone() for n, t in update.items()} if running is None else \
            {n: running[n] + update[n] for n in update}
        if index in counts:
            out[index] = running
    missing = [m for m in counts if m not in out]
    if missing:
        raise ValueError(f"need {max(missing)} other updates, got {len(updates)}")
    return out


def observe(name: str, victim: Update, others_sum: dict[int, Update], *, round_id: int, dp_clip: float,
            generator: torch.Generator) -> tuple[Update, int]:
    """What the coordinator sees of ``victim`` under defence ``name``, and the bytes the victim sends.

    ``others_sum[m]`` is the sum of ``m`` other clients' updates of the round, for ``secagg-<m+1>``. Steps before
    the aggregation act on the others too: Ferret is linear, so it is applied to their sum; their DP noise is
    added to the sum with the variance of ``m`` independent draws (their clipping is not re-applied).
    """
    steps = parse(name)
    secure = next((int(s.value) for s in steps if s.kind == "secagg"), 0)
    for step in steps:
        if secure and step.kind in CODEC_DEFENCES:
            codec = codec_settings_for(step)
            try:  # ComPEFT: per-client supports would be seen
                codec.impl.check_secure(codec.options, shared_support=False)
            except ValueError as exc:
                raise ValueError(f"{name}: {step.kind} cannot be securely aggregated ({exc})") from exc
    mine = dict(victim)
    rest = others_sum.get(secure - 1) if secure > 1 else None
    if secure > 1 and rest is None:
        raise ValueError(f"secagg-{secure} needs the sum of {secure - 1} other clients' updates")
    nbytes = dense.dense_fp32_bytes(victim)
    summed = False  # whether ``mine`` already holds the round's sum
    for step in steps:
        if step.kind == "dp":
            if summed:
                raise ValueError(f"{name}: with secure aggregation, DP goes before Ferret (dp-1+ferret-64+secagg-8)")
            settings = DPSettings(noise_multiplier=step.value, clip=dp_clip)
            mine = privatize(mine, settings, clients_per_round=max(1, secure), secure=bool(secure),
                             generator=generator)[0]
            if rest is not None:
                std = settings.noise_std(secure, True) * math.sqrt(secure - 1)
                rest = {n: t + torch.randn(t.shape, generator=generator) * std for n, t in rest.items()}
        elif step.kind in CODEC_DEFENCES:
            codec = codec_settings_for(step)
            if rest is not None and codec.impl.aggregate_is_payload:
                # linear: the projection of the round's sum is the sum of the projections
                mine, rest = {n: mine[n] + rest[n] for n in victim}, None
                summed = True
            payload = codec.encode(mine, round_id=0, seed=1_000 + round_id)
            nbytes = len(payload)
            mine = codec.impl.decode(payload, expected_round=0, expected_layout={n: t.shape for n, t in victim.items()})
        elif step.kind == "secagg":
            nbytes = nbytes * ring_bits(secure, Quantizer(1.0, 16).levels) // 32  # b-bit words for fp32 ones
            if rest is not None:
                mine = {n: mine[n] + rest[n] for n in victim}
            if rest is not None or summed:
                mine = {n: mine[n] / secure for n in victim}
    return mine, int(nbytes)


def codec_settings_for(step: Step) -> CodecSettings:
    """The codec settings of a codec defence step (``compeft-0.05``, ``ferret-64``)."""
    return CODEC_DEFENCES[step.kind](step.value)


def typical_norm(updates: list[Update]) -> float:
    """The median L2 norm of some updates: the DP clipping bound the harness uses."""
    return float(np.median([l2_norm(u) for u in updates]))
