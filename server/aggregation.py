"""The coordinator's aggregation step: the run config's rule (FedAvg or a robust one) over the round's accepted
updates, for decoded tensors and for Ferret coefficients alike, and the per-update bounds checked at the door."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from server.run_config import AggregationSettings, RunConfig
from strategies import fedavg, robust
from strategies.codecs import UpdateRejected, ferret
from strategies.codecs.dense import dense_fp32_bytes


def byte_limit(cfg: RunConfig, layout: dict[str, tuple[int, ...]]) -> int:
    """The largest payload accepted: the configured limit, else twice the update's dense fp32 size plus framing
    (no codec legitimately sends more than dense fp32)."""
    if cfg.limits.max_bytes:
        return cfg.limits.max_bytes
    return 2 * dense_fp32_bytes({n: torch.empty(s, device="meta") for n, s in layout.items()}) + 4096


def update_norm(update: dict[str, torch.Tensor] | ferret.FerretPayload) -> float:
    """L2 norm of a decoded update, or of a parsed Ferret payload's coefficient vector."""
    if isinstance(update, ferret.FerretPayload):
        return float(np.linalg.norm(update.coefficients.astype(np.float64)))
    return fedavg.l2_norm(update)


def check_norm(cfg: RunConfig, update: dict[str, torch.Tensor] | ferret.FerretPayload) -> None:
    """Raise UpdateRejected when the update's norm exceeds ``max-update-norm`` (0: no bound)."""
    if cfg.limits.max_norm:
        norm = update_norm(update)
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


def aggregate(settings: AggregationSettings, updates: list[Any], weights: list[float], round_id: int) -> Any:
    """The round's aggregate under ``settings``: tensors for decoded updates, a payload for Ferret ones (the rule
    runs on their coefficients, which live in the same shared basis, so the result is again a payload)."""
    if updates and isinstance(updates[0], bytes):
        if settings.rule == "fedavg":
            total = float(sum(weights))
            return ferret.combine(updates, [w / total for w in weights], round_id=round_id)
        parsed = ferret.parse_same_basis(updates)
        first = parsed[0]
        coefficients = [{"coefficients": torch.from_numpy(p.coefficients.copy())} for p in parsed]
        mean = robust.aggregate(settings.rule, coefficients, weights, **_options(settings, len(updates)))
        return ferret.pack(mean["coefficients"].numpy(), seed=first.seed, plan=first.plan,
                           layout_sha256=first.layout_sha256, round_id=round_id)
    return robust.aggregate(settings.rule, updates, weights, **_options(settings, len(updates)))


class RoundAggregator:
    """One round's aggregation, fed each accepted update as its reply arrives.

    FedAvg over decoded tensors (and the norm-bounded mean with a fixed bound, which clips each update on its own)
    folds every update into an exact running sum and keeps nothing else: O(model) memory whatever the number of
    clients, and the same bits in any arrival order. Ferret payloads are kept (a few hundred bytes each) and
    combined in a fixed order. The other robust rules (median, trimmed mean, Krum, multi-Krum, sign-majority) need
    every update at once; they hold the round's decoded updates, ``held_bytes`` of them, which is bounded by the
    clients sampled per round times the update's dense size, and run at the end of the round in partition order.
    """

    def __init__(self, settings: AggregationSettings, round_id: int) -> None:
        self.settings = settings
        self.round_id = round_id
        self.mean = fedavg.RunningMean()
        self.held: list[tuple[Any, Any, float]] = []
        self.held_bytes = 0
        self.peak_held_bytes = 0

    def streams(self, update: Any) -> bool:
        """Whether ``update`` is folded in on arrival rather than held to the end of the round."""
        if isinstance(update, bytes):
            return False
        return self.settings.rule == "fedavg" or (self.settings.rule == "norm-bound" and bool(self.settings.norm_bound))

    def add(self, key: Any, update: Any, weight: float) -> None:
        """Take one accepted update; ``key`` orders the held ones (e.g. partition id). ValueError (nothing taken)
        when the update cannot be aggregated with the earlier ones."""
        if self.streams(update):
            if self.settings.rule == "norm-bound":
                update = robust.norm_bounded([update], self.settings.norm_bound)[0][0]
            self.mean.add(update, weight)
            return
        self.held.append((key, update, weight))
        self.held_bytes += len(update) if isinstance(update, bytes) else sum(
            t.numel() * t.element_size() for t in update.values())
        self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)

    def __len__(self) -> int:
        return len(self.mean) + len(self.held)

    def result(self) -> Any:
        """The round's aggregate (tensors, or a Ferret payload); ValueError when the rule cannot run."""
        if not self.held:
            return self.mean.result()
        self.held.sort(key=lambda item: item[0])
        return aggregate(self.settings, [u for _, u, _ in self.held], [w for _, _, w in self.held], self.round_id)
