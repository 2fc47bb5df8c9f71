"""Client-level differential privacy: clip each client's update in L2 and add Gaussian noise before it is encoded
(and masked), and account the privacy spent with Opacus's RDP accountant.

Noise: with secure aggregation the coordinator sees only the sum of the ``m`` sampled clients, so each client adds
``N(0, (z * C)^2 / m)`` and the sum carries ``N(0, (z * C)^2)``, the central Gaussian mechanism with noise
multiplier ``z`` on updates of L2 sensitivity ``C`` (distributed DP). Without secure aggregation the coordinator
sees every update, so each client adds the full ``N(0, (z * C)^2)`` (local DP). Either way one round is the
sampled Gaussian mechanism with multiplier ``z`` and sampling rate ``q = clients per round / clients``, which is
what the accountant composes over rounds. The guarantee is client-level: neighbouring datasets differ in one
client's whole data.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from strategies.norms import l2_norm
from strategies.settings import KeyedSettings, setting


@dataclass(frozen=True)
class DPSettings(KeyedSettings):
    """``noise_multiplier`` z and L2 ``clip`` C; z = 0 turns DP off. ``delta``: δ of the reported (ε, δ)."""

    noise_multiplier: float = setting("dp-noise-multiplier", 0.0, "z; 0 turns DP off")
    clip: float = setting("dp-clip", 0.0, "C: each client's update is clipped to L2 norm C")
    delta: float = setting("dp-delta", 1e-5, "δ of the reported (ε, δ)")

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(f"dp-noise-multiplier must be a finite number >= 0, got {self.noise_multiplier}")
        if not (math.isfinite(self.clip) and self.clip >= 0):
            raise ValueError(f"dp-clip must be a finite number >= 0, got {self.clip}")
        if self.noise_multiplier > 0 and self.clip <= 0:
            raise ValueError("dp-noise-multiplier > 0 needs dp-clip > 0 (the L2 bound the noise is scaled to)")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"dp-delta must be in (0, 1), got {self.delta}")

    @property
    def enabled(self) -> bool:
        """Whether clients clip and add noise."""
        return self.noise_multiplier > 0

    def noise_std(self, clients_per_round: int, secure: bool) -> float:
        """Each client's per-entry noise standard deviation."""
        full = self.noise_multiplier * self.clip
        return full / math.sqrt(clients_per_round) if secure else full


def privatize(update: Mapping[str, torch.Tensor], settings: DPSettings, clients_per_round: int, secure: bool,
              generator: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], float]:
    """Clip ``update`` to L2 norm ``settings.clip`` and add Gaussian noise; returns it and the norm before clipping.

    The noise comes from a generator seeded from the operating system's CSPRNG unless one is given (tests).
    """
    norm = l2_norm(update)
    if not settings.enabled:
        return dict(update), norm
    if generator is None:
        generator = torch.Generator().manual_seed(secrets.randbits(63))
    scale = min(1.0, settings.clip / norm) if norm > 0 else 1.0
    std = settings.noise_std(clients_per_round, secure)
    out = {}
    for name, tensor in update.items():
        work = torch.promote_types(tensor.dtype, torch.float32)  # fp32 noise for fp32 tensors, fp64 for fp64
        noise = torch.randn(tensor.shape, generator=generator, dtype=work).to(tensor.device) * std
        out[name] = (tensor.detach().to(work) * scale + noise).to(tensor.dtype)
    return out, norm


def summed_noise_multiplier(settings: DPSettings, sampled: int, summed: int, secure: bool) -> float:
    """The noise multiplier the round's aggregate actually carries. Under secure aggregation each of the
    ``sampled`` clients added noise of std zC/sqrt(sampled), so the sum of the ``summed`` survivors carries
    zC·sqrt(summed/sampled): the multiplier is z·sqrt(summed/sampled), below z whenever a client dropped. Without
    secure aggregation every client added the full zC, and z is what one client's update carries."""
    if not secure:
        return settings.noise_multiplier
    if not 0 < summed <= sampled:
        raise ValueError(f"{summed} summed clients of {sampled} sampled")
    return settings.noise_multiplier * math.sqrt(summed / sampled)


class PrivacyLedger:
    """The (epsilon, delta) spent so far: Opacus's RDP accountant over the rounds that were applied, each with the
    noise multiplier its aggregate carried."""

    def __init__(self, settings: DPSettings, sample_rate: float, delta: float) -> None:
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample rate must be in (0, 1], got {sample_rate}")
        if not 0 < delta < 1:
            raise ValueError(f"dp-delta must be in (0, 1), got {delta}")
        from opacus.accountants import RDPAccountant  # 2 s to import: only runs with DP pay it

        self.settings, self.sample_rate, self.delta = settings, sample_rate, delta
        self.accountant = RDPAccountant()
        self.multipliers: list[float] = []

    @property
    def rounds(self) -> int:
        """Rounds accounted so far."""
        return len(self.multipliers)

    def step(self, noise_multiplier: float | None = None) -> float:
        """Account one more round whose aggregate carried ``noise_multiplier`` (default: the configured z);
        returns epsilon so far."""
        multiplier = self.settings.noise_multiplier if noise_multiplier is None else noise_multiplier
        if not (math.isfinite(multiplier) and multiplier > 0):
            raise ValueError(f"a round's noise multiplier must be positive and finite, got {multiplier}")
        self.accountant.step(noise_multiplier=multiplier, sample_rate=self.sample_rate)
        self.multipliers.append(multiplier)
        return self.epsilon()

    def epsilon(self) -> float:
        """Epsilon at ``delta`` after the rounds so far (infinite without noise, zero before any round)."""
        if not self.rounds:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.delta))
