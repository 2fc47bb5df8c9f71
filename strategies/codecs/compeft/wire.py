"""The ComPEFT codec: keep the largest-magnitude fraction of a delta, send each kept entry as ``alpha * sign``.

Semantics (Yadav et al., ComPEFT): with ``k = density``, keep the ``round(k * d)`` entries of largest magnitude
(ties: earlier tensor, then lower flat index; zeros are never kept), and replace each by ``alpha * sign(entry)``
with ``alpha = alpha_scale * std(delta)``, the unbiased std over the whole delta (``scope="global"``) or over each
tensor (``scope="tensor"``), taken before sparsification. Every other entry decodes to zero. Values are read as
fp32 (bf16/fp16 exactly; fp64 rounded); a one-entry tensor in tensor scope, whose std is undefined, uses its own
magnitude.

Wire: an EncodedUpdate (protos/fedsqueeze/v1/update.proto) whose codec_header is a CompeftHeader and whose tensor
entries each carry a CompeftTensor (protos/fedsqueeze/v1/compeft.proto): positions Golomb–Rice coded or a bitmap,
signs one bit each, alpha fp32. On the CPU tensors are processed one at a time, in chunks, with numpy; tensors on
another device (CUDA) are measured and selected there with torch, and only the kept positions and signs come to the
CPU to be packed. Both engines keep the same entries with the same signs; alpha agrees up to its fp32 rounding
(the std is summed in another order).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from google.protobuf.message import DecodeError

from protos.fedsqueeze.v1 import compeft_pb2, update_pb2
from strategies.codecs import magnitude_select as ms
from strategies.codecs.envelope import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    FORMAT_VERSION,
    Layout,
    check_update,
    pack_tensor_names,
    parse_envelope,
    seal,
)
from strategies.codecs.errors import UpdateRejected
from strategies.codecs.position_coding import (
    BITMAP,
    RICE,
    CodedPositions,
    decode_positions,
    encode_positions,
)
from strategies.codecs.sparse import SparseTensor, SparseUpdate

CODEC = "compeft"
CODEC_VERSION = 1
SCOPES = ("global", "tensor")
ENGINES = ("auto", "numpy", "torch")
_MAGNITUDE_MASK = 0x7FFFFFFF
DEFAULT_MAX_ENTRIES = 1 << 33
CHUNK_ENTRIES = 1 << 22
_DTYPE_NAMES = {torch.float32: "", torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float64: "float64"}
_DTYPES = {name: dtype for dtype, name in _DTYPE_NAMES.items()} | {"float32": torch.float32}
_CODINGS = {BITMAP: compeft_pb2.CompeftTensor.POSITION_CODING_BITMAP,
            RICE: compeft_pb2.CompeftTensor.POSITION_CODING_RICE_GAPS}
_SCOPES = {"global": compeft_pb2.CompeftHeader.SCOPE_GLOBAL, "tensor": compeft_pb2.CompeftHeader.SCOPE_TENSOR}


def check_options(density: float, alpha_scale: float, scope: str) -> None:
    """Raise ValueError naming the first ComPEFT option that is out of range."""
    if isinstance(density, bool) or not isinstance(density, int | float) or not 0.0 < density <= 1.0:
        raise ValueError(f"compeft density must be in (0, 1], got {density!r}")
    if isinstance(alpha_scale, bool) or not isinstance(alpha_scale, int | float) or not (
            math.isfinite(alpha_scale) and alpha_scale > 0):
        raise ValueError(f"compeft alpha_scale must be a positive finite number, got {alpha_scale!r}")
    if scope not in SCOPES:
        raise ValueError(f"compeft scope must be one of {', '.join(SCOPES)}, got {scope!r}")


def kept_count(density: float, numel: int) -> int:
    """How many entries a ``density`` keeps out of ``numel``: ``round(density * numel)``, at least 1."""
    return min(numel, max(1, round(density * numel)))


@dataclass
class _Flat:
    name: str
    shape: tuple[int, ...]
    dtype_name: str
    values: np.ndarray  # contiguous fp32, flat

    def chunks(self) -> list[tuple[int, np.ndarray]]:
        return [(start, self.values[start:start + CHUNK_ENTRIES])
                for start in range(0, self.values.size, CHUNK_ENTRIES)]


def merge_moments(count: int, mean: float, m2: float, n_b: int, mean_b: float, m2_b: float
                  ) -> tuple[int, float, float]:
    """Count, mean and M2 of two groups of entries taken together, from each group's own (Chan et al. 1979), so
    that moments computed chunk by chunk or tensor by tensor combine exactly as one pass would."""
    n = count + n_b
    shift = mean_b - mean
    return n, mean + shift * n_b / n, m2 + (m2_b + shift * shift * count * n_b / n)


def unbiased_std(count: int, m2: float, lone_value: float) -> float:
    """The unbiased std from count and M2; for a single entry (undefined) its magnitude ``lone_value``."""
    return math.sqrt(m2 / (count - 1)) if count > 1 else abs(lone_value)


@dataclass
class _FirstPass:
    """Pass-one figures of some entries: count, mean and M2 (combined per chunk, Chan et al.) and a strided
    sample of non-zero magnitude keys."""

    stride: int
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    sample_size: int = 0
    samples: list[np.ndarray] = field(default_factory=list)

    def add(self, flat: _Flat, first_offset: int, scratch: np.ndarray) -> None:
        for start, chunk in flat.chunks():
            sampled = chunk[(-(first_offset + start)) % self.stride::self.stride]
            mean_b, m2_b = _chunk_moments(chunk, sampled, scratch)
            if not (math.isfinite(mean_b) and math.isfinite(m2_b)):
                raise ValueError(f"tensor '{flat.name}' has NaN or Inf entries; refusing to encode")
            self.count, self.mean, self.m2 = merge_moments(self.count, self.mean, self.m2, chunk.size, mean_b, m2_b)
            sample = ms.magnitude_keys(sampled)
            self.sample_size += sample.size
            self.samples.append(sample[sample != 0])

    def std(self, lone_value: float) -> float:
        """Unbiased std; for a single entry (undefined) its magnitude ``lone_value``."""
        return unbiased_std(self.count, self.m2, lone_value)


_ROW = 1024  # fp32 partial sums over rows this long stay accurate to ~1e-8 relative
_FAST_MOMENTS_FROM = 1 << 17  # below this, widening to fp64 costs less than the row path's fixed overhead


def _moments_fp64(chunk: np.ndarray, scratch: np.ndarray) -> tuple[float, float]:
    as64 = scratch[:chunk.size]
    np.copyto(as64, chunk)
    mean = float(as64.sum()) / chunk.size
    if not math.isfinite(mean):
        return mean, mean
    as64 -= mean  # two passes: no cancellation when the mean is large against the spread
    return mean, float(np.dot(as64, as64))


def _chunk_moments(chunk: np.ndarray, sampled: np.ndarray, scratch: np.ndarray) -> tuple[float, float]:
    """Mean and M2 (sum of squared deviations) of an fp32 chunk.

    Large chunks sum fp32 rows of _ROW entries and add the row sums in fp64 (four times faster than widening the
    chunk); they are first shifted by the sample's mean when that mean is not small against the sample's spread, so
    the squares do not cancel. Small chunks, and chunks whose fp32 squares overflow, are summed in fp64.
    """
    whole = chunk.size - chunk.size % _ROW
    if whole < _FAST_MOMENTS_FROM:
        return _moments_fp64(chunk, scratch)
    sample = sampled.astype(np.float64)
    center = float(sample.mean()) if sample.size else float(chunk[0])
    spread = float(sample.std()) if sample.size > 1 else 0.0
    values = chunk - np.float32(center) if not abs(center) <= 1e-2 * spread else chunk
    offset = float(np.float32(center)) if values is not chunk else 0.0
    rows = values[:whole].reshape(-1, _ROW)
    tail = values[whole:].astype(np.float64)
    total = float(rows.sum(axis=1).sum(dtype=np.float64)) + float(tail.sum())
    squares = float(np.einsum("ij,ij->i", rows, rows).sum(dtype=np.float64)) + float(np.dot(tail, tail))
    if not math.isfinite(squares) and math.isfinite(total):
        return _moments_fp64(chunk, scratch)  # |x| beyond ~1e19: fp32 squares overflow
    mean = total / chunk.size
    return offset + mean, max(0.0, squares - total * mean)


def _flatten(name: str, tensor: torch.Tensor) -> _Flat:
    values = tensor.detach().to("cpu", torch.float32).contiguous().reshape(-1).numpy()
    return _Flat(name, tuple(tensor.shape), _DTYPE_NAMES[tensor.dtype], values)


def _top_k(flats: list[_Flat], density: float, scratch: np.ndarray
           ) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """The kept entries of ``flats`` taken together (one tensor in tensor scope, all in global scope) as
    (positions, negative) per tensor, and the std."""
    total = sum(flat.values.size for flat in flats)
    first = _FirstPass(stride=ms.sample_stride(total))
    offset = 0
    for flat in flats:
        first.add(flat, offset, scratch)
        offset += flat.values.size
    k = kept_count(density, total)
    sample = np.concatenate(first.samples) if len(first.samples) > 1 else first.samples[0]
    bounds = ms.bounds_from_sample(sample, first.sample_size, k / total)
    candidates = [ms.Candidates.collect(flat.chunks(), bounds.floor) for flat in flats]
    if sum(c.positions.size for c in candidates) < k and bounds.floor > ms.SMALLEST_NONZERO_KEY:
        # The sample misjudged (or there are fewer than k non-zeros): take every non-zero entry.
        candidates = [ms.Candidates.collect(flat.chunks(), ms.SMALLEST_NONZERO_KEY) for flat in flats]
    return ms.select_top(candidates, k, bounds.ceiling), first.std(float(flats[0].values[0]))


def position_message(coded: CodedPositions) -> compeft_pb2.CompeftTensor:
    """A CompeftTensor carrying ``coded`` positions (no signs, no alpha yet)."""
    return compeft_pb2.CompeftTensor(coding=_CODINGS[coded.coding], rice_bits=coded.rice_bits,
                                     positions=coded.positions, remainders=coded.remainders)


def _tensor_message(numel: int, kept: np.ndarray, negative: np.ndarray, alpha: float | None
                    ) -> compeft_pb2.CompeftTensor:
    message = position_message(encode_positions(kept, numel))
    message.signs = np.packbits(negative).tobytes()
    if alpha is not None:
        message.alpha = alpha
    return message


def _select_numpy(update: dict[str, torch.Tensor], density: float, scope: str
                  ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[float]]:
    """Kept (positions, negative) per tensor and the std of each scope group, with numpy on the CPU."""
    flats = [_flatten(name, tensor) for name, tensor in update.items()]
    scratch = np.empty(min(CHUNK_ENTRIES, max(flat.values.size for flat in flats)), dtype=np.float64)
    groups = [flats] if scope == "global" else [[flat] for flat in flats]
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    stds: list[float] = []
    for group in groups:
        chosen, std = _top_k(group, density, scratch)
        kept += chosen
        stds.append(std)
    return kept, stds


def _moments_torch(name: str, values: torch.Tensor) -> tuple[int, float, float]:
    """Count, mean and M2 of a flat tensor on its device, two-pass in fp64 per chunk, chunks combined (Chan)."""
    count, mean, m2 = 0, 0.0, 0.0
    for start in range(0, values.numel(), CHUNK_ENTRIES):
        chunk = values[start:start + CHUNK_ENTRIES].to(torch.float64)
        chunk_mean = chunk.mean()
        mean_b, m2_b = torch.stack([chunk_mean, (chunk - chunk_mean).square().sum()]).tolist()
        if not (math.isfinite(mean_b) and math.isfinite(m2_b)):
            raise ValueError(f"tensor '{name}' has NaN or Inf entries; refusing to encode")
        count, mean, m2 = merge_moments(count, mean, m2, chunk.numel(), mean_b, m2_b)
    return count, mean, m2


def _top_k_torch(values: list[torch.Tensor], density: float) -> list[torch.Tensor]:
    """Positions of the kept entries of flat fp32 ``values`` taken together, per tensor, on their device: the
    ``kept_count`` largest magnitudes, ties to the earlier tensor then the lower index, zeros never."""
    keys = torch.cat(values) if len(values) > 1 else values[0]
    keys = keys.view(torch.int32) & _MAGNITUDE_MASK  # integer order = order of |x| (as magnitude_select)
    k = kept_count(density, keys.numel())
    if int(torch.count_nonzero(keys)) <= k:
        mask = keys != 0
    else:
        threshold = torch.topk(keys, k, sorted=False).values.min()  # the k-th largest key, > 0
        mask = keys > threshold
        missing = k - int(torch.count_nonzero(mask))
        if missing:
            mask[torch.nonzero(keys == threshold).flatten()[:missing]] = True
    positions, offset = [], 0
    for tensor in values:
        positions.append(torch.nonzero(mask[offset:offset + tensor.numel()]).flatten())
        offset += tensor.numel()
    return positions


def _select_torch(update: dict[str, torch.Tensor], density: float, scope: str
                  ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[float]]:
    """As ``_select_numpy``, on the device of the update's first tensor; only positions and signs leave it."""
    device = next(iter(update.values())).device
    flats = {name: t.detach().to(device=device, dtype=torch.float32).reshape(-1).contiguous()
             for name, t in update.items()}
    groups = [list(flats)] if scope == "global" else [[name] for name in flats]
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    stds: list[float] = []
    for group in groups:
        count, mean, m2 = 0, 0.0, 0.0
        for name in group:  # combine the tensors' moments (Chan et al.), as the numpy engine does by chunk
            count, mean, m2 = merge_moments(count, mean, m2, *_moments_torch(name, flats[name]))
        stds.append(unbiased_std(count, m2, float(flats[group[0]][0])))
        chosen = _top_k_torch([flats[name] for name in group], density)
        kept += [(positions.cpu().numpy(), torch.signbit(flats[name][positions]).cpu().numpy())
                 for name, positions in zip(group, chosen, strict=True)]
    return kept, stds


