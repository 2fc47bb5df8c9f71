from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CompeftHeader(_message.Message):
    __slots__ = ("scope", "alpha", "density")
    class Scope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SCOPE_UNSPECIFIED: _ClassVar[CompeftHeader.Scope]
        SCOPE_GLOBAL: _ClassVar[CompeftHeader.Scope]
        SCOPE_TENSOR: _ClassVar[CompeftHeader.Scope]
    SCOPE_UNSPECIFIED: CompeftHeader.Scope
    SCOPE_GLOBAL: CompeftHeader.Scope
    SCOPE_TENSOR: CompeftHeader.Scope
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DENSITY_FIELD_NUMBER: _ClassVar[int]
    scope: CompeftHeader.Scope
    alpha: float
    density: float
    def __init__(self, scope: _Optional[_Union[CompeftHeader.Scope, str]] = ..., alpha: _Optional[float] = ..., density: _Optional[float] = ...) -> None: ...

class CompeftTensor(_message.Message):
    __slots__ = ("coding", "rice_bits", "positions", "remainders", "signs", "alpha")
    class PositionCoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        POSITION_CODING_UNSPECIFIED: _ClassVar[CompeftTensor.PositionCoding]
        POSITION_CODING_BITMAP: _ClassVar[CompeftTensor.PositionCoding]
        POSITION_CODING_RICE_GAPS: _ClassVar[CompeftTensor.PositionCoding]
    POSITION_CODING_UNSPECIFIED: CompeftTensor.PositionCoding
    POSITION_CODING_BITMAP: CompeftTensor.PositionCoding
    POSITION_CODING_RICE_GAPS: CompeftTensor.PositionCoding
    CODING_FIELD_NUMBER: _ClassVar[int]
    RICE_BITS_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    REMAINDERS_FIELD_NUMBER: _ClassVar[int]
    SIGNS_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    coding: CompeftTensor.PositionCoding
    rice_bits: int
    positions: bytes
    remainders: bytes
    signs: bytes
    alpha: float
    def __init__(self, coding: _Optional[_Union[CompeftTensor.PositionCoding, str]] = ..., rice_bits: _Optional[int] = ..., positions: _Optional[bytes] = ..., remainders: _Optional[bytes] = ..., signs: _Optional[bytes] = ..., alpha: _Optional[float] = ...) -> None: ...
