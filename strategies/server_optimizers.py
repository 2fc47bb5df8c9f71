"""Server optimisers (Reddi et al. 2021, "Adaptive Federated Optimization"; Hsu et al. 2019 for FedAvgM).

The coordinator reads the round's aggregate, the mean client delta ``Δ``, as a pseudo-gradient step and moves the
global state by an optimiser's step instead of by ``Δ`` itself:

- ``fedavgm``:  ``u ← momentum·u + Δ``;  step ``lr·u``  (heavy-ball momentum; ``u`` starts at 0)
- ``fedadam``:  ``m ← β1·m + (1−β1)·Δ``, ``v ← β2·v + (1−β2)·Δ²``;  step ``lr_t·m / (√v + τ)`` with
  ``lr_t = lr·√(1−β2^(t+1)) / (1−β1^(t+1))`` at the t-th step (the bias correction as Flower's FedAdam writes it)
- ``fedyogi``:  as FedAdam but ``v ← v − (1−β2)·Δ²·sign(v − Δ²)`` and ``lr_t = lr``
- ``fedadagrad``: as FedAdam but ``v ← v + Δ²`` and ``lr_t = lr`` (Flower's FedAdagrad fixes β1 = 0)

Moments are per entry, kept in fp32 on the delta's device, and checkpointed with the coordinator state, so a
resumed run continues bit for bit (Flower's FedOpt strategies keep them in memory only). ``none`` is plain FedAvg.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from strategies.settings import KeyedSettings, setting

Tensors = dict[str, torch.Tensor]
SERVER_OPTIMIZERS = ("none", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
# Flower's defaults for the server learning rate (eta), used when server-lr is 0.
DEFAULT_LR = {"none": 1.0, "fedavgm": 1.0, "fedadam": 0.1, "fedyogi": 0.01, "fedadagrad": 0.1}


@dataclass(frozen=True)
class ServerOptimizerSettings(KeyedSettings):
    """Which server optimiser and its hyper-parameters (``lr`` 0: Flower's default for that optimiser)."""

    name: str = setting("server-optimizer", "none", "`fedavgm`, `fedadam`, `fedyogi` or `fedadagrad` (Reddi et al. "
                        "2021); `none`: the mean delta itself")
    lr: float = setting("server-lr", 0.0, "server learning rate (0: Flower's default, 1.0 for FedAvgM, 0.1 FedAdam "
                        "and FedAdagrad, 0.01 FedYogi)")
    momentum: float = setting("server-momentum", 0.9, "FedAvgM's momentum")
    beta1: float = setting("server-beta1", 0.9, "first-moment decay (FedAdam, FedYogi, FedAdagrad)")
    beta2: float = setting("server-beta2", 0.99, "second-moment decay (FedAdam, FedYogi)")
    tau: float = setting("server-tau", 1e-3, "adaptivity: added to √v in the step's denominator")

    def __post_init__(self) -> None:
        if self.name not in SERVER_OPTIMIZERS:
            raise ValueError(f"unknown server-optimizer '{self.name}' (choose from {', '.join(SERVER_OPTIMIZERS)})")
        if not (math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"server-lr must be >= 0 and finite (0: the optimiser's default), got {self.lr}")
        for key, value in (("server-momentum", self.momentum), ("server-beta1", self.beta1),
                           ("server-beta2", self.beta2)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {value}")
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"server-tau must be positive, got {self.tau}")

    @property
    def enabled(self) -> bool:
        """Whether the coordinator steps by an optimiser rather than by the mean delta."""
        return self.name != "none"

    @property
    def effective_lr(self) -> float:
        """The server learning rate in force."""
        return self.lr or DEFAULT_LR[self.name]


class ServerOptimizer:
    """One run's server optimiser: turns each round's mean delta into the step applied to the global state."""

    def __init__(self, settings: ServerOptimizerSettings) -> None:
        self.settings = settings
        self.steps = 0
        self.moments: dict[str, Tensors] = {}  # "m", "u", "v": per-entry state by tensor name

    def step(self, delta: Tensors) -> Tensors:
        """The server step for this round's mean ``delta`` (moments advance); ValueError if the tensors differ
        from earlier rounds'."""
        for moments in self.moments.values():
            if {n: tuple(t.shape) for n, t in moments.items()} != {n: tuple(t.shape) for n, t in delta.items()}:
                raise ValueError("the round's aggregate has other tensors than the server optimiser's moments")
        if not self.settings.enabled:
            return delta
        self.steps += 1
        return _STEPS[self.settings.name](self, {n: t.to(torch.float32) for n, t in delta.items()})

    def _moment(self, key: str, like: Tensors) -> Tensors:
        return self.moments.setdefault(key, {n: torch.zeros_like(t) for n, t in like.items()})

    def state_dict(self) -> dict[str, Tensors]:
        """The moments, for the checkpoint."""
        return {key: dict(tensors) for key, tensors in self.moments.items()}

    def load_state_dict(self, moments: dict[str, Tensors], steps: int) -> None:
        """Restore checkpointed moments and the step count."""
        self.moments = {key: dict(tensors) for key, tensors in moments.items()}
        self.steps = steps


def _fedavgm(opt: ServerOptimizer, delta: Tensors) -> Tensors:
    s = opt.settings
    velocity = opt._moment("u", delta)
    for name, d in delta.items():
        velocity[name] = s.momentum * velocity[name] + d
    return {name: s.effective_lr * u for name, u in velocity.items()}


def _first_moment(opt: ServerOptimizer, delta: Tensors) -> Tensors:
    m = opt._moment("m", delta)
    for name, d in delta.items():
        m[name] = opt.settings.beta1 * m[name] + (1.0 - opt.settings.beta1) * d
    return m


def _adaptive_step(opt: ServerOptimizer, m: Tensors, v: Tensors, lr: float) -> Tensors:
    return {name: lr * m[name] / (torch.sqrt(v[name]) + opt.settings.tau) for name in m}


def _fedadam(opt: ServerOptimizer, delta: Tensors) -> Tensors:
    s, t = opt.settings, opt.steps
    m, v = _first_moment(opt, delta), opt._moment("v", delta)
    for name, d in delta.items():
        v[name] = s.beta2 * v[name] + (1.0 - s.beta2) * d * d
    lr = s.effective_lr * math.sqrt(1.0 - s.beta2 ** (t + 1)) / (1.0 - s.beta1 ** (t + 1))
    return _adaptive_step(opt, m, v, lr)


def _fedyogi(opt: ServerOptimizer, delta: Tensors) -> Tensors:
    s = opt.settings
    m, v = _first_moment(opt, delta), opt._moment("v", delta)
    for name, d in delta.items():
        squared = d * d
        v[name] = v[name] - (1.0 - s.beta2) * squared * torch.sign(v[name] - squared)
    return _adaptive_step(opt, m, v, s.effective_lr)


def _fedadagrad(opt: ServerOptimizer, delta: Tensors) -> Tensors:
    m, v = _first_moment(opt, delta), opt._moment("v", delta)
    for name, d in delta.items():
        v[name] = v[name] + d * d
    return _adaptive_step(opt, m, v, opt.settings.effective_lr)


_STEPS = {"fedavgm": _fedavgm, "fedadam": _fedadam, "fedyogi": _fedyogi, "fedadagrad": _fedadagrad}
