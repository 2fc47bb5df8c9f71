"""Where a node keeps what must outlive one Flower run: its error-feedback residuals (client/residual_store.py) and
the secure-aggregation setups it took part in (client/setup_ledger.py).

A deployed node names the folder in its node config (``fedsqueeze node --state-dir``, default
``$XDG_STATE_HOME/fedsqueeze/node-<partition>``); simulated nodes get one folder per partition under the directory
``FEDSQUEEZE_NODE_STATE_DIR`` names (``fedsqueeze simulate`` sets it to ``OUT/node-state``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

STATE_DIR_KEY = "state-dir"  # node config: where this node keeps what must outlive a Flower run
STATE_DIR_ENV = "FEDSQUEEZE_NODE_STATE_DIR"  # the same for simulated nodes (one folder per partition under it)


def state_root(node_config: Mapping[str, object], partition_id: int,
               environ: Mapping[str, str] = os.environ) -> Path | None:
    """This node's state folder, or None when it keeps no state on disk."""
    if node_config.get(STATE_DIR_KEY):
        return Path(str(node_config[STATE_DIR_KEY])).expanduser()
    if environ.get(STATE_DIR_ENV):
        return Path(environ[STATE_DIR_ENV]).expanduser() / f"partition-{partition_id}"
    return None
