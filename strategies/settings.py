"""Settings declared once: each field of a settings dataclass names its run-config key and a line of help in its
metadata (PEFT's ``field(metadata={"help": ...})`` shape), and checks its range in ``__post_init__``. The
defaults, the typed reading of a run config, the ConfigRecord round trip and the manual's key tables
(docs/run-config.md) are derived from those declarations."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Self

Scalar = str | int | float | bool


def setting(key: str, default: Scalar, help: str, *, preset: bool = False) -> Any:
    """A settings field: its run-config ``key``, ``default`` and ``help``; ``preset``: "" / 0 take the preset's
    value."""
    return dataclasses.field(default=default, metadata={"key": key, "help": help, "preset": preset})


def typed(key: str, default: Scalar | bytes, value: object, source: str = "run-config key") -> Scalar:
    """``value`` as the type of ``default`` (an int where a float is expected is widened); ValueError naming
    ``key`` (a ``source`` key: the run config's, or a message's) otherwise."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value  # type: ignore[arg-type]
    elif isinstance(default, bytes):
        ok = isinstance(value, bytes)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"{source} '{key}' expects {type(default).__name__}, got {value!r:.80}")  # a long value: cut
    return value  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class KeyedSettings:
    """Base of a settings dataclass whose fields are declared with ``setting``."""

    @classmethod
    def keyed_fields(cls) -> list[dataclasses.Field]:
        """The fields that carry a run-config key, in declaration order."""
        return [f for f in dataclasses.fields(cls) if "key" in f.metadata]

    @classmethod
    def defaults(cls) -> dict[str, Scalar]:
        """Each key's default."""
        return {f.metadata["key"]: f.default for f in cls.keyed_fields()}

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each key's help line."""
        return {f.metadata["key"]: f.metadata["help"] for f in cls.keyed_fields()}

    @classmethod
    def preset_keys(cls) -> tuple[str, ...]:
        """Keys whose "" / 0 means "the preset decides"."""
        return tuple(f.metadata["key"] for f in cls.keyed_fields() if f.metadata["preset"])

    @classmethod
    def from_values(cls, values: Mapping[str, object], prefix: str = "", **overrides: Any) -> Self:
        """Read the fields from ``values`` by key (a missing key takes its default), typed and checked;
        ``overrides`` replace fields by name. ValueError names the first bad key or value."""
        chosen = {}
        for f in cls.keyed_fields():
            key = prefix + f.metadata["key"]
            chosen[f.name] = typed(key, f.default, values.get(key, f.default))
        return cls(**{**chosen, **overrides})

    def to_record(self, prefix: str = "") -> dict[str, Scalar]:
        """Flat ConfigRecord entries, keyed as in the run config (optionally prefixed)."""
        return {prefix + f.metadata["key"]: getattr(self, f.name) for f in self.keyed_fields()}

    @classmethod
    def from_record(cls, record: Mapping[str, object], prefix: str = "") -> Self:
        """Inverse of ``to_record``; ValueError naming a missing or mistyped entry."""
        missing = [prefix + f.metadata["key"] for f in cls.keyed_fields() if prefix + f.metadata["key"] not in record]
        if missing:
            raise ValueError(f"settings lack {missing[0]!r}")
        return cls.from_values(record, prefix)
