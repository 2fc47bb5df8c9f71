"""Dense codec: exact round trips, byte counts a reader can check, and clean rejections."""

import math
import zlib

import pytest
import torch

from protos.fedsqueeze.v1 import update_pb2
from strategies.codecs import UpdateRejected, dense
from strategies.codecs.envelope import seal

UPDATE = {"a.lora_A.weight": torch.tensor([[1.0, -2.0, 0.5]]), "a.lora_B.weight": torch.tensor([[0.25], [-0.125]])}
LAYOUT = {"a.lora_A.weight": (1, 3), "a.lora_B.weight": (2, 1)}


def test_fp32_round_trip_is_exact_and_values_are_little_endian() -> None:
    payload = dense.encode(UPDATE, round_id=7)
    decoded = dense.decode(payload, expected_round=7, expected_layout=LAYOUT)
    for name, tensor in UPDATE.items():
        assert torch.equal(decoded[name], tensor)
    message = update_pb2.EncodedUpdate.FromString(payload)
    assert message.tensors[0].data[:4] == bytes.fromhex("0000803f")  # 1.0f little-endian
    assert dense.dense_fp32_bytes(UPDATE) == 4 * 5


@pytest.mark.parametrize(("dtype", "itemsize"), [("bf16", 2), ("fp16", 2), ("fp32", 4)])
def test_reduced_precision_halves_the_value_bytes(dtype: str, itemsize: int) -> None:
    payload = dense.encode(UPDATE, dtype=dtype)
    message = update_pb2.EncodedUpdate.FromString(payload)
    assert sum(len(t.data) for t in message.tensors) == 5 * itemsize
    decoded = dense.decode(payload)
    for name, tensor in UPDATE.items():  # these values are exact in every format
        assert torch.equal(decoded[name], tensor)


def test_encode_refuses_non_finite_and_fp16_overflow() -> None:
    with pytest.raises(ValueError, match="NaN or Inf"):
        dense.encode({"x": torch.tensor([math.nan])})
    with pytest.raises(ValueError, match="NaN or Inf"):
        dense.encode({"x": torch.tensor([1e6])}, dtype="fp16")
    with pytest.raises(ValueError, match="dense dtype"):
        dense.encode(UPDATE, dtype="int8")


def _tampered(**changes: object) -> bytes:
    message = update_pb2.EncodedUpdate.FromString(dense.encode(UPDATE, round_id=3))
    for key, value in changes.items():
        setattr(message, key, value)
    return seal(message)


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\xff\xff\xff", "truncated or unsealed"),
    (b"\xff\xff\xff\x45" + (0).to_bytes(4, "little"), "checksum mismatch"),
    (b"\xff\x45" + zlib.crc32(b"\xff").to_bytes(4, "little"), "not a fedsqueeze.v1.EncodedUpdate"),
    (_tampered(codec="compeft"), "codec 'compeft'"),
    (_tampered(codec_version=9), "codec version 9"),
    (_tampered(format_version=2), "wire format version 2"),
    (_tampered(round=2), "round 2"),
])
def test_decoder_rejects_malformed_envelopes(payload: bytes, reason: str) -> None:
    with pytest.raises(UpdateRejected, match=reason):
        dense.decode(payload, expected_round=3, expected_layout=LAYOUT)


def test_decoder_rejects_layout_data_and_value_problems() -> None:
    good = dense.encode(UPDATE, round_id=1)
    with pytest.raises(UpdateRejected, match="missing"):
        dense.decode(good, expected_layout={**LAYOUT, "c": (1,)})
    with pytest.raises(UpdateRejected, match="shape"):
        dense.decode(good, expected_layout={**LAYOUT, "a.lora_B.weight": (1, 2)})
    message = update_pb2.EncodedUpdate.FromString(good)
    message.tensors[0].data = message.tensors[0].data[:-1]
    with pytest.raises(UpdateRejected, match="carries 11 bytes, expected 12"):
        dense.decode(seal(message))
    message = update_pb2.EncodedUpdate.FromString(good)
    message.tensors[0].data = torch.tensor([math.inf, 0.0, 0.0]).numpy().tobytes()
    with pytest.raises(UpdateRejected, match="NaN or Inf"):
        dense.decode(seal(message))
    message = update_pb2.EncodedUpdate.FromString(good)
    message.tensors.add(name="a.lora_A.weight", shape=[1], dtype="float32", data=b"\0" * 4)
    with pytest.raises(UpdateRejected, match="more than once"):
        dense.decode(seal(message))
    with pytest.raises(UpdateRejected, match="exceeds the limit"):
        dense.decode(good, max_bytes=10)
