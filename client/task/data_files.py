"""Why a data file could not be read, in one line: ``datasets`` wraps every parse failure in a
``DatasetGenerationError`` that names neither the file nor the line, so the file is read again (only once loading
has failed) to find the first empty file, non-UTF-8 byte or malformed JSON line."""

from __future__ import annotations

import json
from pathlib import Path


def unreadable(files: list[Path], kind: str, error: BaseException) -> str:
    """One line naming the first file in ``files`` that ``datasets`` could not read as ``kind``, and why;
    ``error`` (its innermost cause) is the fallback when no file shows a problem of its own."""
    for file in files:
        problem = file_problem(file, kind)
        if problem:
            return f"data file '{file}' {problem}"
    root = error
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    names = ", ".join(f"'{f}'" for f in files[:3]) + (" ..." if len(files) > 3 else "")
    return f"data file {names} cannot be read as {kind}: {type(root).__name__}: {root}".rstrip(": ")


def file_problem(file: Path, kind: str) -> str | None:
    """What is wrong with ``file`` as ``kind`` data ("is empty", "is not UTF-8 text ...", "line 3 is not valid
    JSON ..."), None when nothing is found."""
    raw = file.read_bytes()
    if not raw.strip():
        return "is empty"
    if kind == "parquet":
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        return f"is not UTF-8 text (line {line}, byte {exc.start}: a binary file?)"
    return _json_problem(text) if kind == "json" else None


def _json_problem(text: str) -> str | None:
    """The first malformed line of JSON text, which ``datasets`` reads as one document or as JSON lines: as JSON
    lines when one of the first two lines is an object on its own, else as a document. None when it parses."""
    try:
        json.loads(text)
        return None
    except json.JSONDecodeError as exc:
        whole = exc
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not any(isinstance(_parsed(line), dict) for _, line in lines[:2]):
        return f"line {whole.lineno} is not valid JSON ({whole.msg}, column {whole.colno})"
    for number, line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            return f"line {number} is not valid JSON ({exc.msg}, column {exc.colno})"
        if not isinstance(row, dict):
            return f"line {number} is a JSON {type(row).__name__}, not an object (one row per line)"
    return None


def _parsed(line: str) -> object:
    """``line`` parsed as JSON, None when it is not JSON by itself."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None
