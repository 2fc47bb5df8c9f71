"""Private keys on disk: created readable by their owner only, from the first byte."""

from __future__ import annotations

import os
from pathlib import Path


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file at ``path`` with mode 0600 from its creation (no umask window), replacing what
    is there; a symlink at ``path`` is removed, never followed (O_EXCL | O_NOFOLLOW)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    path.chmod(0o600)  # in case a filesystem widened it
