"""Parse and check the EncodedUpdate envelope that every codec's payload travels in."""

from __future__ import annotations

import math

from google.protobuf.message import DecodeError

from protos.fedsqueeze.v1 import update_pb2
from strategies.codecs.errors import UpdateRejected

FORMAT_VERSION = 1
DEFAULT_MAX_PAYLOAD_BYTES = 2**31 - 1

Layout = dict[str, tuple[int, ...]]


def parse_envelope(payload: bytes, *, codec: str, codec_version: int, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                   expected_round: int | None = None, expected_layout: Layout | None = None
                   ) -> update_pb2.EncodedUpdate:
    """Parse ``payload`` and check format, codec, round, tensor names and shapes before any data is read."""
    if not isinstance(payload, bytes | bytearray):
        raise UpdateRejected(f"update payload must be bytes, got {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise UpdateRejected(f"update payload of {len(payload)} bytes exceeds the limit of {max_bytes}")
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
    names = [entry.name for entry in message.tensors]
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
