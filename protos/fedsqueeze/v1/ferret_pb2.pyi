from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class FerretHeader(_message.Message):
    __slots__ = ("seed", "dim", "block_size", "entries", "layout_sha256", "coefficients")
    SEED_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_SHA256_FIELD_NUMBER: _ClassVar[int]
    COEFFICIENTS_FIELD_NUMBER: _ClassVar[int]
    seed: int
    dim: int
    block_size: int
    entries: int
    layout_sha256: bytes
    coefficients: bytes
    def __init__(self, seed: _Optional[int] = ..., dim: _Optional[int] = ..., block_size: _Optional[int] = ..., entries: _Optional[int] = ..., layout_sha256: _Optional[bytes] = ..., coefficients: _Optional[bytes] = ...) -> None: ...
