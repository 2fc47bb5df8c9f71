"""Silence library progress bars and chatter that would drown fedsqueeze's own progress display."""

from __future__ import annotations

import os
import warnings


def quiet_libraries() -> None:
    """Turn off transformers/datasets progress bars and known-noisy warnings (idempotent)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*gguf.*", category=UserWarning)
    # PEFT 0.21 asks transformers 5.23 a deprecated question on every adapter it wraps or loads.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    # VeRA and RandLoRA: every party rebuilds the seeded projections on purpose (save_projection=False).
    warnings.filterwarnings("ignore", message=r".*(save|load) (vera|basis)_A and .*", category=UserWarning)
