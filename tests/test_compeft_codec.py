"""ComPEFT codec: property tests against a plain reference, the wire layout, sizes, and hostile payloads."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.fedsqueeze.v1 import compeft_pb2, update_pb2
from strategies.codecs import UpdateRejected, compeft, dense
from strategies.codecs.compeft import size as compeft_size
from strategies.codecs.envelope import seal
from strategies.codecs.position_coding import decode_positions, encode_positions

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def reference(update: dict[str, torch.Tensor], density: float, alpha_scale: float, scope: str
              ) -> tuple[dict[str, torch.Tensor], int]:
    """The codec's semantics written the slow, obvious way: sort, take the first k non-zeros, alpha * sign.

    Returns the decoded update and how many entries were kept.
    """
    groups = [list(update)] if scope == "global" else [[name] for name in update]
    out: dict[str, torch.Tensor] = {}
    kept_total = 0
    for group in groups:
        flat = torch.cat([update[name].detach().to(torch.float32).reshape(-1) for name in group])
        d = flat.numel()
        k = min(d, max(1, round(density * d)))
        magnitudes = flat.abs().tolist()
        order = sorted(range(d), key=lambda i: (-magnitudes[i], i))
        kept = [i for i in order[:k] if magnitudes[i] != 0.0]
        kept_total += len(kept)
        std = float(flat.double().std()) if d > 1 else abs(float(flat[0]))
        alpha = float(np.float32(alpha_scale * std))
        dense = torch.zeros(d, dtype=torch.float32)
        dense[kept] = torch.sign(flat[kept]) * alpha
        offset = 0
        for name in group:
            n = update[name].numel()
            out[name] = dense[offset:offset + n].reshape(update[name].shape).to(update[name].dtype)
            offset += n
    return out, kept_total


@st.composite
def updates(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    count = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    tie_heavy = draw(st.booleans())
    rng = np.random.default_rng(seed)
    update = {}
    for index in range(count):
        shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=3)))
        dtype = draw(st.sampled_from(DTYPES))
        if tie_heavy:  # few distinct values, many zeros: exercises tie-breaking and never-keep-zero
            values = rng.integers(-2, 3, size=shape) * 0.5
        else:
            values = rng.standard_t(3, size=shape) * 10.0 ** rng.uniform(-4, 1)
        update[f"layers.{index}.lora_{'AB'[index % 2]}.weight"] = torch.tensor(values).to(dtype)
    return update


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(update=updates(), density=st.floats(0.001, 1.0), alpha_scale=st.floats(0.1, 10.0),
       scope=st.sampled_from(["global", "tensor"]))
def test_round_trip_matches_the_reference(update: dict[str, torch.Tensor], density: float, alpha_scale: float,
                                          scope: str) -> None:
    payload = compeft.encode(update, density=density, alpha_scale=alpha_scale, scope=scope, round_id=5)
    decoded = compeft.decode(payload, expected_round=5,
                             expected_layout={name: tuple(t.shape) for name, t in update.items()})
    expected, kept = reference(update, density, alpha_scale, scope)
    assert list(decoded) == list(update)
    for name, tensor in update.items():
        got, want = decoded[name], expected[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape
        assert torch.equal(got != 0, want != 0), f"{name}: kept positions differ"
        assert torch.equal(torch.signbit(got[got != 0]), torch.signbit(want[want != 0]))
        tolerance = 1e-6 if tensor.dtype in (torch.float32, torch.float64) else 1e-2
        torch.testing.assert_close(got.double(), want.double(), rtol=tolerance, atol=0.0)
    assert compeft_size.size_report(payload).kept == kept


@settings(max_examples=200, deadline=None)
@given(numel=st.integers(1, 5000), density=st.floats(0.0005, 1.0), seed=st.integers(0, 2**31))
def test_position_codes_round_trip(numel: int, density: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    positions = np.flatnonzero(rng.random(numel) < density)
    coded = encode_positions(positions, numel)
    assert np.array_equal(decode_positions(coded, numel, "t"), positions)
    assert coded.nbytes <= (numel + 7) // 8  # never worse than a bitmap


def test_density_and_options_are_checked() -> None:
    update = {"w": torch.randn(4, 4)}
    for bad in (0.0, -0.1, 1.5, math.nan, True):
        with pytest.raises(ValueError, match="density"):
            compeft.encode(update, density=bad)
    with pytest.raises(ValueError, match="alpha_scale"):
        compeft.encode(update, density=0.1, alpha_scale=0.0)
    with pytest.raises(ValueError, match="scope"):
        compeft.encode(update, density=0.1, scope="layer")
    with pytest.raises(ValueError, match="NaN or Inf"):
        compeft.encode({"w": torch.tensor([1.0, math.nan])}, density=0.5)
    with pytest.raises(ValueError, match="dtype"):
        compeft.encode({"w": torch.tensor([1, 2])}, density=0.5)


def test_density_one_and_tiny_tensors() -> None:
    update = {"one": torch.tensor([-3.0]), "pair": torch.tensor([2.0, 0.0]), "w": torch.arange(-3.0, 3.0)}
    decoded = compeft.decode(compeft.encode(update, density=1.0, scope="tensor"))
    assert decoded["one"].tolist() == [-3.0]  # std of one entry is undefined: its own magnitude
    std_pair = float(torch.tensor([2.0, 0.0]).std())
    assert decoded["pair"].tolist() == pytest.approx([std_pair, 0.0])  # zeros are never kept
    assert torch.equal(decoded["w"] != 0, update["w"] != 0)
    assert compeft.decode(compeft.encode({"x": torch.zeros(3)}, density=0.5))["x"].tolist() == [0.0, 0.0, 0.0]


def test_ties_are_broken_by_tensor_then_index() -> None:
    update = {"a": torch.tensor([1.0, -1.0, 1.0]), "b": torch.tensor([-1.0, 1.0])}
    decoded = compeft.decode(compeft.encode(update, density=0.6))  # k = 3 of 5 equal magnitudes
    assert (decoded["a"] != 0).tolist() == [True, True, True]
    assert (decoded["b"] != 0).tolist() == [False, False]


def test_payload_is_near_the_entropy_bound_and_reports_it() -> None:
    rng = np.random.default_rng(0)
    update = {f"layers.{i}.lora_A.weight": torch.tensor(rng.laplace(size=(16, 4096)), dtype=torch.float32)
              for i in range(16)}
    for density in (0.01, 0.05, 0.2):
        report = compeft_size.size_report(compeft.encode(update, density=density))
        assert report.kept == compeft.kept_count(density, report.entries)
        assert 1.0 <= report.ratio_to_bound < 1.10, (density, report.as_dict())
        if density == 0.05:
            assert report.compression_ratio >= 50
    wire = update_pb2.EncodedUpdate.FromString(compeft.encode(update, density=0.05))
    assert all(entry.name == "" for entry in wire.tensors) and wire.tensor_names_zlib
    tensor = compeft_pb2.CompeftTensor.FromString(wire.tensors[0].data)
    assert tensor.coding == compeft_pb2.CompeftTensor.POSITION_CODING_RICE_GAPS and tensor.rice_bits == 4


def test_exact_when_the_sample_misjudges_the_threshold() -> None:
    """Big values only at the sampled stride: the sample overestimates the threshold, a second pass recovers."""
    from strategies.codecs import magnitude_select

    n = 3 * magnitude_select.SAMPLE_TARGET
    assert magnitude_select.sample_stride(n) == 3
    rng = np.random.default_rng(1)
    values = rng.uniform(1e-3, 2e-3, size=n).astype(np.float32)
    values[::3] = rng.uniform(1.0, 2.0, size=n // 3).astype(np.float32)
    values[rng.integers(0, n, size=50)] = 1.5  # ties
    update = {"w": torch.from_numpy(values)}
    for density in (0.1, 0.5):
        decoded = compeft.decode(compeft.encode(update, density=density))["w"]
        k = compeft.kept_count(density, n)
        order = torch.sort(-torch.from_numpy(values).abs(), stable=True).indices[:k]
        expected = torch.zeros(n, dtype=torch.bool)
        expected[order] = True
        assert torch.equal(decoded != 0, expected)


def _small_payload() -> bytes:
    generator = torch.Generator().manual_seed(0)
    update = {"a.lora_A.weight": torch.randn(4, 8, generator=generator),
              "a.lora_B.weight": torch.randn(8, 4, generator=generator)}
    return compeft.encode(update, density=0.3, scope="tensor", round_id=2)


def test_every_truncation_is_rejected() -> None:
    payload = _small_payload()
    for cut in range(len(payload)):
        with pytest.raises(UpdateRejected):
            compeft.decode(payload[:cut])


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_corrupted_payloads_are_rejected(data: st.DataObject) -> None:
    payload = bytearray(_small_payload())
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(payload) - 1), st.integers(1, 255)), min_size=1,
                               max_size=4, unique_by=lambda flip: flip[0]))
    for index, mask in flips:
        payload[index] ^= mask
    with pytest.raises(UpdateRejected):
        compeft.decode(bytes(payload))


def _resealed(mutate: object) -> bytes:
    message = update_pb2.EncodedUpdate.FromString(_small_payload())
    mutate(message)  # type: ignore[operator]
    return seal(message)


def _mutate_tensor(**fields: object):
    def mutate(message: update_pb2.EncodedUpdate) -> None:
        tensor = compeft_pb2.CompeftTensor.FromString(message.tensors[0].data)
        for key, value in fields.items():
            setattr(tensor, key, value)
        message.tensors[0].data = tensor.SerializeToString()
    return mutate


@pytest.mark.parametrize(("mutate", "reason"), [
    (_mutate_tensor(signs=b""), "sign bytes"),
    (_mutate_tensor(positions=b"\x00\x00\x00\x00\x00\x00\x00\x01"), "past the end|bytes, expected"),
    (_mutate_tensor(rice_bits=63, coding=compeft_pb2.CompeftTensor.POSITION_CODING_RICE_GAPS), "Rice parameter"),
    (_mutate_tensor(coding=9), "position coding"),
    (_mutate_tensor(alpha=math.inf), "alpha"),
    (_mutate_tensor(alpha=-1.0), "alpha"),
    (lambda m: setattr(m.tensors[0], "data", b"\xff\xff"), "malformed"),
    (lambda m: setattr(m.tensors[0], "dtype", "int8"), "dtype"),
    (lambda m: setattr(m, "codec_header", b""), "scope"),
    (lambda m: setattr(m, "tensor_names_zlib", zlib.compress(b"x")), "1 names for 2 tensors"),
    (lambda m: setattr(m, "tensor_names_zlib", zlib.compress(b"x\nx")), "more than once"),
    (lambda m: setattr(m, "tensor_names_zlib", b"not zlib"), "zlib"),
    (lambda m: m.tensors[1].shape.__setitem__(0, 2**38), "more than the limit"),
])
def test_hostile_payloads_are_rejected_with_reasons(mutate: object, reason: str) -> None:
    with pytest.raises(UpdateRejected, match=reason):
        compeft.decode(_resealed(mutate))


def test_size_and_entry_limits() -> None:
    payload = _small_payload()
    with pytest.raises(UpdateRejected, match="exceeds the limit"):
        compeft.decode(payload, max_bytes=len(payload) - 1)
    with pytest.raises(UpdateRejected, match="more than the limit"):
        compeft.decode(payload, max_entries=63)
    with pytest.raises(UpdateRejected, match="round 2, but this is round 3"):
        compeft.decode(payload, expected_round=3)
    with pytest.raises(UpdateRejected, match="encoded with codec 'compeft', expected 'dense'"):
        dense.decode(payload)


@pytest.mark.parametrize("center", [0.0, 3.0, -1e4])
def test_large_chunk_moments_match_fp64(center: float) -> None:
    from strategies.codecs.compeft.wire import _chunk_moments, _moments_fp64

    rng = np.random.default_rng(7)
    chunk = (center + rng.laplace(size=(1 << 18) + 123) * 1e-3).astype(np.float32)
    scratch = np.empty(chunk.size)
    mean, m2 = _chunk_moments(chunk, chunk[::97], scratch)
    want_mean, want_m2 = _moments_fp64(chunk, scratch)
    wide = chunk.astype(np.float64)
    assert want_m2 == pytest.approx(float(((wide - wide.mean()) ** 2).sum()), rel=1e-9)
    assert mean == pytest.approx(want_mean, rel=1e-9, abs=1e-12)
    assert m2 == pytest.approx(want_m2, rel=1e-5)
    constant = np.full(1 << 18, np.float32(center or 0.25))
    assert _chunk_moments(constant, constant[::97], scratch)[1] == 0.0
