from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TensorEntry(_message.Message):
    __slots__ = ("name", "shape", "dtype", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class EncodedUpdate(_message.Message):
    __slots__ = ("format_version", "codec", "codec_version", "round", "tensors", "codec_header", "tensor_names_zlib", "checksum")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    CODEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    CODEC_HEADER_FIELD_NUMBER: _ClassVar[int]
    TENSOR_NAMES_ZLIB_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    codec: str
    codec_version: int
    round: int
    tensors: _containers.RepeatedCompositeFieldContainer[TensorEntry]
    codec_header: bytes
    tensor_names_zlib: bytes
    checksum: int
    def __init__(self, format_version: _Optional[int] = ..., codec: _Optional[str] = ..., codec_version: _Optional[int] = ..., round: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[TensorEntry, _Mapping]]] = ..., codec_header: _Optional[bytes] = ..., tensor_names_zlib: _Optional[bytes] = ..., checksum: _Optional[int] = ...) -> None: ...