def encode(update: dict[str, torch.Tensor], *, density: float, alpha_scale: float = 1.0, scope: str = "global",
           round_id: int = 0, engine: str = "auto") -> bytes:
    """Compress ``update`` ComPEFT-style into EncodedUpdate bytes (see the module docstring for the semantics).

    ``engine``: ``numpy`` (on the CPU), ``torch`` (on the tensors' device), or ``auto``: torch when a tensor is
    off the CPU (a CUDA update is then selected on the GPU, not copied whole to the CPU), else numpy.
    Raises ValueError for options out of range, an empty update or tensor, an unsupported dtype, or NaN/Inf.
    """
    check_options(density, alpha_scale, scope)
    check_update(update, codec=CODEC, dtypes=_DTYPE_NAMES)
    if engine not in ENGINES:
        raise ValueError(f"compeft engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    on_device = engine == "torch" or (engine == "auto" and any(t.device.type != "cpu" for t in update.values()))
    kept, stds = (_select_torch if on_device else _select_numpy)(update, density, scope)
    header = compeft_pb2.CompeftHeader(scope=_SCOPES[scope], density=float(density))
    if scope == "global":
        header.alpha = alpha_scale * stds[0]
        alphas: list[float | None] = [None] * len(update)
    else:
        alphas = [alpha_scale * std for std in stds]
    message = update_pb2.EncodedUpdate(format_version=FORMAT_VERSION, codec=CODEC, codec_version=CODEC_VERSION,
                                       round=round_id, codec_header=header.SerializeToString())
    for (name, tensor), (positions, negative), alpha in zip(update.items(), kept, alphas, strict=True):
        data = _tensor_message(tensor.numel(), positions, negative, alpha).SerializeToString()
        message.tensors.add(name=name, shape=list(tensor.shape), dtype=_DTYPE_NAMES[tensor.dtype], data=data)
    pack_tensor_names(message, list(update))
    return seal(message)


def _parse_header(message: update_pb2.EncodedUpdate) -> compeft_pb2.CompeftHeader:
    try:
        header = compeft_pb2.CompeftHeader.FromString(message.codec_header)
    except DecodeError as exc:
        raise UpdateRejected(f"compeft header is malformed: {exc}") from exc
    if header.scope not in _SCOPES.values():
        raise UpdateRejected(f"compeft header has an unknown scope {header.scope}")
    return header


def parse_tensor(entry: update_pb2.TensorEntry) -> tuple[compeft_pb2.CompeftTensor, CodedPositions]:
    """One tensor entry's ComPEFT message and its coded positions; UpdateRejected when it does not parse."""
    try:
        tensor = compeft_pb2.CompeftTensor.FromString(entry.data)
    except DecodeError as exc:
        raise UpdateRejected(f"tensor '{entry.name}': compeft payload is malformed: {exc}") from exc
    return tensor, coded_positions(tensor, f"tensor '{entry.name}'")


def coded_positions(message: compeft_pb2.CompeftTensor, where: str) -> CodedPositions:
    """The coded positions a CompeftTensor carries; UpdateRejected naming ``where`` for an unknown coding."""
    coding = {code: name for name, code in _CODINGS.items()}.get(message.coding)
    if coding is None:
        raise UpdateRejected(f"{where}: unknown position coding {message.coding}")
    return CodedPositions(coding, message.rice_bits, message.positions, message.remainders)


def _checked_alpha(alpha: float, where: str) -> float:
    if not (math.isfinite(alpha) and alpha >= 0):
        raise UpdateRejected(f"{where}: alpha {alpha} is not a finite non-negative number")
    return alpha


def _signed(negative: np.ndarray, alpha: np.float32) -> np.ndarray:
    """``-alpha`` where ``negative`` else ``alpha``, built from fp32 bits (several times faster than np.where)."""
    bits = negative.view(np.uint8).astype(np.uint32)
    bits <<= 31
    bits |= np.abs(alpha).view(np.uint32)
    return bits.view(np.float32)


def _kept_entries(payload: bytes, *, expected_round: int | None, expected_layout: Layout | None, max_bytes: int,
                  max_entries: int) -> Iterator[tuple[update_pb2.TensorEntry, torch.dtype, np.ndarray, np.ndarray]]:
    """Each tensor entry of a checked payload with its dtype, kept flat positions (int64, increasing) and fp32
    values (``alpha * sign``). Everything is checked before it is trusted (envelope, round, layout, entry budget,
    positions in range, stream lengths and padding, alpha); anything malformed raises UpdateRejected."""
    message = parse_envelope(payload, codec=CODEC, codec_version=CODEC_VERSION, max_bytes=max_bytes,
                             expected_round=expected_round, expected_layout=expected_layout)
    header = _parse_header(message)
    total_entries = sum(math.prod(entry.shape) for entry in message.tensors)
    if total_entries > max_entries:
        raise UpdateRejected(f"update describes {total_entries} entries, more than the limit of {max_entries}")
    tensor_scope = header.scope == compeft_pb2.CompeftHeader.SCOPE_TENSOR
    if not tensor_scope:
        _checked_alpha(header.alpha, "compeft header")
    for entry in message.tensors:
        dtype = _DTYPES.get(entry.dtype)
        if dtype is None:
            raise UpdateRejected(f"tensor '{entry.name}' has unsupported dtype '{entry.dtype}'")
        tensor, coded = parse_tensor(entry)
        positions = decode_positions(coded, math.prod(entry.shape), f"tensor '{entry.name}'")
        if len(tensor.signs) != (positions.size + 7) // 8:
            raise UpdateRejected(f"tensor '{entry.name}' has {len(tensor.signs)} sign bytes for {positions.size} "
                                 "kept entries")
        negative = np.unpackbits(np.frombuffer(tensor.signs, dtype=np.uint8), count=positions.size).view(bool)
        if positions.size % 8 and tensor.signs[-1] & ((1 << (8 - positions.size % 8)) - 1):
            raise UpdateRejected(f"tensor '{entry.name}' has non-zero sign padding bits")
        alpha = np.float32(_checked_alpha(tensor.alpha, f"tensor '{entry.name}'") if tensor_scope else header.alpha)
        yield entry, dtype, positions, _signed(negative, alpha)


def decode(payload: bytes, *, expected_round: int | None = None, expected_layout: Layout | None = None,
           max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, max_entries: int = DEFAULT_MAX_ENTRIES
           ) -> dict[str, torch.Tensor]:
    """Rebuild the sparse ternary tensors of a compeft payload, in the dtypes they were encoded from.

    Everything is checked before it is trusted (envelope, round, layout, entry budget, positions in range, stream
    lengths and padding, alpha); anything malformed raises UpdateRejected (a ValueError).
    """
    entries = list(_kept_entries(payload, expected_round=expected_round, expected_layout=expected_layout,
                                 max_bytes=max_bytes, max_entries=max_entries))
    buffer = np.zeros(sum(math.prod(entry.shape) for entry, *_ in entries), dtype=np.float32)  # one allocation
    update: dict[str, torch.Tensor] = {}
    offset = 0
    for entry, dtype, positions, values in entries:
        numel = math.prod(entry.shape)
        dense = buffer[offset:offset + numel]
        offset += numel
        dense[positions] = values
        update[entry.name] = torch.from_numpy(dense).reshape(tuple(entry.shape)).to(dtype)
    return update


def decode_sparse(payload: bytes, *, expected_round: int | None = None, expected_layout: Layout | None = None,
                  max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, max_entries: int = DEFAULT_MAX_ENTRIES,
                  dtype: torch.dtype | None = None) -> SparseUpdate:
    """The kept entries of a compeft payload without building dense tensors: per tensor its positions and values
    (``alpha * sign`` in the dtype it was encoded from, then in ``dtype`` when given) — the same numbers ``decode``
    places, in memory and work proportional to the kept entries. Checks exactly what ``decode`` checks."""
    update: SparseUpdate = {}
    for entry, encoded_dtype, positions, values in _kept_entries(
            payload, expected_round=expected_round, expected_layout=expected_layout, max_bytes=max_bytes,
            max_entries=max_entries):
        kept = torch.from_numpy(values).to(encoded_dtype)
        update[entry.name] = SparseTensor(tuple(entry.shape), torch.from_numpy(positions.astype(np.int64, copy=False)),
                                          kept if dtype is None else kept.to(dtype))
    return update
