"""Regenerate the Python modules for the ``.proto`` files under protos/ (grpcio-tools)."""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    """Every .proto under ``root``, sorted, relative to it."""
    return sorted(p.relative_to(root) for p in root.rglob("*.proto"))


def generate(out_dir: Path, root: Path = PROTO_ROOT) -> None:
    """Write ``*_pb2.py`` and ``*_pb2.pyi`` for every .proto under ``root`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{root}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            *[str(p) for p in proto_files(root)]]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {proto_files(root)}")


if __name__ == "__main__":
    generate(PROTO_ROOT)
    sys.exit(0)
