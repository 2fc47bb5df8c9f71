"""The dense codec: every entry of every tensor, as fp32, bf16 or fp16 (the baseline)."""

from __future__ import annotations

import math

import torch

from protos.fedsqueeze.v1 import update_pb2
from strategies.codecs.envelope import DEFAULT_MAX_PAYLOAD_BYTES, FORMAT_VERSION, Layout, parse_envelope, seal
from strategies.codecs.errors import UpdateRejected

CODEC = "dense"
CODEC_VERSION = 1
WIRE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_WIRE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_FROM_WIRE = {v: k for k, v in _WIRE_NAMES.items()}


def encode(update: dict[str, torch.Tensor], *, dtype: str = "fp32", round_id: int = 0) -> bytes:
    """Serialise ``update`` as little-endian ``dtype`` values in an EncodedUpdate.

    Raises ValueError for an unknown dtype or a non-finite entry (fp16 overflow included).
    """
    if dtype not in WIRE_DTYPES:
        raise ValueError(f"dense dtype '{dtype}' is not one of {', '.join(WIRE_DTYPES)}")
    wire_dtype = WIRE_DTYPES[dtype]
    message = update_pb2.EncodedUpdate(format_version=FORMAT_VERSION, codec=CODEC, codec_version=CODEC_VERSION,
                                       round=round_id)
    for name, tensor in update.items():
        values = tensor.detach().to(wire_dtype).cpu().contiguous()  # cast where the tensor is: fewer bytes move
        if not torch.isfinite(values).all():
            raise ValueError(f"tensor '{name}' has NaN or Inf entries in {dtype}; refusing to encode")
        raw = values.view(torch.uint8) if values.numel() else values
        message.tensors.add(name=name, shape=list(values.shape), dtype=_WIRE_NAMES[wire_dtype],
                            data=raw.numpy().tobytes())
    return seal(message)


def decode(payload: bytes, *, expected_round: int | None = None, expected_layout: Layout | None = None,
           max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> dict[str, torch.Tensor]:
    """Rebuild fp32 tensors from a dense payload, rejecting anything malformed with UpdateRejected."""
    message = parse_envelope(payload, codec=CODEC, codec_version=CODEC_VERSION, max_bytes=max_bytes,
                             expected_round=expected_round, expected_layout=expected_layout)
    update: dict[str, torch.Tensor] = {}
    for entry in message.tensors:
        wire_dtype = _FROM_WIRE.get(entry.dtype)
        if wire_dtype is None:
            raise UpdateRejected(f"tensor '{entry.name}' has unsupported dense dtype '{entry.dtype}'")
        numel = math.prod(entry.shape)
        itemsize = torch.empty((), dtype=wire_dtype).element_size()
        if len(entry.data) != numel * itemsize:
            raise UpdateRejected(f"tensor '{entry.name}' carries {len(entry.data)} bytes, expected {numel * itemsize}")
        raw = torch.frombuffer(bytearray(entry.data), dtype=torch.uint8)
        values = raw.view(wire_dtype).reshape(tuple(entry.shape)).to(torch.float32)
        if not torch.isfinite(values).all():
            raise UpdateRejected(f"tensor '{entry.name}' contains NaN or Inf")
        update[entry.name] = values
    return update


def dense_fp32_bytes(update: dict[str, torch.Tensor]) -> int:
    """Bytes of the raw fp32 values alone: the yardstick compressed codecs are compared with."""
    return sum(4 * t.numel() for t in update.values())
