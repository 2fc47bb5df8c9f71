"""What a client keeps between rounds in its Flower node state: the error-feedback residual and the global state.

Flower keeps ``context.state`` per node for the whole run, in simulation and on a SuperNode alike.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

RESIDUAL = "ef-residual"
GLOBAL_STATE = "global-state"
GLOBAL_VERSION = "global-state-version"


def load_tensors(state: RecordDict, key: str) -> dict[str, torch.Tensor] | None:
    """Tensors stored under ``key`` as fp32, or None."""
    if key not in state:
        return None
    return {name: t.to(torch.float32) for name, t in state[key].to_torch_state_dict().items()}


def save_tensors(state: RecordDict, key: str, tensors: dict[str, torch.Tensor]) -> None:
    """Store ``tensors`` under ``key`` (replacing what was there)."""
    state[key] = ArrayRecord(torch_state_dict={name: t.detach().contiguous() for name, t in tensors.items()})


def drop(state: RecordDict, *keys: str) -> None:
    """Forget ``keys`` if present."""
    for key in keys:
        if key in state:
            del state[key]


def load_global(state: RecordDict) -> tuple[dict[str, torch.Tensor] | None, int | None]:
    """The global state this node holds and its version, or (None, None)."""
    tensors = load_tensors(state, GLOBAL_STATE)
    if tensors is None or GLOBAL_VERSION not in state:
        return None, None
    return tensors, int(state[GLOBAL_VERSION]["version"])


def save_global(state: RecordDict, tensors: dict[str, torch.Tensor], version: int) -> None:
    """Keep the rebuilt global state and its version for the next compressed downlink."""
    save_tensors(state, GLOBAL_STATE, tensors)
    state[GLOBAL_VERSION] = ConfigRecord({"version": version})
