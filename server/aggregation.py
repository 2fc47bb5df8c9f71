"""The coordinator's aggregation step: the run config's rule (FedAvg or a robust one) over the round's accepted
updates, for decoded tensors and for Ferret coefficients alike, and the per-update bounds checked at the door."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from server.run_config import AggregationSettings, RunConfig
from strategies import fedavg, robust
from strategies.codecs import UpdateRejected
from strategies.codecs.base import Aggregate, Codec, TensorAggregate
from strategies.codecs.dense import DENSE, dense_fp32_bytes


def byte_limit(cfg: RunConfig, layout: dict[str, tuple[int, ...]]) -> int:
    """The largest payload accepted: the configured limit, else twice the update's dense fp32 size plus framing
    (no codec legitimately sends more than dense fp32)."""
    if cfg.limits.max_bytes:
        return cfg.limits.max_bytes
    return 2 * dense_fp32_bytes({n: torch.empty(s, device="meta") for n, s in layout.items()}) + 4096


def check_norm(cfg: RunConfig, contribution: Any, codec: Codec = DENSE) -> None:
    """Raise UpdateRejected when an accepted contribution's norm (tensors, or Ferret coefficients: the codec's
    ``norm``) exceeds ``max-update-norm`` (0: no bound)."""
    if cfg.limits.max_norm:
        norm = codec.norm(contribution)
        if not norm <= cfg.limits.max_norm:
            raise UpdateRejected(f"update norm {norm:.4g} exceeds max-update-norm {cfg.limits.max_norm:g}")


def _options(settings: AggregationSettings, count: int) -> dict[str, Any]:
    """The rule's options for ``count`` updates: Krum's f defaults to the most its n > 2f + 2 condition allows."""
    byzantine = settings.byzantine or max(0, (count - 3) // 2)
    if settings.rule == "trimmed-mean":
        return {"beta": settings.trim}
    if settings.rule == "krum":
        return {"num_byzantine": byzantine}
    if settings.rule == "multi-krum":
        return {"num_byzantine": byzantine, "keep": settings.keep or max(1, count - byzantine)}
    if settings.rule == "norm-bound":
        return {"bound": settings.norm_bound or None}
    if settings.rule == "sign-majority":
        return {"quorum": settings.byzantine + 1 if settings.byzantine else 2}
    return {}


def aggregate(settings: AggregationSettings, updates: list[Any], weights: list[float], round_id: int,
              codec: Codec = DENSE) -> Aggregate:
    """The round's aggregate of ``codec``'s contributions under ``settings``: tensors for decoded updates, a
    payload for Ferret ones (the rule runs on their coefficients, which share one basis)."""
    rule = partial(robust.aggregate, settings.rule, **_options(settings, len(updates)))
    return codec.aggregate(updates, weights, rule, plain_mean=settings.rule == "fedavg", round_id=round_id)


class RoundAggregator:
    """One round's aggregation, fed each accepted update as its reply arrives.

    FedAvg over decoded tensors (and the norm-bounded mean with a fixed bound, which clips each update on its own)
    folds every update into an exact running sum and keeps nothing else: O(model) memory whatever the number of
    clients, and the same bits in any arrival order. Ferret payloads are kept (a few hundred bytes each) and
    combined in a fixed order. The other robust rules (median, trimmed mean, Krum, multi-Krum, sign-majority) need
    every update at once; they hold the round's decoded updates, ``held_bytes`` of them, which is bounded by the
    clients sampled per round times the update's dense size, and run at the end of the round in partition order.
    """

    def __init__(self, settings: AggregationSettings, round_id: int, codec: Codec = DENSE) -> None:
        self.settings = settings
        self.round_id = round_id
        self.codec = codec
        self.mean = fedavg.RunningMean()
        self.held: list[tuple[Any, Any, float]] = []
        self.held_bytes = 0
        self.peak_held_bytes = 0

    @property
    def streams(self) -> bool:
        """Whether updates are folded in on arrival rather than held to the end of the round."""
        if not self.codec.streams:
            return False
        return self.settings.rule == "fedavg" or (self.settings.rule == "norm-bound" and bool(self.settings.norm_bound))

    def add(self, key: Any, update: Any, weight: float) -> None:
        """Take one accepted update; ``key`` orders the held ones (e.g. partition id). ValueError (nothing taken)
        when the update cannot be aggregated with the earlier ones."""
        if self.streams:
            if self.settings.rule == "norm-bound":
                update = robust.norm_bounded([self.codec.dense(update)], self.settings.norm_bound)[0][0]
            self.mean.add(update, weight)
            return
        self.held.append((key, update, weight))
        self.held_bytes += self.codec.nbytes(update)
        self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)

    def __len__(self) -> int:
        return len(self.mean) + len(self.held)

    def result(self) -> Aggregate:
        """The round's aggregate (tensors, or a Ferret payload); ValueError when the rule cannot run."""
        if not self.held:
            return TensorAggregate(self.mean.result())
        self.held.sort(key=lambda item: item[0])
        return aggregate(self.settings, [u for _, u, _ in self.held], [w for _, _, w in self.held], self.round_id,
                         self.codec)
