"""Parse ``--run-config "key=value ..."`` the way users type it (TOML values, bare strings allowed)."""

from __future__ import annotations

import shlex
import tomllib


def parse_run_config(text: str | None) -> dict[str, str | int | float | bool]:
    """``"num-clients=4 codec=dense lr=1e-3"`` -> typed dict; ValueError names a malformed pair."""
    config: dict[str, str | int | float | bool] = {}
    if not text:
        return config
    try:
        parts = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot split --run-config '{text}': {exc}") from exc
    for part in parts:
        key, sep, raw = part.partition("=")
        if not sep or not key:
            raise ValueError(f"run-config entry '{part}' is not key=value")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word such as codec=dense
        if isinstance(value, list | dict):
            raise ValueError(f"run-config value for '{key}' must be a scalar, got {raw}")
        config[key] = value
    return config
