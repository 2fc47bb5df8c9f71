"""The committed generated modules match what grpcio-tools makes from the .proto files today."""

from pathlib import Path

from protos.generate import PROTO_ROOT, generate, proto_files


def test_generated_modules_are_in_sync(tmp_path: Path) -> None:
    generate(tmp_path)
    files = proto_files()
    assert files, "no .proto files found"
    for proto in files:
        for suffix in ("_pb2.py", "_pb2.pyi"):
            relative = proto.with_name(proto.stem + suffix)
            fresh = (tmp_path / relative).read_text()
            committed = (PROTO_ROOT / relative).read_text()
            assert fresh == committed, f"{relative} is stale: run python -m protos.generate"
