"""The coordinator's aggregation step: the run config's rule (FedAvg or a robust one) over the round's accepted
updates, for decoded tensors and for Ferret coefficients alike, and the per-update bounds checked at the door."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from server.run_config import AggregationSettings, RunConfig
from strategies import robust
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
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in update.values()))


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
