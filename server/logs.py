"""fedsqueeze's own log lines ("fedsqueeze" logger) at INFO, without touching other libraries' levels."""

from __future__ import annotations

import logging
import re

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour and cursor codes (what Flower's CLI prints carries them)."""
    return _ANSI.sub("", text)


def configure_logging(level: int = logging.INFO) -> logging.Logger:
    """Give the ``fedsqueeze`` logger one plain stderr handler (idempotent) and return it."""
    logger = logging.getLogger("fedsqueeze")
    if not any(getattr(h, "_fedsqueeze", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s fedsqueeze: %(message)s", "%H:%M:%S"))
        handler._fedsqueeze = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger
