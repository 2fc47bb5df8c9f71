"""The Ferret codec: send a delta as its coefficients on shared random directions; everyone rebuilds it.

After Shu et al. (Ferret, 2024), with two of its published code's faults fixed: the directions come from a
counter-based hash, so CPU and CUDA parties draw the same ones, and the reconstruction is unbiased, so no server
learning rate compensates for it. The basis, its cost and its variance are described in strategies/random_basis.py.

Tensors are taken in name order and cut into blocks of ``block_size`` entries, each projected on ``dim``
directions (fewer for a short last block), so the payload holds about ``4 * dim * entries / block_size`` bytes of
fp32 coefficients plus a fixed ~70-byte frame. Decoding needs the layout (``like``): names and shapes never travel;
their SHA-256 does, and a mismatch is rejected. Projection and reconstruction are linear, so the decode of a
coefficient-wise (weighted) sum of several payloads equals the same sum of their decodes (``combine``); that is
how the coordinator aggregates without rebuilding each client's update.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from google.protobuf.message import DecodeError

from protos.fedsqueeze.v1 import ferret_pb2, update_pb2
from strategies.codecs.envelope import DEFAULT_MAX_PAYLOAD_BYTES, FORMAT_VERSION, check_update, parse_envelope, seal
from strategies.codecs.errors import UpdateRejected
from strategies.random_basis import BlockPlan, buckets_and_signs, check_seed

CODEC = "ferret"
CODEC_VERSION = 1
CHUNK_ENTRIES = 1 << 18
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def check_options(dim: int, block_size: int) -> None:
    """Raise ValueError naming the first ferret option that is out of range."""
    BlockPlan(total=1, dim=dim, block_size=block_size)


def layout_digest(shapes: Mapping[str, Sequence[int]]) -> bytes:
    """SHA-256 of the names and shapes in name order: two parties agree on it iff they flatten alike."""
    digest = hashlib.sha256()
    for name in sorted(shapes):
        digest.update(name.encode())
        digest.update(b"\0" + ",".join(str(int(d)) for d in shapes[name]).encode() + b"\n")
    return digest.digest()


@dataclass(frozen=True)
class FerretPayload:
    """A parsed ferret payload: the round, seed, block plan, layout digest and fp32 coefficients."""

    round_id: int
    seed: int
    plan: BlockPlan
    layout_sha256: bytes
    coefficients: np.ndarray  # float32, plan.coefficients of them


def _pieces(shapes: Mapping[str, Sequence[int]], plan: BlockPlan) -> Iterator[tuple[str, int, int, int, int]]:
    """(tensor name, start in tensor, stop in tensor, block, start in block) for every piece of the flattened update
    that lies in one block and is at most CHUNK_ENTRIES long, tensors in name order."""
    offset = 0
    for name in sorted(shapes):
        numel = math.prod(shapes[name])
        position = 0
        while position < numel:
            block, in_block = divmod(offset + position, plan.block_size)
            length = min(numel - position, plan.block_size - in_block, CHUNK_ENTRIES)
            yield name, position, position + length, block, in_block
            position += length
        offset += numel


def project(update: Mapping[str, torch.Tensor], *, seed: int, dim: int, block_size: int) -> np.ndarray:
    """The fp32 coefficients of ``update`` on the random directions of ``seed`` (accumulated in fp64).

    Runs on the device the tensors are on. Raises ValueError for bad options, an empty update, or NaN/Inf.
    """
    check_seed(seed)
    check_update(update, codec=CODEC, dtypes=_FLOAT_DTYPES)
    shapes = {name: tuple(t.shape) for name, t in update.items()}
    plan = BlockPlan(sum(t.numel() for t in update.values()), dim, block_size)
    offsets = plan.offsets()
    device = next(iter(update.values())).device
    coefficients = torch.zeros(plan.coefficients, dtype=torch.float64, device=device)
    flats = {name: t.detach().reshape(-1) for name, t in update.items()}
    for name, start, stop, block, in_block in _pieces(shapes, plan):
        values = flats[name][start:stop].to(torch.float64)
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"tensor '{name}' has NaN or Inf entries; refusing to encode")
        bucket, negative = buckets_and_signs(seed, block, plan.directions(block), in_block,
                                             in_block + stop - start, device)
        bucket += offsets[block]
        coefficients.index_add_(0, bucket, torch.where(negative, -values, values))
    return coefficients.to(torch.float32).cpu().numpy()


def pack(coefficients: np.ndarray, *, seed: int, plan: BlockPlan, layout_sha256: bytes, round_id: int = 0) -> bytes:
    """Frame fp32 ``coefficients`` as a sealed EncodedUpdate (codec ``ferret``)."""
    coefficients = np.ascontiguousarray(coefficients, dtype="<f4")
    if coefficients.shape != (plan.coefficients,):
        raise ValueError(f"{coefficients.size} coefficients for a plan of {plan.coefficients}")
    header = ferret_pb2.FerretHeader(seed=seed, dim=plan.dim, block_size=plan.block_size, entries=plan.total,
                                     layout_sha256=layout_sha256, coefficients=coefficients.tobytes())
    message = update_pb2.EncodedUpdate(format_version=FORMAT_VERSION, codec=CODEC, codec_version=CODEC_VERSION,
                                       round=round_id, codec_header=header.SerializeToString())
    return seal(message)


def encode(update: dict[str, torch.Tensor], *, seed: int, dim: int, block_size: int, round_id: int = 0) -> bytes:
    """Project ``update`` on the shared random directions of ``seed`` and frame the coefficients as bytes.

    ``dim`` directions per block of ``block_size`` entries (tensors in name order). Raises ValueError for options
    out of range, an empty update or tensor, a non-float dtype, or NaN/Inf.
    """
    coefficients = project(update, seed=seed, dim=dim, block_size=block_size)
    shapes = {name: tuple(t.shape) for name, t in update.items()}
    plan = BlockPlan(sum(t.numel() for t in update.values()), dim, block_size)
    return pack(coefficients, seed=seed, plan=plan, layout_sha256=layout_digest(shapes), round_id=round_id)


def parse(payload: bytes, *, expected_seed: int | None = None, expected_round: int | None = None,
          expected_layout: Mapping[str, Sequence[int]] | None = None,
          max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> FerretPayload:
    """Check a ferret payload (envelope, seed, round, layout, sizes, finite coefficients) and return its parts.

    Anything malformed or unexpected raises UpdateRejected (a ValueError) naming the problem.
    """
    message = parse_envelope(payload, codec=CODEC, codec_version=CODEC_VERSION, max_bytes=max_bytes,
                             expected_round=expected_round)
    if len(message.tensors):
        raise UpdateRejected("a ferret payload carries no tensor entries")
    try:
        header = ferret_pb2.FerretHeader.FromString(message.codec_header)
    except DecodeError as exc:
        raise UpdateRejected(f"ferret header is malformed: {exc}") from exc
    if expected_seed is not None and header.seed != expected_seed:
        raise UpdateRejected(f"update was projected with seed {header.seed}, but this round's seed is "
                             f"{expected_seed}")
    try:
        plan = BlockPlan(int(header.entries), int(header.dim), int(header.block_size))
    except ValueError as exc:
        raise UpdateRejected(f"ferret header: {exc}") from exc
    if expected_layout is not None:
        total = sum(math.prod(shape) for shape in expected_layout.values())
        if header.entries != total:
            raise UpdateRejected(f"update covers {header.entries} entries, but the model has {total}")
        if header.layout_sha256 != layout_digest(expected_layout):
            raise UpdateRejected("update was projected from another tensor layout (names or shapes differ)")
    if len(header.coefficients) != 4 * plan.coefficients:
        raise UpdateRejected(f"ferret payload has {len(header.coefficients)} coefficient bytes, expected "
                             f"{4 * plan.coefficients} ({plan.coefficients} fp32)")
    coefficients = np.frombuffer(header.coefficients, dtype="<f4").astype(np.float32)
    if not np.isfinite(coefficients).all():
        raise UpdateRejected("ferret coefficients contain NaN or Inf")
    return FerretPayload(int(message.round), int(header.seed), plan, bytes(header.layout_sha256), coefficients)


def rebuild(parsed: FerretPayload, like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The update the coefficients stand for, with ``like``'s names, shapes, dtypes and device.

    Each entry is one sign flip of one coefficient, so every device rebuilds the same bits.
    """
    shapes = {name: tuple(t.shape) for name, t in like.items()}
    if parsed.plan.total != sum(math.prod(s) for s in shapes.values()) or parsed.layout_sha256 != layout_digest(
            shapes):
        raise UpdateRejected("update was projected from another tensor layout (names or shapes differ)")
    device = next(iter(like.values())).device
    coefficients = torch.from_numpy(parsed.coefficients).to(device)
    offsets = parsed.plan.offsets()
    flats = {name: torch.empty(math.prod(shape), dtype=torch.float32, device=device) for name, shape in
             shapes.items()}
    for name, start, stop, block, in_block in _pieces(shapes, parsed.plan):
        bucket, negative = buckets_and_signs(parsed.seed, block, parsed.plan.directions(block), in_block,
                                             in_block + stop - start, device)
        picked = coefficients[bucket + offsets[block]]
        flats[name][start:stop] = torch.where(negative, -picked, picked)
    return {name: flats[name].reshape(shapes[name]).to(like[name].dtype) for name in like}


