"""The local channel between a node's per-message ClientApp and its long-lived warm trainer.

Flower 1.39's SuperNode starts a fresh ``flwr-clientapp`` process for every message. ``fedsqueeze node`` also
starts a trainer process (``client/trainer.py``) that keeps the model, tokenizer and data partition loaded, and
names its Unix socket in the node config (``trainer-socket``). The ClientApp then only forwards the message and its
Flower context there and returns the reply, so a round costs a process start and a few imports, not a model load.

This module is imported by every ClientApp process: it must stay light (no torch). Frames are an 8-byte big-endian
length and a ``fedsqueeze.v1.TrainerRequest``/``TrainerReply`` (protobuf, never pickle); the Flower message and
context inside are Flower's own protobuf serialisation.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import socket
import struct
from pathlib import Path

from flwr.app import Context, Message
from flwr.common.serde import context_from_proto, context_to_proto, message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext  # pylint: disable=no-name-in-module
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=no-name-in-module
from google.protobuf.message import DecodeError

from protos.fedsqueeze.v1 import trainer_pb2

log = logging.getLogger(__name__)

TRAINER_SOCKET_KEY = "trainer-socket"  # node config key naming the trainer's Unix socket
FORMAT_VERSION = 1
_LENGTH = struct.Struct(">Q")
MAX_FRAME_BYTES = 16 << 30  # a full-parameter 7B update in fp32 is 28 GB; refuse anything past 16 GiB
CODE_PACKAGES = ("client", "strategies", "protos")  # what runs on a node; a digest of their sources names the code


class TrainerError(RuntimeError):
    """The warm trainer ran the message and it failed; the message names why."""


@functools.cache
def code_digest(root: Path | None = None) -> str:
    """SHA-256 of the client-side sources (``client/``, ``strategies/``, ``protos/`` ``*.py`` files) under ``root``
    (default: the tree this module was imported from), so that a trainer only runs the code the run shipped."""
    root = root or Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def send_frame(sock: socket.socket, payload: bytes) -> None:
    """Write one length-prefixed frame."""
    sock.sendall(_LENGTH.pack(len(payload)))
    sock.sendall(payload)


def recv_frame(sock: socket.socket) -> bytes:
    """Read one length-prefixed frame; ConnectionError if the peer closes early or announces an oversized frame."""
    (length,) = _LENGTH.unpack(_recv_exactly(sock, _LENGTH.size))
    if length > MAX_FRAME_BYTES:
        raise ConnectionError(f"frame of {length} bytes is over the {MAX_FRAME_BYTES}-byte limit")
    return _recv_exactly(sock, length)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:], min(size - received, 1 << 24))
        if count == 0:
            raise ConnectionError(f"peer closed the channel after {received} of {size} bytes")
        received += count
    return bytes(buffer)


def encode_request(msg: Message, context: Context) -> bytes:
    """The request frame for ``msg`` with its Flower context."""
    return trainer_pb2.TrainerRequest(
        format_version=FORMAT_VERSION, code_digest=code_digest(),
        message=message_to_proto(msg).SerializeToString(),
        context=context_to_proto(context).SerializeToString()).SerializeToString()


def decode_request(frame: bytes) -> tuple[trainer_pb2.TrainerRequest, Message, Context]:
    """The request, its message and its context; ValueError for bytes that are not one, or another format version."""
    try:
        request = trainer_pb2.TrainerRequest.FromString(frame)
        if request.format_version != FORMAT_VERSION:
            raise ValueError(f"trainer request format {request.format_version}, this trainer reads {FORMAT_VERSION}")
        return (request, message_from_proto(ProtoMessage.FromString(request.message)),
                context_from_proto(ProtoContext.FromString(request.context)))
    except DecodeError as exc:
        raise ValueError(f"not a trainer request: {exc}") from None


def encode_reply(reply: Message | None, context: Context | None, *, error: str = "", refused: bool = False) -> bytes:
    """The reply frame: the reply message and the context after the handler ran, or an error line."""
    out = trainer_pb2.TrainerReply(format_version=FORMAT_VERSION, error=error, refused=refused)
    if reply is not None and context is not None:
        out.message = message_to_proto(reply).SerializeToString()
        out.context = context_to_proto(context).SerializeToString()
    return out.SerializeToString()


def forward(socket_path: Path, msg: Message, context: Context) -> Message | None:
    """Run ``msg`` on the trainer listening at ``socket_path``: its reply, with ``context.state`` replaced by the
    state the handler left. None when the trainer cannot be reached or refuses the work (other code): the caller
    then runs it in-process. TrainerError when the handler failed there."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(socket_path))
            send_frame(sock, encode_request(msg, context))
            frame = recv_frame(sock)
    except OSError as exc:  # ConnectionError, FileNotFoundError, ... : the trainer is not there (any more)
        log.warning("warm trainer at %s is not reachable (%s); running this message in the ClientApp process",
                    socket_path, exc)
        return None
    answer = trainer_pb2.TrainerReply.FromString(frame)
    if answer.refused:
        log.warning("warm trainer refused the message (%s); running it in the ClientApp process", answer.error)
        return None
    if answer.error:
        raise TrainerError(answer.error)
    context.state = context_from_proto(ProtoContext.FromString(answer.context)).state
    return message_from_proto(ProtoMessage.FromString(answer.message))


def forward_if_warm(msg: Message, context: Context) -> Message | None:
    """The trainer's reply when this node runs a warm trainer (node config ``trainer-socket``), else None."""
    path = context.node_config.get(TRAINER_SOCKET_KEY)
    return forward(Path(str(path)), msg, context) if path else None
