"""The ``data-columns`` key: which of the user's columns play which role in a task kind. Checked when the run
config is read, before any data or model loads."""

from __future__ import annotations

# Instruction data: Alpaca (instruction, input, output), chat (messages), TRL's prompt/completion, and the
# category that domain partitioners split by.
SFT_COLUMN_ROLES = ("instruction", "input", "output", "messages", "prompt", "completion", "category")
# Classification: the text and its label.
LABELLED_TEXT_COLUMN_ROLES = ("text", "label")


def parse_columns(spec: str, roles: tuple[str, ...]) -> dict[str, str]:
    """``"role=column,role=column"`` (the ``data-columns`` key) as {role: column}; ValueError naming an entry that
    is not ROLE=COLUMN or a role not in ``roles``."""
    mapping: dict[str, str] = {}
    for item in (part.strip() for part in spec.split(",") if part.strip()):
        role, sep, column = (x.strip() for x in item.partition("="))
        if not sep or not column:
            raise ValueError(f"data-columns entry '{item}' is not ROLE=COLUMN")
        if role not in roles:
            raise ValueError(f"data-columns role '{role}' is not one of {', '.join(roles)}")
        mapping[role] = column
    return mapping
