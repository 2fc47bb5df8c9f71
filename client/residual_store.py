"""Error-feedback residuals on the node's own disk, so a coordinator restart loses none of them.

A client's residual (what compression has not sent yet of its past updates) lives for one Flower run in its node
state. A coordinator that crashes and resumes from its checkpoint is a new Flower run: without this store every
client would start again from a zero residual, and the resumed run would drift from the uninterrupted one. Here each
node keeps, per federation (the coordinator names it, and a resumed run names it the same), the residual left after
each round it trained, as safetensors files only this user can read. Training round r starts from the newest
residual of a round before r: a round that is run again after a crash starts from where it started the first time.
The node keeps its last two residuals and drops any from a later round than the one it just trained (a timeline
the coordinator never checkpointed), and keeps the folders of its three most recently trained federations only.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from client.state_dir import state_root

KEEP = 2
KEEP_FEDERATIONS = 3  # a node keeps the residuals of its 3 most recent federations (a full model's each)
_NAME = re.compile(r"residual-(\d{6,})\.safetensors")
_SAFE_ID = re.compile(r"[0-9a-f]{1,64}")


def store_dir(node_config: dict, federation_id: str, partition_id: int,
              environ: dict[str, str] | os._Environ = os.environ) -> Path | None:
    """This node's residual folder for ``federation_id``, or None when the node keeps no state on disk (or the
    coordinator named no federation). ValueError for an id that is not lower-case hex (it becomes a path)."""
    if not federation_id:
        return None
    if not _SAFE_ID.fullmatch(federation_id):
        raise ValueError(f"federation id '{federation_id[:80]}' is not lower-case hex")
    root = state_root(node_config, partition_id, environ)
    return None if root is None else root / federation_id


def _saved(directory: Path) -> dict[int, Path]:
    if not directory.is_dir():
        return {}
    return {int(m.group(1)): p for p in directory.iterdir() if (m := _NAME.fullmatch(p.name))}


def load_before(directory: Path, round_id: int) -> dict[str, torch.Tensor] | None:
    """The residual left by the newest round before ``round_id``, or None (this node has not trained yet)."""
    saved = _saved(directory)
    earlier = [r for r in saved if r < round_id]
    return load_file(str(saved[max(earlier)])) if earlier else None


def save(directory: Path, round_id: int, residual: dict[str, torch.Tensor]) -> None:
    """Keep ``residual`` as the one left by round ``round_id`` (written whole or not at all), then drop all but the
    last KEEP rounds' and any from a later round."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = directory / f"residual-{round_id:06d}.safetensors"
    partial = target.with_suffix(".partial")
    save_file({name: t.detach().contiguous() for name, t in residual.items()}, str(partial))
    os.chmod(partial, 0o600)
    os.replace(partial, target)
    saved = _saved(directory)
    kept = sorted(r for r in saved if r <= round_id)[-KEEP:]
    for other, path in saved.items():
        if other not in kept:
            path.unlink(missing_ok=True)
    _drop_old_federations(directory)


def _drop_old_federations(directory: Path) -> None:
    """Remove the residual folders of all but this node's KEEP_FEDERATIONS most recently written federations."""
    siblings = [d for d in directory.parent.iterdir() if d.is_dir() and _SAFE_ID.fullmatch(d.name)]
    siblings.sort(key=lambda d: d.stat().st_mtime, reverse=True)
    for old in siblings[KEEP_FEDERATIONS:]:
        if old != directory:
            for path in old.iterdir():
                if _NAME.fullmatch(path.name) or path.suffix == ".partial":
                    path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                old.rmdir()
