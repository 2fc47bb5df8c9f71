"""Parse and check the EncodedUpdate envelope that every codec's payload travels in."""

from __future__ import annotations

import math
import zlib
from collections.abc import Collection, Mapping

import torch
from google.protobuf.message import DecodeError

from protos.fedsqueeze.v1 import update_pb2
from strategies.codecs.errors import UpdateRejected

FORMAT_VERSION = 1
DEFAULT_MAX_PAYLOAD_BYTES = 2**31 - 1

MAX_NAME_CHARS = 4096
_CHECKSUM_TAG = bytes([(8 << 3) | 5])  # field 8, wire type fixed32
Layout = dict[str, tuple[int, ...]]


def check_update(update: Mapping[str, object], *, codec: str, dtypes: Collection[torch.dtype]) -> None:
    """Raise ValueError naming the first entry an encoder cannot take: none at all, a non-tensor, a dtype outside
    ``dtypes``, or an empty tensor."""
    if not update:
        raise ValueError("update has no tensors")
    for name, tensor in update.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"update entry '{name}' is a {type(tensor).__name__}, not a tensor")
        if tensor.dtype not in dtypes:
            raise ValueError(f"tensor '{name}' has dtype {tensor.dtype}; {codec} takes "
                             f"{', '.join(str(d).removeprefix('torch.') for d in dtypes)}")
        if tensor.numel() == 0:
            raise ValueError(f"tensor '{name}' is empty")


def seal_body(body: bytes) -> bytes:
    """``body`` (a serialised EncodedUpdate without checksum) with its CRC-32 appended as the final field."""
    return body + _CHECKSUM_TAG + zlib.crc32(body).to_bytes(4, "little")


def seal(message: update_pb2.EncodedUpdate) -> bytes:
    """Serialise ``message`` and append its CRC-32 as the final field (see update.proto, ``checksum``)."""
    message.ClearField("checksum")
    return seal_body(message.SerializeToString())


def _check_seal(payload: bytes) -> None:
    if len(payload) < 5 or payload[-5:-4] != _CHECKSUM_TAG:
        raise UpdateRejected("update payload is truncated or unsealed (no trailing checksum)")
    if zlib.crc32(payload[:-5]) != int.from_bytes(payload[-4:], "little"):
        raise UpdateRejected("update payload is corrupted (checksum mismatch)")


def pack_tensor_names(message: update_pb2.EncodedUpdate, names: list[str]) -> None:
    """Move the entries' names into one zlib-compressed table (saves kilobytes on PEFT names)."""
    if len(names) != len(message.tensors):
        raise ValueError(f"{len(names)} names for {len(message.tensors)} tensors")
    if any("\n" in name for name in names):
        raise ValueError("tensor names may not contain a newline")
    for entry in message.tensors:
        entry.name = ""
    message.tensor_names_zlib = zlib.compress("\n".join(names).encode(), level=9)


def _unpack_tensor_names(message: update_pb2.EncodedUpdate) -> None:
    if any(entry.name for entry in message.tensors):
        raise UpdateRejected("update has both a name table and named entries")
    limit = (MAX_NAME_CHARS + 1) * max(1, len(message.tensors))
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(message.tensor_names_zlib, limit)
    except zlib.error as exc:
        raise UpdateRejected(f"tensor name table is not a zlib stream: {exc}") from exc
    if inflater.unconsumed_tail or not inflater.eof:
        raise UpdateRejected("tensor name table is truncated or longer than its tensors allow")
    try:
        names = raw.decode().split("\n") if message.tensors else []
    except UnicodeDecodeError as exc:
        raise UpdateRejected("tensor name table is not UTF-8") from exc
    if len(names) != len(message.tensors):
        raise UpdateRejected(f"tensor name table lists {len(names)} names for {len(message.tensors)} tensors")
    for entry, name in zip(message.tensors, names, strict=True):
        entry.name = name


def parse_envelope(payload: bytes, *, codec: str, codec_version: int, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                   expected_round: int | None = None, expected_layout: Layout | None = None
                   ) -> update_pb2.EncodedUpdate:
    """Parse ``payload`` and check format, codec, round, tensor names and shapes before any data is read."""
    if not isinstance(payload, bytes | bytearray):
        raise UpdateRejected(f"update payload must be bytes, got {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise UpdateRejected(f"update payload of {len(payload)} bytes exceeds the limit of {max_bytes}")
    _check_seal(payload)
    message = update_pb2.EncodedUpdate()
    try:
        message.ParseFromString(bytes(payload))
    except DecodeError as exc:
        raise UpdateRejected(f"update payload is not a fedsqueeze.v1.EncodedUpdate: {exc}") from exc
    if message.format_version != FORMAT_VERSION:
        raise UpdateRejected(f"wire format version {message.format_version} is not supported ({FORMAT_VERSION})")
    if message.codec != codec:
        raise UpdateRejected(f"update was encoded with codec '{message.codec}', expected '{codec}'")
    if message.codec_version != codec_version:
        raise UpdateRejected(f"{codec} codec version {message.codec_version} is not supported ({codec_version})")
    if expected_round is not None and message.round != expected_round:
        raise UpdateRejected(f"update answers round {message.round}, but this is round {expected_round}")
    if message.tensor_names_zlib:
        _unpack_tensor_names(message)
    names = [entry.name for entry in message.tensors]
    if any(not name or len(name) > MAX_NAME_CHARS for name in names):
        raise UpdateRejected(f"update has an empty tensor name or one longer than {MAX_NAME_CHARS} characters")
    if len(set(names)) != len(names):
        raise UpdateRejected("update names a tensor more than once")
    for entry in message.tensors:
        if any(d == 0 for d in entry.shape) or math.prod(entry.shape) > 2**40:
            raise UpdateRejected(f"tensor '{entry.name}' has an invalid shape {tuple(entry.shape)}")
    if expected_layout is not None:
        check_layout({e.name: tuple(e.shape) for e in message.tensors}, expected_layout)
    return message


def check_layout(got: Layout, expected: Layout) -> None:
    """Names and shapes of an update must equal the model's trainable tensors exactly."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        raise UpdateRejected(f"update tensors do not match the model: missing {missing[:3]}"
                             f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                             f"{'...' if len(unexpected) > 3 else ''}")
    for name, shape in got.items():
        if tuple(shape) != tuple(expected[name]):
            raise UpdateRejected(f"tensor '{name}' has shape {tuple(shape)}, expected {tuple(expected[name])}")
