"""Payload fuzzing: mutated and random bytes thrown at a decoder, where the only allowed outcomes are a clean
rejection (a ValueError: UpdateRejected, SecAggError, ...) or a decode that passes the caller's own checks.

Mutations are byte-level (bit flips, truncation, insertion, overwrite, random bytes) and structure-aware: the
fedsqueeze envelope's CRC-32 is recomputed after half the byte mutations, and the EncodedUpdate protobuf is
parsed and its fields (round, codec, shapes, dtypes, data, codec header) changed and re-sealed, so that mutations
get past the checksum and the protobuf parser into each codec's own parsing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from protos.fedsqueeze.v1 import update_pb2
from strategies import messages
from strategies.codecs import compeft, dense, ferret
from strategies.codecs.envelope import seal, seal_body
from strategies.codecs.registry import decode_update
from strategies.downlink import digest_prefix

_CHECKSUM_TAG = bytes([(8 << 3) | 5])


@dataclass
class FuzzReport:
    """What a fuzzing campaign tried and saw: cases, clean rejections, accepted payloads, and failures (any
    other exception, or an accepted payload that broke the caller's check), with their first messages."""

    target: str
    cases: int = 0
    rejected: int = 0
    accepted: int = 0
    failures: list[str] = field(default_factory=list)


def _body(payload: bytes) -> bytes:
    return payload[:-5] if len(payload) >= 5 and payload[-5:-4] == _CHECKSUM_TAG else payload


def _mutate_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    kind = int(rng.integers(6))
    if kind == 0 and buf:  # flip bits
        for _ in range(int(rng.integers(1, 9))):
            position = int(rng.integers(len(buf)))
            buf[position] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # truncate
        del buf[int(rng.integers(len(buf) + 1)):]
    elif kind == 2:  # insert random bytes
        position = int(rng.integers(len(buf) + 1))
        buf[position:position] = rng.bytes(int(rng.integers(1, 33)))
    elif kind == 3 and buf:  # overwrite a range
        position = int(rng.integers(len(buf)))
        length = int(rng.integers(1, 17))
        buf[position:position + length] = rng.bytes(length)
    elif kind == 4 and buf:  # duplicate a slice
        start = int(rng.integers(len(buf)))
        stop = min(len(buf), start + int(rng.integers(1, 65)))
        buf[stop:stop] = buf[start:stop]
    else:  # extreme values: 0x00 / 0xff runs
        position = int(rng.integers(len(buf) + 1))
        buf[position:position + 8] = (b"\xff" if rng.integers(2) else b"\x00") * 8
    return bytes(buf)


def _mutate_message(payload: bytes, rng: np.random.Generator) -> bytes | None:
    message = update_pb2.EncodedUpdate()
    try:
        message.ParseFromString(_body(payload))
    except Exception:
        return None
    choice = int(rng.integers(8))
    if choice == 0:
        options = [0, message.round + 1, max(0, message.round - 1), 2**64 - 1]
        message.round = options[int(rng.integers(len(options)))]
    elif choice == 1:
        message.codec = str(rng.choice(["dense", "compeft", "ferret", "", "x" * 300]))
    elif choice == 2:
        message.codec_version = [0, 2, 2**32 - 1][int(rng.integers(3))]
    elif choice == 3 and message.tensors:
        entry = message.tensors[int(rng.integers(len(message.tensors)))]
        shape = list(entry.shape) or [1]
        options = [0, 1, 2**31, 2**63, shape[0] + 1]
        shape[int(rng.integers(len(shape)))] = options[int(rng.integers(len(options)))]
        del entry.shape[:]
        entry.shape.extend(shape)
    elif choice == 4 and message.tensors:
        entry = message.tensors[int(rng.integers(len(message.tensors)))]
        entry.dtype = str(rng.choice(["float32", "bfloat16", "float16", "int8", "complex64", "", "float64"]))
    elif choice == 5 and message.tensors:
        entry = message.tensors[int(rng.integers(len(message.tensors)))]
        entry.data = _mutate_bytes(entry.data, rng)
    elif choice == 6:
        message.codec_header = _mutate_bytes(message.codec_header, rng)
    else:
        message.tensor_names_zlib = _mutate_bytes(message.tensor_names_zlib, rng) if rng.integers(2) else b""
    return seal(message)


def mutate(payload: bytes, rng: np.random.Generator) -> bytes:
    """One mutated version of a valid ``payload`` (or random bytes)."""
    kind = int(rng.integers(10))
    if kind == 0:
        return rng.bytes(int(rng.integers(0, 2 * len(payload) + 16)))
    if kind <= 3:
        structured = _mutate_message(payload, rng)
        if structured is not None:
            return structured
    mutated = _mutate_bytes(_body(payload), rng)
    return seal_body(mutated) if kind <= 6 else _mutate_bytes(payload, rng)


def fuzz(target: str, decode: Callable[[bytes], object], seeds: list[bytes], cases: int, seed: int = 0,
         check: Callable[[object], None] | None = None) -> FuzzReport:
    """Run ``cases`` mutated payloads (of ``seeds``) through ``decode``. A ValueError is a clean rejection; a
    result must pass ``check`` (e.g. the expected layout, finite values); anything else is a failure."""
    rng = np.random.default_rng(seed)
    report = FuzzReport(target)
    for _ in range(cases):
        payload = mutate(seeds[int(rng.integers(len(seeds)))], rng)
        report.cases += 1
        try:
            result = decode(payload)
        except ValueError:
            report.rejected += 1
            continue
        except Exception as exc:
            if len(report.failures) < 5:
                report.failures.append(f"{type(exc).__name__}: {exc}"[:300])
            else:
                report.failures.append(type(exc).__name__)
            continue
        try:
            if check is not None:
                check(result)
            report.accepted += 1
        except Exception as exc:
            report.failures.append(f"accepted but broken: {exc}"[:300])
    return report


FUZZ_LAYOUT = {"a.lora_A.weight": (4, 16), "a.lora_B.weight": (16, 4), "head.bias": (3,)}
FUZZ_ROUND, FUZZ_SEED = 7, 12345


def fuzz_update(scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A small adapter-like update in ``FUZZ_LAYOUT`` (the seed payloads' content)."""
    generator = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=generator) * scale for name, shape in FUZZ_LAYOUT.items()}


def meets_layout(result: object) -> None:
    """The check an accepted decode must pass: exactly ``FUZZ_LAYOUT``'s tensors, all finite."""
    if not isinstance(result, dict) or set(result) != set(FUZZ_LAYOUT):
        raise AssertionError(f"decoded names {sorted(result) if isinstance(result, dict) else type(result)}")
    for name, tensor in result.items():
        if tuple(tensor.shape) != FUZZ_LAYOUT[name] or not torch.isfinite(tensor).all():
            raise AssertionError(f"decoded tensor '{name}' has shape {tuple(tensor.shape)} or non-finite values")


def codec_targets() -> dict[str, tuple[list[bytes], Callable[[bytes], object]]]:
    """Every codec decoder with valid seed payloads, as the coordinator calls it (expected round and layout)."""
    like = {name: torch.empty(shape) for name, shape in FUZZ_LAYOUT.items()}
    update = fuzz_update()
    return {
        "dense-fp32": ([dense.encode(update, dtype="fp32", round_id=FUZZ_ROUND)],
                       lambda p: dense.decode(p, expected_round=FUZZ_ROUND, expected_layout=FUZZ_LAYOUT)),
        "dense-bf16": ([dense.encode(update, dtype="bf16", round_id=FUZZ_ROUND)],
                       lambda p: dense.decode(p, expected_round=FUZZ_ROUND, expected_layout=FUZZ_LAYOUT)),
        "compeft": ([compeft.encode(update, density=d, round_id=FUZZ_ROUND) for d in (0.05, 0.5, 1.0)],
                    lambda p: compeft.decode(p, expected_round=FUZZ_ROUND, expected_layout=FUZZ_LAYOUT)),
        "ferret": ([ferret.encode(update, seed=FUZZ_SEED, dim=8, block_size=64, round_id=FUZZ_ROUND)],
                   lambda p: ferret.decode(p, like=like, expected_seed=FUZZ_SEED, expected_round=FUZZ_ROUND)),
    }


FUZZ_DIGEST = "ab" * 32  # the global state's digest a fuzzed reply claims to have trained from


def reply_content(payload: bytes, digest: str = FUZZ_DIGEST, **metrics: float) -> RecordDict:
    """A client's reply as the coordinator receives it: ``payload`` as the encoded update, plausible metrics
    (``metrics`` override them) and ``digest``'s prefix; for fuzzing and testing the reply handler."""
    values = {"num-examples": 32, "train-loss": 0.5, "partition-id": 1, "state-digest-48": digest_prefix(digest),
              **metrics}
    return RecordDict({messages.UPDATE: ConfigRecord({messages.ENCODED_UPDATE: payload}),
                       messages.METRICS: MetricRecord(values)})


def accept_dense(payload: bytes) -> dict[str, torch.Tensor]:
    """The reply handler's acceptor for dense payloads of the fuzz layout and round."""
    return decode_update("dense", payload, expected_round=FUZZ_ROUND, expected_layout=FUZZ_LAYOUT)
