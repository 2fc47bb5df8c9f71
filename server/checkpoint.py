"""Coordinator checkpoints: after every complete round, what the coordinator needs to go on as if it had never
stopped (Flower leaves this to the user).

A checkpoint is two files in ``<out-dir>/checkpoint/``: ``round-NNNNNN.safetensors`` (the global state, the
downlink's error-feedback residual and payload history, the previous aggregate that secure ComPEFT rounds draw
their shared support from) and ``checkpoint.json`` (round, run config, the client sampler's RNG state, privacy
rounds spent, byte totals, metric rows, and the SHA-256 of the tensor file). The tensor file is written under a
new name first, then the manifest is renamed into place: a crash at any moment leaves the previous checkpoint
whole, and a damaged file is refused by its digest rather than half-loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from server.outputs import NODE_STATE, write_json_atomic

DIRECTORY = "checkpoint"
MANIFEST = "checkpoint.json"
FORMAT = 1
# The manifest keys ``load`` cannot do without (later additions are read with a default).
REQUIRED_KEYS = ("round", "tensors", "tensors_sha256", "run_config", "version", "has_residual", "has_previous",
                 "sampler_state", "dp_rounds", "totals", "base", "current", "rows", "wall_s")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used to resume (damaged, another format, or another run's)."""


@dataclass
class Checkpoint:
    """Everything the round loop carries from one round to the next."""

    round: int
    run_config: dict[str, Any]
    state: dict[str, torch.Tensor]
    version: int
    residual: dict[str, torch.Tensor] | None = None
    history: dict[int, bytes] = field(default_factory=dict)
    previous_update: dict[str, torch.Tensor] | None = None
    sampler_state: Any = None
    dp_rounds: int = 0
    dp_multipliers: list[float] = field(default_factory=list)  # each accounted round's noise multiplier
    totals: dict[str, int] = field(default_factory=dict)
    base: dict[str, float] = field(default_factory=dict)
    current: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    optimizer_moments: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # "m", "v", "u" by tensor
    optimizer_steps: int = 0
    federation_id: str = ""  # names this federation's error-feedback residuals on the nodes (kept across resumes)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    """Tuples (random.Random.getstate) as lists, recursively."""
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _tupled(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value


def save(out_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically under ``out_dir``; returns the manifest's path."""
    directory = out_dir / DIRECTORY
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    groups = [("state", checkpoint.state), ("residual", checkpoint.residual or {}),
              ("previous", checkpoint.previous_update or {}),
              *((f"optimizer-{key}", moments) for key, moments in checkpoint.optimizer_moments.items())]
    for prefix, group in groups:
        for name, tensor in group.items():
            tensors[f"{prefix}/{name}"] = tensor.detach().to("cpu").contiguous().clone()
    for version, payload in checkpoint.history.items():
        tensors[f"history/{version}"] = torch.frombuffer(bytearray(payload), dtype=torch.uint8).clone()
    name = f"round-{checkpoint.round:06d}.safetensors"
    tmp = directory / f".{name}.tmp"
    save_file(tensors, str(tmp))
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, directory / name)
    manifest = {
        "format": FORMAT, "round": checkpoint.round, "tensors": name, "tensors_sha256": _sha256(directory / name),
        "run_config": checkpoint.run_config, "version": checkpoint.version,
        "has_residual": checkpoint.residual is not None, "has_previous": checkpoint.previous_update is not None,
        "sampler_state": _jsonable(checkpoint.sampler_state), "dp_rounds": checkpoint.dp_rounds,
        "dp_multipliers": checkpoint.dp_multipliers,
        "totals": checkpoint.totals, "base": checkpoint.base, "current": checkpoint.current,
        "rows": checkpoint.rows, "wall_s": checkpoint.wall_s,
        "optimizer_moments": sorted(checkpoint.optimizer_moments), "optimizer_steps": checkpoint.optimizer_steps,
        "federation_id": checkpoint.federation_id,
    }
    write_json_atomic(directory / MANIFEST, manifest)
    for stale in directory.glob("round-*.safetensors"):
        if stale.name != name:
            stale.unlink(missing_ok=True)
    return directory / MANIFEST


def discard(out_dir: Path) -> None:
    """Remove what a run being overwritten in ``out_dir`` could be resumed from: its checkpoint (the manifest
    first, so that a crash midway leaves nothing to resume rather than another run's state), then the residuals
    its simulated clients kept there."""
    directory = out_dir / DIRECTORY
    (directory / MANIFEST).unlink(missing_ok=True)
    for tensors in directory.glob("round-*.safetensors"):
        tensors.unlink(missing_ok=True)
    shutil.rmtree(out_dir / NODE_STATE, ignore_errors=True)


def load(out_dir: Path) -> Checkpoint | None:
    """The last complete round's checkpoint under ``out_dir``, None if there is none; CheckpointError names what
    is wrong with a damaged one."""
    directory = out_dir / DIRECTORY
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = _read_manifest(path)
        tensor_path = directory / str(manifest["tensors"])
        if not tensor_path.is_file():
            raise CheckpointError(f"{path} names {tensor_path.name}, which is missing")
        if _sha256(tensor_path) != manifest["tensors_sha256"]:
            raise CheckpointError(f"{tensor_path} does not match the SHA-256 in {path} (damaged file)")
        tensors = load_file(str(tensor_path))
    except CheckpointError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot read the checkpoint in {directory}: {exc}") from exc

    def group(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + 1:]: t for k, t in tensors.items() if k.startswith(prefix + "/")}

    try:
        return _checkpoint(manifest, group)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: a value is not what a checkpoint holds ({type(exc).__name__}: {exc})"
                              ) from exc


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path`` as a dict of this format with every required key; CheckpointError naming what is
    wrong (not JSON, not an object, another format, a missing key)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}): damaged checkpoint") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path} holds a JSON {type(manifest).__name__}, not a checkpoint manifest (an object)")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {manifest.get('format')!r}, this fedsqueeze reads {FORMAT}")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise CheckpointError(f"{path} lacks the key '{missing[0]}': damaged or not a fedsqueeze checkpoint")
    return manifest


def _checkpoint(manifest: dict[str, Any], group: Callable[[str], dict[str, torch.Tensor]]) -> Checkpoint:
    """The Checkpoint a checked manifest and its tensor groups describe."""
    return Checkpoint(
        round=int(manifest["round"]), run_config=dict(manifest["run_config"]), state=group("state"),
        version=int(manifest["version"]), residual=group("residual") if manifest["has_residual"] else None,
        history={int(v): t.numpy().tobytes() for v, t in group("history").items()},
        previous_update=group("previous") if manifest["has_previous"] else None,
        sampler_state=_tupled(manifest["sampler_state"]), dp_rounds=int(manifest["dp_rounds"]),
        dp_multipliers=[float(m) for m in manifest.get("dp_multipliers", [])],
        totals=dict(manifest["totals"]), base=dict(manifest["base"]), current=dict(manifest["current"]),
        rows=list(manifest["rows"]), wall_s=float(manifest["wall_s"]),
        optimizer_moments={key: group(f"optimizer-{key}") for key in manifest.get("optimizer_moments", [])},
        optimizer_steps=int(manifest.get("optimizer_steps", 0)), federation_id=str(manifest.get("federation_id", "")))
