"""PEFT adapter families by name: one table from ``adapter=`` to the PEFT config class and how the run config's
adapter keys (``lora-r``, ``lora-alpha``, ``lora-dropout``, ``lora-targets``) map onto its options.

What trains is what has ``requires_grad`` after PEFT wraps the model (``trainable_names``): VeRA's and RandLoRA's
shared random projections and ShiRA's sparse index sets are drawn from the run's seed by every party and never
sent (``save_projection=False``: the exported adapter rebuilds them from the same seed when loaded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # peft and torch load only when a model is wrapped: the run config is checked without them
    import torch
    from peft import PeftModel
    from torch import nn


@dataclass(frozen=True)
class AdapterSettings:
    """Adapter options shared by the families: rank, scaling alpha, dropout and the module names to adapt."""

    r: int
    alpha: int
    dropout: float
    targets: tuple[str, ...]


@dataclass(frozen=True)
class AdapterFamily:
    """One ``adapter=`` value: PEFT's config class (by name), its options from the run's settings, the run's seed
    and the modules trained in full, and a line of help."""

    config_class: str
    options: Callable[[AdapterSettings, int, list[str] | None], dict[str, object]]
    help: str


def _lora(s: AdapterSettings, full: list[str] | None, **extra: object) -> dict[str, object]:
    return {"r": s.r, "lora_alpha": s.alpha, "lora_dropout": s.dropout, "target_modules": list(s.targets),
            "modules_to_save": full, **extra}


ADAPTERS: dict[str, AdapterFamily] = {
    "lora": AdapterFamily("LoraConfig", lambda s, seed, full: _lora(s, full),
                          "LoRA (Hu et al.): B·A of rank r, scaled alpha/r"),
    "dora": AdapterFamily("LoraConfig", lambda s, seed, full: _lora(s, full, use_dora=True),
                          "DoRA: LoRA on the direction, a trained magnitude per output"),
    "loha": AdapterFamily("LoHaConfig", lambda s, seed, full: {
        "r": s.r, "alpha": s.alpha, "rank_dropout": s.dropout, "target_modules": list(s.targets),
        "modules_to_save": full}, "LoHa (FedPara): Hadamard product of two rank-r factorisations"),
    "lokr": AdapterFamily("LoKrConfig", lambda s, seed, full: {
        "r": s.r, "alpha": s.alpha, "rank_dropout": s.dropout, "target_modules": list(s.targets),
        "modules_to_save": full}, "LoKr: Kronecker product of a small and a low-rank factor"),
    "vera": AdapterFamily("VeraConfig", lambda s, seed, full: {
        "r": s.r, "projection_prng_key": seed, "save_projection": False, "vera_dropout": s.dropout,
        "target_modules": list(s.targets), "modules_to_save": full},
        "VeRA: shared frozen random A, B (from the seed); only scaling vectors train"),
    "randlora": AdapterFamily("RandLoraConfig", lambda s, seed, full: {
        "r": s.r, "randlora_alpha": s.alpha, "projection_prng_key": seed, "save_projection": False,
        "randlora_dropout": s.dropout, "target_modules": list(s.targets), "modules_to_save": full},
        "RandLoRA: full-rank sums of shared frozen random bases (from the seed), trained scalings"),
    "miss": AdapterFamily("MissConfig", lambda s, seed, full: {
        "r": s.r, "miss_dropout": s.dropout, "target_modules": list(s.targets), "modules_to_save": full},
        "MiSS (Bone): one shared trained block per layer, r wide"),
    "shira": AdapterFamily("ShiraConfig", lambda s, seed, full: {
        "r": s.r, "mask_type": "random", "random_seed": seed, "target_modules": list(s.targets),
        "modules_to_save": full},
        "ShiRA: sparse high-rank update on a random mask (from the seed) with r·(m+n) entries"),
}


def check_adapter(name: str) -> None:
    """ValueError naming the known adapters when ``name`` is not one of them."""
    if name not in ADAPTERS:
        raise ValueError(f"adapter '{name}' is not one of {', '.join(ADAPTERS)}")


def wrap_with_adapter(base: nn.Module, adapter: str, settings: AdapterSettings, *, seed: int,
                      modules_to_save: list[str] | None = None) -> PeftModel:
    """Add a fresh ``adapter`` (initialised from ``seed``) to ``base``; only its weights (and ``modules_to_save``)
    train. ValueError naming the adapter when PEFT cannot wrap the target modules."""
    import peft
    import torch

    check_adapter(adapter)
    family = ADAPTERS[adapter]
    config = getattr(peft, family.config_class)(**family.options(settings, seed, modules_to_save))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return peft.get_peft_model(base, config)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"cannot add a {adapter} adapter to target modules {list(settings.targets)}: "
                             f"{exc}") from exc


def wrap_with_lora(base: nn.Module, lora: AdapterSettings, *, seed: int, modules_to_save: list[str] | None = None
                   ) -> PeftModel:
    """A fresh LoRA adapter on ``base`` (``wrap_with_adapter`` with ``lora``)."""
    return wrap_with_adapter(base, "lora", lora, seed=seed, modules_to_save=modules_to_save)


def trainable_names(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """The keys of ``state`` (a PEFT adapter state dict of ``model``) whose tensors are trainable parameters:
    what a client sends. Frozen entries PEFT also saves (seeded projections, sparse index sets) are left out."""
    trainable = {p.data_ptr() for p in model.parameters() if p.requires_grad}
    return [name for name, tensor in state.items() if tensor.data_ptr() in trainable]
