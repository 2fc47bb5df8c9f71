from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class TrainerRequest(_message.Message):
    __slots__ = ("format_version", "code_digest", "message", "context")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CODE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    code_digest: str
    message: bytes
    context: bytes
    def __init__(self, format_version: _Optional[int] = ..., code_digest: _Optional[str] = ..., message: _Optional[bytes] = ..., context: _Optional[bytes] = ...) -> None: ...

class TrainerReply(_message.Message):
    __slots__ = ("format_version", "message", "context", "error", "refused")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    message: bytes
    context: bytes
    error: str
    refused: bool
    def __init__(self, format_version: _Optional[int] = ..., message: _Optional[bytes] = ..., context: _Optional[bytes] = ..., error: _Optional[str] = ..., refused: _Optional[bool] = ...) -> None: ...
