"""Whether a model or data name that is not on this machine may be a Hugging Face hub id.

A name that looks like a path (``./x``, ``../x``, ``/x``, ``~/x``, or ``dir/x`` where ``dir`` exists here) is a
local path that is missing, never a hub id: otherwise a mistyped relative path would be looked up on the hub and
fail late, with a network error instead of "not found".
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_VALUES = ("1", "on", "yes", "true")  # what huggingface_hub reads as HF_HUB_OFFLINE on


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids the hub."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in OFFLINE_VALUES


def looks_like_path(name: str) -> bool:
    """Whether ``name`` reads as a local path: it starts with ``.``, ``/`` or ``~``, or its first component exists
    here (``runs/model`` beside a ``runs`` directory)."""
    if name.startswith((".", "/", "~", os.sep)):
        return True
    parts = Path(name).parts
    return len(parts) > 1 and Path(parts[0]).exists()


def may_be_hub_id(name: str) -> bool:
    """Whether ``name``, not found on this machine, may be fetched as a hub id: ``owner/name``, not path-like,
    and the hub allowed."""
    return name.count("/") == 1 and not looks_like_path(name) and not hub_offline()
