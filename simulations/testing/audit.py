"""Reading secure aggregation's test-only audit trail (``strategies/secagg/audit.py`` writes it when
``FEDSQUEEZE_SECAGG_AUDIT_DIR`` is set): does the coordinator's unmasked sum equal the plain sum of the survivors'
ring words, word for word?"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def audited_sums_are_exact(audit_dir: Path, round_id: int) -> list[int]:
    """The unmasked sum the coordinator got equals the plain sum of the survivors' words (integer equality,
    asserted); returns the survivors."""
    summed = np.load(audit_dir / f"round{round_id}-sum.npz")
    survivors = [int(s) for s in summed["survivors"]]
    parties = [np.load(audit_dir / f"round{round_id}-party{node}.npz") for node in survivors]
    for index in range(len(summed.files) - 1):
        key = f"arr_{index}"
        assert np.array_equal(summed[key], sum(p[key] for p in parties)), f"segment {index} differs"
    return survivors
