"""Kill a simulation mid-run and resume it: the pieces the resume tests and the robustness benchmark share (a
run config whose resumed run must be bit-identical, the CLI command lines, and a SIGKILL on the first checkpoint)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from server import checkpoint

# Compressed both ways, with error feedback: a resumed run needs the coordinator's checkpoint (global state, downlink
# history) and each client's residual from before the round it runs again, which the nodes keep on disk under the
# federation's id (client/residual_store.py), to reproduce the uninterrupted run bit for bit. The coordinator scores
# 50 held-out reviews, not the preset's 200: it scores the base model and every round of every run, and what a
# resume must reproduce is the adapter, bit for bit.
RESUME_RUN: dict[str, object] = {
    "preset": "encoder", "num-clients": 2, "num-server-rounds": 3, "local-steps": 4, "partitioner": "iid",
    "heldout": 50, "codec": "compeft", "compeft-density": 0.2, "error-feedback": True, "downlink-codec": "compeft",
    "downlink-density": 0.5}


def child_env() -> dict[str, str]:
    """This environment, offline and quiet, with this interpreter's directory first on PATH (Flower starts its
    processes by name)."""
    return {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1"}


def simulate_command(*args: str) -> list[str]:
    """``fedsqueeze simulate`` (two clients at once) with ``args``, run by this interpreter."""
    return [sys.executable, "-m", "simulations.cli", "simulate", "--max-parallel", "2", *args]


def run_config_text(config: dict[str, object]) -> str:
    """``config`` as a ``--run-config`` string (strings quoted, booleans lower-case)."""
    return " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else str(v).lower()}" for k, v in config.items())


def adapter_tensors(out_dir: Path) -> dict[str, torch.Tensor]:
    """The exported adapter's tensors of the run in ``out_dir``."""
    return load_file(str(out_dir / "adapter" / "adapter_model.safetensors"))


def kill_after_checkpoint(proc: subprocess.Popen, out_dir: Path, round_id: int, timeout_s: float) -> int:
    """SIGKILL ``proc``'s process group once the checkpoint of ``round_id`` is on disk; returns the round it had
    reached. RuntimeError if the run ends first, TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    manifest = out_dir / checkpoint.DIRECTORY / checkpoint.MANIFEST
    while time.monotonic() < deadline:
        if manifest.exists():
            reached = json.loads(manifest.read_text())["round"]
            if reached >= round_id:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return int(reached)
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended (rc {proc.returncode}) before it could be killed")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError(f"no checkpoint of round {round_id} after {timeout_s} s")
