"""Task kinds by name: the only place that maps ``TaskSpec.kind`` to code.

A kind is registered with what the run config checks about it (its ``data-columns`` roles) and where its code
lives; the module, with torch, transformers and datasets behind it, is imported the first time the kind is used.
So ``fedsqueeze`` checks a run config before anything slow loads (as transformers' auto classes map names to
modules they import on demand)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from client.task.columns import LABELLED_TEXT_COLUMN_ROLES, SFT_COLUMN_ROLES, parse_columns

if TYPE_CHECKING:
    from client.task.kinds.base import TaskKind
    from client.task.spec import TaskSpec


@dataclass(frozen=True)
class KindEntry:
    """A registered task kind: the class implementing it (``module:Class``) and the roles ``data-columns`` may map
    to the user's column names (the class declares the same; ``kind_of`` checks that they agree)."""

    implementation: str
    column_roles: tuple[str, ...]


KINDS: dict[str, KindEntry] = {}


def register_kind(name: str, implementation: str, column_roles: tuple[str, ...]) -> None:
    """Make ``kind=name`` build ``implementation`` (``"package.module:Class"``, imported on first use)."""
    if name in KINDS:
        raise ValueError(f"task kind '{name}' is registered already")
    KINDS[name] = KindEntry(implementation, column_roles)


register_kind("sft", "client.task.kinds.sft:SFT", SFT_COLUMN_ROLES)
register_kind("prompt-classification", "client.task.kinds.prompt_classification:PromptClassification",
              LABELLED_TEXT_COLUMN_ROLES)
register_kind("encoder-classification", "client.task.kinds.encoder_classification:EncoderClassification",
              LABELLED_TEXT_COLUMN_ROLES)


def _entry(name: str) -> KindEntry:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"task kind '{name}' is not one of {', '.join(KINDS)}") from None


@cache
def kind_of(name: str) -> TaskKind:
    """The task kind called ``name`` (one instance per kind); ValueError naming the known kinds."""
    entry = _entry(name)
    module, _, class_name = entry.implementation.partition(":")
    kind = getattr(importlib.import_module(module), class_name)()
    if kind.name != name or tuple(kind.column_roles) != entry.column_roles:
        raise TypeError(f"{entry.implementation} declares kind '{kind.name}' with columns {kind.column_roles}, "
                        f"but is registered as '{name}' with {entry.column_roles}")
    return kind


def check_spec(spec: TaskSpec) -> TaskSpec:
    """``spec`` when its kind exists and its ``data-columns`` name that kind's roles; ValueError otherwise. Loads
    no kind's code."""
    parse_columns(spec.data_columns, _entry(spec.kind).column_roles)
    return spec
