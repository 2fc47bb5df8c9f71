"""fedsqueeze's own lm-evaluation-harness tasks: the YAML configs in this folder (found by lm-eval's
``TaskManager(include_path=TASKS_DIR)``) and the Python that builds their items offline."""

from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).parent
