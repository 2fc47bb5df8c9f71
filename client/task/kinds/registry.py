"""Task kinds by name: the only place that maps ``TaskSpec.kind`` to code."""

from __future__ import annotations

from client.task.data import parse_columns
from client.task.kinds.base import TaskKind
from client.task.kinds.encoder_classification import EncoderClassification
from client.task.kinds.prompt_classification import PromptClassification
from client.task.kinds.sft import SFT
from client.task.spec import TaskSpec

KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (SFT(), PromptClassification(), EncoderClassification())}


def kind_of(name: str) -> TaskKind:
    """The task kind called ``name``; ValueError naming the known kinds."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"task kind '{name}' is not one of {', '.join(KINDS)}") from None


def check_spec(spec: TaskSpec) -> TaskSpec:
    """``spec`` when its kind exists and its ``data-columns`` name that kind's roles; ValueError otherwise."""
    parse_columns(spec.data_columns, kind_of(spec.kind).column_roles)
    return spec
