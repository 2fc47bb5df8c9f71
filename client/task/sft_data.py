"""Instruction data in the shapes people keep it, as conversations: Alpaca ``instruction``/``input``/``output``,
chat ``messages`` (a list of ``{role, content}``, multi-turn, an optional system turn) and TRL's
``prompt``/``completion``; from WordNet (the bundled default) or the user's files.

Every shape becomes two columns: ``messages`` (the conversation) and ``category`` (the domain non-IID
partitioners split by; "" when the data has none).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from datasets import Dataset

from client.task.columns import SFT_COLUMN_ROLES, parse_columns
from client.task.data import load_table
from client.task.wordnet import PROMPT, load_definitions

ROLES = ("system", "user", "assistant")
SHAPES = "Alpaca (instruction, output, optional input), chat (messages) or prompt/completion"


def wordnet_conversations(domains: tuple[str, ...], per_domain: int) -> Dataset:
    """WordNet definitions as single-turn conversations: "Define the word 'W' ..." -> the definition."""
    rows = load_definitions(domains, per_domain)
    messages = [[{"role": "user", "content": PROMPT.format(word=w)}, {"role": "assistant", "content": d}]
                for w, d in zip(rows["word"], rows["definition"], strict=True)]
    return Dataset.from_dict({"messages": messages, "category": rows["category"]})


def _shape(columns: set[str], names: Mapping[str, str]) -> str | None:
    if names["messages"] in columns:
        return "messages"
    if names["instruction"] in columns and names["output"] in columns:
        return "alpaca"
    if names["prompt"] in columns and names["completion"] in columns:
        return "prompt-completion"
    return None


def _turns(value: Any, default_role: str, where: str) -> list[dict[str, str]]:
    """A prompt or completion as turns: a string is one turn of ``default_role``, a list is already turns."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    return _checked_messages(value, where)


def _checked_messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: messages must be a non-empty list of {{role, content}}, got {type(value).__name__}")
    turns = []
    for turn in value:
        if not isinstance(turn, Mapping) or not isinstance(turn.get("role"), str) or \
                not isinstance(turn.get("content"), str):
            raise ValueError(f"{where}: every message needs a string 'role' and 'content', got {turn!r:.80}")
        if turn["role"] not in ROLES:
            raise ValueError(f"{where}: role '{turn['role']}' is not one of {', '.join(ROLES)}")
        turns.append({"role": turn["role"], "content": turn["content"]})
    return turns


def _conversation(row: Mapping[str, Any], shape: str, names: Mapping[str, str], where: str) -> list[dict[str, str]]:
    if shape == "messages":
        return _checked_messages(row[names["messages"]], where)
    if shape == "alpaca":
        instruction, extra = row[names["instruction"]], row.get(names["input"]) or ""
        prompt = f"{instruction}\n\n{extra}" if str(extra).strip() else str(instruction)
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(row[names["output"]])}]
    return _turns(row[names["prompt"]], "user", where) + _turns(row[names["completion"]], "assistant", where)


def user_conversations(path: str, columns: str = "") -> Dataset:
    """The user's instruction data at ``path`` (files, a ``save_to_disk`` directory or a hub id) as conversations.

    ValueError in one line when the data has none of the accepted shapes (naming its columns) or a row is
    malformed (naming the row); conversations with no assistant turn or an empty last response are refused.
    """
    table = load_table(path)
    names = {role: role for role in SFT_COLUMN_ROLES} | parse_columns(columns, SFT_COLUMN_ROLES)
    shape = _shape(set(table.column_names), names)
    if shape is None:
        raise ValueError(f"data '{path}' has columns {table.column_names}, none of the SFT shapes: {SHAPES} "
                         "(map other names with data-columns=\"instruction=COL,output=COL\")")
    conversations, categories = [], []
    for index, row in enumerate(table):
        where = f"data '{path}' row {index}"
        turns = _conversation(row, shape, names, where)
        if not any(t["role"] == "assistant" for t in turns) or not turns[-1]["content"].strip() \
                or turns[-1]["role"] != "assistant":
            raise ValueError(f"{where}: the conversation must end with a non-empty assistant turn")
        if turns[0]["role"] == "assistant":
            raise ValueError(f"{where}: the conversation starts with an assistant turn; nothing prompts it")
        conversations.append(turns)
        categories.append(str(row.get(names["category"], "") or ""))
    return Dataset.from_dict({"messages": conversations, "category": categories})
