"""The one L2 norm of an update: named tensors taken as one vector, accumulated in fp64 (used by DP clipping, the
coordinator's norm bound, robust rules and error-feedback metrics; a sparse update passes its kept values)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch


def l2_norm(update: Mapping[str, torch.Tensor]) -> float:
    """The L2 norm of an update (named tensors) taken as one vector, accumulated in fp64."""
    return math.sqrt(sum(float((t.detach().double() ** 2).sum()) for t in update.values()))
