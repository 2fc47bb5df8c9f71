"""The fuzzing engine: mutated and random bytes thrown at a decoder, where the only allowed outcomes are a clean
rejection (a ValueError: UpdateRejected, SecAggError, ...) or a decode that passes the caller's own checks.

Mutations are byte-level (bit flips, truncation, insertion, overwrite, random bytes) and structure-aware: the
fedsqueeze envelope's CRC-32 is recomputed after half the byte mutations, and the EncodedUpdate protobuf is
parsed and its fields (round, codec, shapes, dtypes, data, codec header) changed and re-sealed, so that mutations
get past the checksum and the protobuf parser into each codec's own parsing. ``fuzz_codecs`` holds the codec and
reply-handler targets, ``fuzz_secagg`` the secure-aggregation ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from protos.fedsqueeze.v1 import update_pb2
from strategies.codecs.envelope import seal, seal_body

_CHECKSUM_TAG = bytes([(8 << 3) | 5])


@dataclass
class FuzzReport:
    """What a fuzzing campaign tried and saw: cases, clean rejections, accepted payloads, and failures (any
    other exception, or an accepted payload that broke the caller's check), with their first messages, and the
    cases per kind of outcome (the rejection's exception class, or the kind of acceptance)."""

    target: str
    cases: int = 0
    rejected: int = 0
    accepted: int = 0
    failures: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)  # cases per kind of rejection or acceptance


def _body(payload: bytes) -> bytes:
    return payload[:-5] if len(payload) >= 5 and payload[-5:-4] == _CHECKSUM_TAG else payload


def mutate_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    """``data`` with one random mutation: flipped bits, a cut, inserted or repeated bytes, or a boundary value."""
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
        entry.data = mutate_bytes(entry.data, rng)
    elif choice == 6:
        message.codec_header = mutate_bytes(message.codec_header, rng)
    else:
        message.tensor_names_zlib = mutate_bytes(message.tensor_names_zlib, rng) if rng.integers(2) else b""
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
    mutated = mutate_bytes(_body(payload), rng)
    return seal_body(mutated) if kind <= 6 else mutate_bytes(payload, rng)


SLOW_CASE_S = 10.0  # a case slower than this counts as a failure (a decoder that hangs or blows up)


def _fail(report: FuzzReport, text: str) -> None:
    report.failures.append(text[:300] if len(report.failures) < 5 else text.split(":", 1)[0])


def run_case(report: FuzzReport, attempt: Callable[[], object],
             check: Callable[[object], str | None] | None = None) -> None:
    """Run one case into ``report``: a ValueError is a clean rejection (tallied under its class name); a result
    must pass ``check`` (which may return a label for the kind of acceptance); any other exception, a result
    that breaks the check, or a case slower than ``SLOW_CASE_S`` is a failure."""
    report.cases += 1
    started = time.perf_counter()
    try:
        result = attempt()
    except ValueError as exc:
        label = type(exc).__name__
    except Exception as exc:
        return _fail(report, f"{type(exc).__name__}: {exc}")
    else:
        try:
            label = (check(result) if check is not None else None) or "accepted"
        except Exception as exc:
            return _fail(report, f"accepted but broken: {exc}")
    elapsed = time.perf_counter() - started
    if elapsed > SLOW_CASE_S:
        return _fail(report, f"slow: one case took {elapsed:.1f} s ({label})")
    if label.startswith("accepted"):
        report.accepted += 1
    else:
        report.rejected += 1
    report.outcomes[label] = report.outcomes.get(label, 0) + 1
    return None


def fuzz(target: str, decode: Callable[[bytes], object], seeds: list[bytes], cases: int, seed: int = 0,
         check: Callable[[object], str | None] | None = None) -> FuzzReport:
    """Run ``cases`` mutated payloads (of ``seeds``) through ``decode``. A ValueError is a clean rejection; a
    result must pass ``check`` (e.g. the expected layout, finite values); anything else is a failure."""
    rng = np.random.default_rng(seed)
    report = FuzzReport(target)
    for _ in range(cases):
        payload = mutate(seeds[int(rng.integers(len(seeds)))], rng)
        run_case(report, lambda payload=payload: decode(payload), check)
    return report
