"""A test-only audit trail: with FEDSQUEEZE_SECAGG_AUDIT_DIR set, parties write their plaintext ring words and
the coordinator its unmasked sums there, so a test can check the sum exactly. It defeats secure aggregation's
purpose, so it is off unless that variable is set, and it logs a warning when on."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

AUDIT_ENV = "FEDSQUEEZE_SECAGG_AUDIT_DIR"
log = logging.getLogger("fedsqueeze")


def record(name: str, arrays: list[np.ndarray], **extra: np.ndarray) -> None:
    """Write ``arrays`` (and ``extra``) to ``$FEDSQUEEZE_SECAGG_AUDIT_DIR/<name>.npz`` when auditing is on."""
    where = os.environ.get(AUDIT_ENV)
    if not where:
        return
    log.warning("secure-aggregation audit is on (%s): plaintext words are written to %s", AUDIT_ENV, where)
    Path(where).mkdir(parents=True, exist_ok=True)
    np.savez(Path(where) / f"{name}.npz", *arrays, **extra)