def decode(payload: bytes, *, like: Mapping[str, torch.Tensor], expected_seed: int | None = None,
           expected_round: int | None = None, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> dict[str, torch.Tensor]:
    """Rebuild the update in ``payload`` from its coefficients and seed, shaped like ``like``.

    Raises UpdateRejected when the payload is malformed, has another seed or round than expected, or was made
    for another layout.
    """
    shapes = {name: tuple(t.shape) for name, t in like.items()}
    parsed = parse(payload, expected_seed=expected_seed, expected_round=expected_round, expected_layout=shapes,
                   max_bytes=max_bytes)
    return rebuild(parsed, like)


def parse_same_basis(payloads: Sequence[bytes], *, expected_seed: int | None = None) -> list[FerretPayload]:
    """Parse payloads that must share one basis (seed, block plan, layout), as any aggregate of coefficients
    needs; UpdateRejected when one differs."""
    parsed = [parse(p, expected_seed=expected_seed) for p in payloads]
    first = parsed[0]
    for other in parsed[1:]:
        if (other.seed, other.plan, other.layout_sha256) != (first.seed, first.plan, first.layout_sha256):
            raise UpdateRejected("ferret payloads differ in seed, block plan or layout")
    return parsed


def combine(payloads: Sequence[bytes], weights: Sequence[float] | None = None, *, round_id: int | None = None,
            expected_seed: int | None = None) -> bytes:
    """One payload whose coefficients are the weighted sum ``sum_i w_i c_i`` (fp64, then fp32) of ``payloads``.

    By linearity its decode is the same weighted sum of their decodes. All payloads must share seed, plan and
    layout; weights default to 1 each. The round is the first payload's unless ``round_id`` is given.
    """
    if not payloads:
        raise ValueError("combine needs at least one payload")
    weights = [1.0] * len(payloads) if weights is None else list(weights)
    if len(weights) != len(payloads) or not all(math.isfinite(w) for w in weights):
        raise ValueError(f"combine needs one finite weight per payload, got {weights!r}")
    parsed = parse_same_basis(payloads, expected_seed=expected_seed)
    first = parsed[0]
    total = np.zeros(first.plan.coefficients, dtype=np.float64)
    for weight, item in zip(weights, parsed, strict=True):
        total += weight * item.coefficients.astype(np.float64)
    return pack(total.astype(np.float32), seed=first.seed, plan=first.plan, layout_sha256=first.layout_sha256,
                round_id=first.round_id if round_id is None else round_id)
